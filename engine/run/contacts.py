"""Contacts kept in a source of their own (web push subscriptions, several per customer), attached to a batch.

Before the policies choose a channel, each customer of a batch who may get a
message of such a kind gets the kind's contact attribute (``contact_field``):
the live contacts of the source (``ChannelKind.contact_entity``) as the kind
forms them, or None when there is none - so the channel choice skips the
message as ``no_contact`` or falls back to the step's next variant, as for an
email address. Set-based: one warehouse query per kind and batch for the
batch's customers, and one ledger query for which of their contacts a provider
reported gone (subtracted: the warehouse is read-only to the engine). Must
not decide, claim, render, send or write.
"""
from __future__ import annotations

from collections.abc import Mapping

from engine import channel_kinds
from engine.channel_kinds import ChannelKind
from engine.model import ProjectConfig
from engine.run.messages import DueMessage
from engine.run.sources import SourceRows
from engine.state.ledger import Ledger


def attach_contacts(batch: list[DueMessage], config: ProjectConfig, sources: SourceRows, ledger: Ledger,
                    channel_of: Mapping[str, str]) -> list[DueMessage]:
    """Fill each sending customer's contact attribute of every kind with a contact source that one of its
    candidate variants uses (``channel_of``: "campaign:step:variant" -> channel)."""
    wanted: dict[str, tuple[ChannelKind, list[DueMessage]]] = {}
    kinds: dict[tuple[str, str, str], ChannelKind | None] = {}  # (campaign, step, variant) -> a kind with a contact source
    for m in batch:
        if m.action != "send":
            continue
        for variant_id in m.candidates:
            target = (m.campaign, m.step, variant_id)
            if target in kinds:
                kind = kinds[target]
            else:
                channel = channel_of.get(f"{m.campaign}:{m.step}:{variant_id}")
                kind = channel_kinds.kind(config.channels[channel].kind) if channel in config.channels else None
                kind = kinds[target] = kind if kind is not None and kind.contact_entity is not None else None
            if kind is not None:
                wanted.setdefault(kind.name, (kind, []))[1].append(m)
    for kind, messages in wanted.values():
        entity = kind.contact_entity
        customers = sorted({m.customer_id for m in messages})
        rows = sources.by_key(entity.entity, "customer_id", customers) if entity.entity in config.sources else {}
        gone = ledger.gone_contacts(kind.name, sorted({entity.identity(r) for found in rows.values() for r in found}))
        for m in messages:
            live = [row for row in rows.get(m.customer_id, []) if entity.identity(row) not in gone]
            m.customer[kind.contact_field] = entity.value(live)
    return batch
