"""The databases: the shop's warehouse (read) and the engine's ledger (its tables, schema migrations).

Owns connections and every statement that writes engine state. Must not decide what is due.
"""
