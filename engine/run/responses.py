"""Channel choice by response (``channel_choice: by_response``): per customer, the step's channel kinds
ranked by how the customer responded to each before.

For a campaign that asks for it, each sending message's candidate variants (file order, as
``plan.decide_row`` found them) are reordered so that the kind whose sent messages (of any campaign) most
often led to an order within the campaign's conversion window comes first; of two kinds with the same
order rate, the one whose messages less often led to an unsubscribe (of that kind, or of all, within the
window). Rates, not counts: 2 of 3 beats 3 of 10. A kind never sent to the customer counts as 0 of 0 (rate
0), so a customer without history, and every tie, keeps the campaign's own order: deterministic. The
policies' channel choice then takes the first candidate the customer can receive, as for any campaign.

Set-based, per batch (as engine.run.contacts): one ledger query (sent messages and the unsubscribes that
followed, per customer and channel) and one warehouse query (the orders that followed, per customer and
channel) for the batch's customers; when the ledger lives in another database the customers' sent
messages travel to the warehouse as VALUES. Python only adds the channels' aggregates up per kind and
sorts at most a handful of kinds per message. Each reordered message carries the reason in words
(``DueMessage.choice``) for ``engine explain``. Must not decide receivability, write, render or send.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from engine import channel_kinds
from engine.clock import Duration, format_duration
from engine.model import Campaign, ProjectConfig
from engine.run.messages import DueMessage
from engine.sql.attribution import (
    messages_values, response_ledger_query, response_orders_query, sent_messages,
)
from engine.sql.compile import render_sql
from engine.state.ledger import Ledger
from engine.state.warehouse import Database

BY_RESPONSE = "by_response"


@dataclass(frozen=True)
class KindResponse:
    """How a customer responded to one channel kind: messages sent, and how many of them an order
    (an unsubscribe) followed within the conversion window."""

    sent: int = 0
    ordered: int = 0
    unsubscribed: int = 0


def rank_kinds(order: Sequence[str], responses: Mapping[str, KindResponse]) -> list[str]:
    """The kinds of ``order`` (the campaign's order) best first: order rate descending, unsubscribe rate
    ascending, then the campaign's order. Exact fractions: no rounding decides a tie."""
    def key(item: tuple[int, str]) -> tuple:
        index, kind = item
        r = responses.get(kind)
        if r is None or not r.sent:
            return (Fraction(0), Fraction(0), index)
        return (-Fraction(r.ordered, r.sent), Fraction(r.unsubscribed, r.sent), index)
    return [kind for _, kind in sorted(enumerate(order), key=key)]


def reason(order: Sequence[str], ranked: Sequence[str], responses: Mapping[str, KindResponse],
           window: Duration) -> str:
    """Why ``ranked[0]`` comes first, in words: "sms: 2 of 3 sms messages led to an order within 7d,
    email 0 of 4"; the campaign's order when there is no history or a tie."""
    if not any(responses.get(kind, KindResponse()).sent for kind in order):
        return f"no messages sent to this customer before: the campaign's order ({', '.join(order)})"

    def figures(kind: str, first: bool) -> str:
        r = responses.get(kind, KindResponse())
        if not r.sent:
            return f"{kind}: no {kind} messages sent before" if first else f"{kind} none sent"
        unsubscribed = f" ({r.unsubscribed} to an unsubscribe)" if r.unsubscribed else ""
        if first:
            return (f"{kind}: {r.ordered} of {r.sent} {kind} messages led to an order within "
                    f"{format_duration(window)}{unsubscribed}")
        return f"{kind} {r.ordered} of {r.sent}{unsubscribed}"

    text = ", ".join(figures(kind, index == 0) for index, kind in enumerate(ranked))
    tied = len(ranked) > 1 and _same(ranked[0], ranked[1], responses)
    return text + ("; a tie: the campaign's order decides" if tied else "")


def _same(a: str, b: str, responses: Mapping[str, KindResponse]) -> bool:
    def rates(kind: str) -> tuple[Fraction, Fraction]:
        r = responses.get(kind, KindResponse())
        return (Fraction(r.ordered, r.sent), Fraction(r.unsubscribed, r.sent)) if r.sent else (Fraction(0), Fraction(0))
    return rates(a) == rates(b)


class ResponseReader:
    """Per customer and channel kind, the responses to past messages, for a batch of customers at once."""

    def __init__(self, config: ProjectConfig, warehouse: Database, ledger: Ledger, shares: bool):
        self.config = config
        self.warehouse = warehouse
        self.ledger = ledger
        #: the ledger lives in the warehouse's database: the orders query joins its table directly
        self.shares = shares

    def responses(self, customer_ids: Sequence[str], kinds: Sequence[str],
                  window: Duration) -> dict[str, dict[str, KindResponse]]:
        """customer -> kind -> ``KindResponse``, over the sent messages of every channel of ``kinds``."""
        channels = {name: channel.kind for name, channel in self.config.channels.items() if channel.kind in kinds}
        if not customer_ids or not channels:
            return {}
        scopes = {name: channel_kinds.kind(kind).unsubscribe_scope for name, kind in channels.items()}
        ledger_dialect = self.config.dialect if self.shares else self.ledger.dialect
        totals: dict[tuple[str, str], list[int]] = {}
        for customer, channel, sent, unsubscribed in self.ledger.select(
                response_ledger_query(customer_ids, scopes, window, ledger_dialect), ledger_dialect):
            figures = totals.setdefault((str(customer), channels[channel]), [0, 0, 0])
            figures[0] += int(sent)
            figures[2] += int(unsubscribed or 0)
        if totals:
            for customer, channel, ordered in self._orders(customer_ids, sorted(channels), window, ledger_dialect):
                totals.setdefault((str(customer), channels[channel]), [0, 0, 0])[1] += int(ordered or 0)
        found: dict[str, dict[str, KindResponse]] = {}
        for (customer, kind), (sent, ordered, unsubscribed) in totals.items():
            found.setdefault(customer, {})[kind] = KindResponse(sent, ordered, unsubscribed)
        return found

    def _orders(self, customer_ids: Sequence[str], channels: list[str], window: Duration, ledger_dialect: str):
        dialect = self.config.dialect
        if self.shares:
            messages = sent_messages(customer_ids, channels, dialect)
        else:
            rows = [tuple(row) for row in self.ledger.select(sent_messages(customer_ids, channels, ledger_dialect),
                                                             ledger_dialect)]
            if not rows:
                return []
            messages = messages_values(rows, dialect)
        return self.warehouse.fetch_all(render_sql(response_orders_query(messages, self.config, window), dialect))


def order_by_response(batch: list[DueMessage], campaign: Campaign, reader: ResponseReader,
                      channel_of: Mapping[str, str]) -> list[DueMessage]:
    """``campaign``'s sending messages with candidates of several kinds, their candidates reordered by the
    customer's responses (``rank_kinds``) and the reason kept in ``choice``; any other batch as it is."""
    if campaign.channel_choice != BY_RESPONSE:
        return batch
    config = reader.config

    def kind_of(m: DueMessage, variant_id: str) -> str | None:
        channel = config.channels.get(channel_of.get(f"{m.campaign}:{m.step}:{variant_id}", ""))
        return channel.kind if channel is not None else None

    choosing = [m for m in batch if m.action == "send"
                and len({kind_of(m, v) for v in m.candidates} - {None}) > 1]
    if not choosing:
        return batch
    kinds = sorted({kind for m in choosing for v in m.candidates if (kind := kind_of(m, v)) is not None})
    found = reader.responses(sorted({m.customer_id for m in choosing}), kinds, campaign.conversion_window)
    for m in choosing:
        order = list(dict.fromkeys(k for v in m.candidates if (k := kind_of(m, v)) is not None))
        responses = found.get(m.customer_id, {})
        ranked = rank_kinds(order, responses)
        position = {kind: index for index, kind in enumerate(ranked)}
        m.candidates = tuple(sorted(m.candidates, key=lambda v: position.get(kind_of(m, v), len(position))))
        first = m.candidates[0]
        m.variant, m.channel = first, channel_of[f"{m.campaign}:{m.step}:{first}"]
        m.choice = "chosen by response: " + reason(order, ranked, responses, campaign.conversion_window)
    return batch
