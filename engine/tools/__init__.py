"""Read-only tools over a project: explain, export, customer, backtest, stats, report, plan diff, introspection, demo.

Each is a Python API its command wraps. Must not send messages or write to the shop's warehouse.
"""
