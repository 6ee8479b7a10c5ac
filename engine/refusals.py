"""A request the engine does not honour, as the HTTP answer it gets.

``Refused`` carries the status to answer (400 malformed, 401/403 unsigned or forged, 404 not
this shop's, 410 expired, ...) and a reason safe to show and log: never personal data, a token
or a secret. The signed-link modules (unsubscribe, scan_link, tracking) and the service's webhook
signature checks raise their own subclasses of it; the service answers every one the same way.
Nothing here does I/O.
"""
from __future__ import annotations


class Refused(Exception):
    """Not honoured: ``status`` is the HTTP status to answer, ``reason`` says why without personal data."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason
