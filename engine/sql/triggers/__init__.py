"""Trigger kinds: one module per kind, and the registry the engine dispatches through.

Each kind module (order_placed.py, event.py, at_risk.py, ...) owns everything the engine
knows about its kind: the model (a frozen dataclass), how it is read from a campaign file
and checked against the source mapping, the SQL of its trigger instances, its text in
``engine explain`` and whether ``engine backtest`` can replay it. ``base.py`` says what a
kind declares and gives the common defaults; ``registry.py`` lists the kinds. Nothing
outside this package tests which kind a trigger is (tests/test_trigger_registry.py).
Pure: builds values and sqlglot expressions; must not read files or databases.
"""
