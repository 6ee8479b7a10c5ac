"""The reconciler as a long-running service: a pass every interval, hot reload, HTTP endpoints, metrics, settings.

Must not hold campaign logic: it calls the pass and reports on it.
"""
