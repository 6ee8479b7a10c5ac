"""Policies that protect the customer, applied to each batch of due messages.

Two stages, both set-based per batch (one ledger query per concern, never one
per message):

``choose_channels`` (R-M2, R-P1, R-P4): a step may offer several variants the
customer qualifies for (e.g. email first, SMS otherwise). The message goes
out on the first one the customer can actually receive: contact data present,
the shop's consent column not false, not unsubscribed from that channel kind
(or from all), address not suppressed after a hard bounce - each as the kind
declares it (engine.channel_kinds: contact field, consent column, unsubscribe
scope, suppression key). When none is
receivable the message is skipped with the first candidate's reason, so
"no_consent" is reported rather than a later variant's "no_contact".

``apply_policies`` (R-P2): contact pressure. ``not_contacted_within`` (a
campaign condition) and frequency caps per channel or across all, counting
what the ledger holds plus what this pass already decided, so campaigns
handled earlier in the pass (higher priority) win.

A message a policy stops becomes ``skip`` with the policy's reason; it is
recorded, so the decision is visible later. Reads the ledger, writes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from engine import channel_kinds
from engine.channel_kinds import ChannelKind
from engine.clock import to_utc
from engine.state.ledger import Ledger
from engine.model import ProjectConfig


@dataclass
class PolicyState:
    """What this pass (or plan) has decided to send so far, per customer, for caps and recency."""

    sends: dict[str, list[tuple[datetime, str, str]]] = field(default_factory=dict)  # (at, channel, campaign)


def choose_channels(config: ProjectConfig, ledger: Ledger, batch: list, channel_of: dict[str, str]) -> list:
    """Settle each ``send`` message on its first receivable candidate variant.

    ``channel_of`` maps "campaign:step:variant" to the variant's channel; a
    message's ``candidates`` are its qualifying variant ids in preference order.
    """
    sending = [m for m in batch if m.action == "send"]
    if not sending:
        return batch

    def kind_of(m, variant_id: str) -> ChannelKind:
        return channel_kinds.kind(config.channels[channel_of[f"{m.campaign}:{m.step}:{variant_id}"]].kind)

    unsubscribed = ledger.unsubscribed(sorted({m.customer_id for m in sending}))
    addresses: dict[str, set[str]] = {}
    for m in sending:
        for variant_id in m.candidates:
            kind = kind_of(m, variant_id)
            address = m.customer.get(kind.contact_field)
            if kind.usable_address(address):
                addresses.setdefault(kind.name, set()).add(kind.suppression_key(str(address)))
    suppressed = {(kind, address) for kind, found in addresses.items()
                  for address in ledger.suppressed(kind, sorted(found))}

    def obstacle(m, variant_id: str) -> str | None:
        kind = kind_of(m, variant_id)
        address = m.customer.get(kind.contact_field)
        if not kind.usable_address(address):
            return "no_contact"
        column = kind.consent_column
        if (column in m.customer and not m.customer[column]) or \
                (m.customer_id, kind.unsubscribe_scope) in unsubscribed or (m.customer_id, "all") in unsubscribed:
            return "no_consent"
        if (kind.name, kind.suppression_key(str(address))) in suppressed:
            return "suppressed"
        return None

    decided = []
    for m in batch:
        if m.action == "send":
            reasons = [obstacle(m, variant_id) for variant_id in m.candidates]
            chosen = next((v for v, reason in zip(m.candidates, reasons) if reason is None), None)
            if chosen is None:
                m = replace(m, action="skip", reason=reasons[0])
            elif chosen != m.variant:
                m = replace(m, variant=chosen, channel=channel_of[f"{m.campaign}:{m.step}:{chosen}"])
        decided.append(m)
    return decided


def apply_policies(config: ProjectConfig, ledger: Ledger, batch: list, now: datetime, state: PolicyState,
                   recency: dict[str, object] | None = None) -> list:
    """Contact pressure. ``recency`` maps campaign name -> its ``not_contacted_within`` (or None)."""
    sending = [m for m in batch if m.action == "send"]
    if not sending:
        return batch
    recency = {name: window for name, window in (recency or {}).items() if window is not None}
    caps = config.frequency_caps
    windows = [cap.per for cap in caps] + [recency[m.campaign] for m in sending if m.campaign in recency]
    history: dict[str, list[tuple[datetime, str, str]]] = {}
    if windows:
        history = ledger.recent_sends(sorted({m.customer_id for m in sending}), now - max(windows))
    decided = []
    for m in batch:
        if m.action == "send":
            sends = history.get(m.customer_id, []) + state.sends.get(m.customer_id, [])
            reason = None
            window = recency.get(m.campaign)
            if window is not None and any(at is not None and to_utc(at) > now - window and campaign != m.campaign
                                          for at, _, campaign in sends):
                reason = "recently_contacted"
            elif caps and _capped(config, m, now, sends):
                reason = "frequency_cap"
            if reason is not None:
                m = replace(m, action="skip", reason=reason)
            elif caps or recency:
                # Only caps and recency windows read the pass's sends; without them, remembering
                # every customer sent to would grow by ~160 bytes per message (160 MB per million).
                state.sends.setdefault(m.customer_id, []).append((now, m.channel, m.campaign))
        decided.append(m)
    return decided


def _capped(config: ProjectConfig, m, now: datetime, sends: list[tuple[datetime, str, str]]) -> bool:
    for cap in config.frequency_caps:
        if cap.channel is not None and cap.channel != m.channel:
            continue
        window_start = now - cap.per
        count = sum(1 for at, channel, _ in sends
                    if at is not None and to_utc(at) > window_start and (cap.channel is None or channel == cap.channel))
        if count >= cap.max:
            return True
    return False
