"""Policies that protect the customer, applied to each batch of due messages.

Consent (R-P1: the shop's consent columns and the engine's own unsubscribe
table), suppression of hard-bounced addresses and invalid numbers (R-P4), and
contact pressure (R-P2: frequency caps per channel or across all, counting
what the ledger holds plus what this pass already decided). A message a
policy stops becomes ``skip`` with the policy's reason; it is recorded, so
the decision is visible later. Reads the ledger, writes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from .ledger import Ledger
from .model import ProjectConfig

CONTACT_FIELD = {"email": "email", "sms": "phone"}


@dataclass
class PolicyState:
    """What this pass (or plan) has decided to send so far, per customer, for the caps."""

    sends: dict[str, list[tuple[datetime, str]]] = field(default_factory=dict)


def apply_policies(config: ProjectConfig, ledger: Ledger, batch: list, now: datetime, state: PolicyState) -> list:
    sending = [m for m in batch if m.action == "send"]
    if not sending:
        return batch
    kinds = {m.key: config.channels[m.channel].kind for m in sending}
    unsubscribed = ledger.unsubscribed(sorted({m.customer_id for m in sending}))
    suppressed: set[tuple[str, str]] = set()
    for kind in set(kinds.values()):
        addresses = sorted({str(m.customer.get(CONTACT_FIELD[kind])) for m in sending if kinds[m.key] == kind})
        suppressed |= {(kind, address) for address in ledger.suppressed(kind, addresses)}
    caps = config.frequency_caps
    history: dict[str, list[tuple[datetime, str]]] = {}
    if caps:
        since = now - max(cap.per for cap in caps)
        history = ledger.recent_sends(sorted({m.customer_id for m in sending}), since)
    decided = []
    for m in batch:
        if m.action == "send":
            kind = kinds[m.key]
            reason = None
            consent = m.customer.get(f"{kind}_consent", True) if f"{kind}_consent" in m.customer else True
            if not consent or (m.customer_id, kind) in unsubscribed or (m.customer_id, "all") in unsubscribed:
                reason = "no_consent"
            elif (kind, str(m.customer.get(CONTACT_FIELD[kind]))) in suppressed:
                reason = "suppressed"
            elif caps and _capped(config, m, now, history.get(m.customer_id, []) + state.sends.get(m.customer_id, [])):
                reason = "frequency_cap"
            if reason is not None:
                m = replace(m, action="skip", reason=reason)
            elif caps:
                state.sends.setdefault(m.customer_id, []).append((now, m.channel))
        decided.append(m)
    return decided


def _capped(config: ProjectConfig, m, now: datetime, sends: list[tuple[datetime, str]]) -> bool:
    for cap in config.frequency_caps:
        if cap.channel is not None and cap.channel != m.channel:
            continue
        window_start = now - cap.per
        count = sum(1 for at, channel in sends
                    if at is not None and _aware(at) > window_start and (cap.channel is None or channel == cap.channel))
        if count >= cap.max:
            return True
    return False


def _aware(value: datetime) -> datetime:
    from .clock import to_utc

    return to_utc(value)
