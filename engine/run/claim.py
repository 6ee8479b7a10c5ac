"""The claim stage: the messages to send are inserted in the ledger under their unique key; only
those this process inserted go on.

Owns the rule that a channel which cannot open gets no claims, and the ``claimed`` failpoint.
A message whose step gives a coupon code is claimed together with its code (coupons.py), or
recorded as skipped (no_code) when its pool is empty. The batch's skips the record stage made
(``skips``) go in the same statement as its claims (on DuckDB each INSERT costs a fixed ~10 ms: one
statement per batch, not two), counted by the record stage's ``count_skips``. Must not render, send,
or record anything but the claims and those skips.
"""
from __future__ import annotations

import itertools
from datetime import datetime

from engine.faults import checkpoint
from engine.model import Project
from engine.run.coupons import wanted_codes
from engine.run.messages import DueMessage, PassReport
from engine.run.record import as_record, count_skips
from engine.run.sessions import ChannelSessions
from engine.state.ledger import Ledger, Record


def claim(batch: list[DueMessage], ledger: Ledger, sessions: ChannelSessions, now: datetime,
          report: PassReport, project: Project | None = None, secret: str = "",
          skips: list[Record] | None = None) -> list[DueMessage]:
    """The batch's ``send`` messages this process claimed, in batch order; with ``project``, those whose
    step gives a coupon code carry it (``DueMessage.code``), ``secret`` signing the generated ones;
    ``skips`` (the batch's, from ``record_decisions(..., write=False)``) written and counted with the claims."""
    # open channels before claiming: a channel that cannot open gets no claims
    sendable = [m for m in batch if m.action == "send" and sessions.get(m.channel) is not None]
    for m in batch:
        if m.action == "send" and sessions.get(m.channel) is None:
            report.add(m.campaign, m.step, "not_sent:channel_unavailable", channel=m.channel)
    wanted = wanted_codes(sendable, project, secret) if project is not None else {}
    claims = (as_record(m, "claimed") for m in sendable if m.key not in wanted)
    claimed = ledger.write_new(itertools.chain(claims, skips or ()), now)
    if skips:
        count_skips(skips, claimed, report)
    if wanted:
        coded = ledger.claim_with_codes([as_record(m, "claimed") for m in sendable if m.key in wanted], wanted, now)
        claimed |= coded.claimed
        for m in sendable:
            if m.key in coded.codes:
                m.code = coded.codes[m.key]
            elif m.key in coded.no_code:
                report.add(m.campaign, m.step, "skipped:no_code", channel=m.channel)
    checkpoint("claimed")
    return [m for m in sendable if m.key in claimed]
