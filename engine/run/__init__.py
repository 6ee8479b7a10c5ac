"""The reconciler pass: due set -> policies -> claim -> render -> send -> record, with recovery and retries.

Owns the order of a pass and its report. Must not parse YAML or format output for people.
"""
