"""What the pass and the service may write to the ledger: ``LedgerWriter``, the ledger's write interface.

A ``typing.Protocol``, implemented by ``Ledger`` (ledger.py) and by whatever wraps it (the service's
``LoggedLedger`` logs each outcome and passes the rest through). Every write to engine state goes through
one of these methods; the life cycle they move a message along is described in ledger.py. Segment entries
are the one exception today: the due queries insert them in the database they run in
(``compile.entries_insert``), the warehouse's when the ledger shares it.

Declarations only (the interface and ``Record``, what a write carries): no statement is built here.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Protocol


@dataclass(frozen=True)
class Record:
    """A row to write: a claim, a skip or an outcome."""

    message_key: str
    campaign: str
    step: str
    customer_id: str
    trigger_key: str
    channel: str | None
    status: str
    due_at: datetime | None = None
    trigger_at: datetime | None = None
    variant: str | None = None
    reason: str | None = None
    detail: str | None = None
    content: str | None = None
    next_attempt_at: datetime | None = None


class LedgerWriter(Protocol):
    """The writes of the pass (claims, outcomes, hand-over, recovery, policies' state) and the service."""

    # --- schema and planner statistics
    def ensure_schema(self) -> None:
        """Create or upgrade the ledger's tables (migrations), refused when a newer engine wrote them."""

    def check_writable(self) -> None:
        """Fail, having written nothing, when the ledger's database refuses writes."""

    def refresh_statistics(self) -> None:
        """Let the database's planner see how big the tables are now (after a large pass)."""

    # --- claims and outcomes: the message life cycle
    def write_new(self, records: Iterable[Record], now: datetime) -> set[str]:
        """Insert claims and skips whose key is new; the keys this call inserted (only those are sent)."""

    def record_outcomes(self, records: Iterable[Record], now: datetime) -> None:
        """Set the final status of claimed messages."""

    def store_content(self, contents: list[tuple[str, str]], now: datetime) -> set[str]:
        """Keep rendered messages with their claims (the hand-over); the keys this call handed over."""

    def hand_over(self, outcomes: list[Record], contents: list[tuple[str, str]], now: datetime) -> set[str]:
        """The previous group's outcomes and this group's content in one transaction; the keys to send."""

    def reclaim(self, row: dict, now: datetime) -> bool:
        """Take over a failed or stale claim for another attempt; True if this process won it."""

    def release(self, key: str) -> bool:
        """Delete a claim that was never rendered (so never sent)."""

    def skip_failed(self, key: str, reason: str, now: datetime) -> bool:
        """A failed message a policy now forbids retrying: skipped with ``reason``."""

    def skip_unsent_claim(self, key: str, reason: str, now: datetime) -> bool:
        """A dead process's unrendered claim too late to send: skipped with ``reason``."""

    def mark_unknown(self, key: str, now: datetime) -> None:
        """A dead process's rendered claim: unknown, never resent (at-most-once)."""

    # --- engine state the policies and filters read
    def suppress(self, kind: str, address: str, reason: str, detail: str, now: datetime) -> None:
        """Never send to ``address`` on channel kind ``kind`` again (a hard bounce)."""

    def record_gone(self, kind: str, customer_id: str, contacts: list[str], message_key: str, detail: str,
                    now: datetime) -> None:
        """The provider reported ``contacts`` of the customer gone (push subscriptions: 404/410): never again."""

    def unsubscribe(self, customer_id: str, kind: str, source: str, now: datetime) -> None:
        """The customer unsubscribed from ``kind`` ('all': every channel), by ``source`` (link, cli)."""

    def apply_tags(self, changes: list[tuple[str, str, str, str]], now: datetime) -> None:
        """(customer_id, 'set_tag' | 'remove_tag', tag, campaign) in order."""

    def record_entries(self, rows: list[tuple[str, str, str, datetime]]) -> None:
        """Segment entries (campaign, customer_id, trigger_key, entered_at) computed in a warehouse in
        another database; an entry already recorded stays as it was."""
