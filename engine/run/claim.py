"""The claim stage: the messages to send are inserted in the ledger under their unique key; only
those this process inserted go on.

Owns the rule that a channel which cannot open gets no claims, and the ``claimed`` failpoint.
Must not render, send, or record anything but the claims.
"""
from __future__ import annotations

from datetime import datetime

from engine.faults import checkpoint
from engine.run.messages import DueMessage, PassReport
from engine.run.record import as_record
from engine.run.sessions import ChannelSessions
from engine.state.ledger import Ledger


def claim(batch: list[DueMessage], ledger: Ledger, sessions: ChannelSessions, now: datetime,
          report: PassReport) -> list[DueMessage]:
    """The batch's ``send`` messages this process claimed, in batch order."""
    # open channels before claiming: a channel that cannot open gets no claims
    sendable = [m for m in batch if m.action == "send" and sessions.get(m.channel) is not None]
    for m in batch:
        if m.action == "send" and sessions.get(m.channel) is None:
            report.add(m.campaign, m.step, "not_sent:channel_unavailable", channel=m.channel)
    claimed = ledger.write_new((as_record(m, "claimed") for m in sendable), now)
    checkpoint("claimed")
    return [m for m in sendable if m.key in claimed]
