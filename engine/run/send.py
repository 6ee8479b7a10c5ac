"""The send stage: rendered messages handed over (their content stored in the ledger) and sent,
group by group, over the pass's channel sessions; a stored message sent again, identical.

Owns the hand-over protocol around ``dispatch.send_all``: storing a message's content is its
hand-over, committed just before its group goes to the provider, in the same ledger write as the
outcomes of the group before. Must not decide, claim or render; outcomes are turned into ledger
rows by the record stage.
"""
from __future__ import annotations

from datetime import datetime

from engine.channels import OutgoingMessage
from engine.model import ProjectConfig
from engine.run.dispatch import DEFAULT_IN_FLIGHT, Sent, deserialize, send_all
from engine.run.messages import DueMessage, PassReport
from engine.run.record import channel_unavailable, outcome_record
from engine.run.sessions import ChannelSessions
from engine.state.ledger import Ledger


def send(rendered: list[tuple[DueMessage, OutgoingMessage]], contents: list[str], now: datetime,
         sessions: ChannelSessions, ledger: Ledger, config: ProjectConfig,
         report: PassReport) -> list[tuple[DueMessage, Sent | None]]:
    """Send a batch's rendered messages, handing them over group by group (``dispatch.send_all``);
    each message with what became of it (None: not sent, another process stored its content first).

    A crash leaves in doubt only the groups in flight (at most connections x ``in_flight`` per
    channel); every other claim of the batch has no content, so recovery releases it and the next
    pass sends it. A claim whose content another process stored first (after releasing it as a
    dead process's) is not sent by this one.
    """
    due = [m for m, _ in rendered]

    def hand_over(done: list[tuple[int, Sent]], group: list[int]) -> set[int]:
        outcomes = [outcome_record(ledger, config.retry, due[i].key, due[i].campaign, due[i].step, due[i].customer_id,
                                   due[i].trigger_key, due[i].channel, 1, sent, now, report)
                    for i, sent in done]
        stored = ledger.hand_over(outcomes, [(due[i].key, contents[i]) for i in group], now)
        return {i for i in group if due[i].key in stored}

    in_flight = {name: int(channel.settings.get("in_flight", DEFAULT_IN_FLIGHT))
                 for name, channel in config.channels.items()}
    results = send_all([(m.channel, message) for m, message in rendered], sessions.opened, hand_over, in_flight)
    return list(zip(due, results))


def resend(row: dict, now: datetime, sessions: ChannelSessions, ledger: Ledger, config: ProjectConfig,
           report: PassReport) -> None:
    """Send a stored message (a ledger row with its content) again, identical (same Message-ID /
    reference), and record the outcome; when its channel cannot open it is given back for later."""
    session = sessions.get(row["channel"])
    if session is None:  # give it back: try again later
        ledger.record_outcomes([channel_unavailable(row, config.retry, now)], now)
        return
    message = deserialize(row["message_key"], row["content"])
    [sent] = send_all([(row["channel"], message)], {row["channel"]: session})
    record = outcome_record(ledger, config.retry, row["message_key"], row["campaign"], row["step"], row["customer_id"],
                            row["trigger_key"], row["channel"], row["attempts"] + 1, sent, now, report)
    ledger.record_outcomes([record], now)
