"""Failpoints for the crash-injection tests (in the spirit of etcd's gofail).

``ENGINE_FAILPOINT=claimed:2`` makes the process kill itself (SIGKILL, no
cleanup, exactly like a crash) the 2nd time it passes ``checkpoint("claimed")``.
Unset - always in production - a checkpoint is one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

_spec = os.environ.get("ENGINE_FAILPOINT", "")
_name, _, _count = _spec.partition(":")
_remaining = int(_count or 1) if _name else 0


def checkpoint(name: str) -> None:
    global _remaining
    if _name != name or _remaining <= 0:
        return
    _remaining -= 1
    if _remaining == 0:
        os.kill(os.getpid(), signal.SIGKILL)
