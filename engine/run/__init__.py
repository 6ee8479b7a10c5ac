"""The reconciler pass: plan -> policies -> claim -> render -> send -> record, with recovery and retries.

``reconcile`` orders the stages; each stage is a module called with its collaborators
(messages, isolation, sources, plan, policies, claim, render, send, record, recover, retry,
segments, sessions, dispatch). Must not parse YAML or format output for people.
"""
