"""Policies that protect the customer, applied to each batch of due messages.

``STAGES`` is their one ordered list, run by ``apply_stages`` on the first
attempt of a message (the plan) and on its retries alike; a stage marked
``on_retry=False`` (holdout, re-entry) was decided with the first attempt and
is left out for a retry. Re-entry comes in two parts: against the ledger's
history first (``reentry_history``, before channel choice: what the settle
stage decides in SQL), against what this pass sent before last (``reentry``).
The two stages that read the ledger, both set-based
per batch (one ledger query per concern, never one per message):

``choose_channels`` (R-M2, R-P1, R-P4): a step may offer several variants the
customer qualifies for (e.g. email first, SMS otherwise). The message goes
out on the first one the customer can actually receive: contact data present
and valid (a phone number the kind reads as E.164: else ``invalid_contact``),
the shop's consent column true where mapped (opt-in: NULL is no consent), not
unsubscribed from that channel kind (or from all), address not suppressed after a hard bounce - each as the kind
declares it (engine.channel_kinds: contact field, consent column, unsubscribe
scope, suppression key). When none is
receivable the message is skipped with the first candidate's reason, so
"no_consent" is reported rather than a later variant's "no_contact".

``apply_policies`` (R-P2): contact pressure. ``not_contacted_within`` (a
campaign condition) and frequency caps per channel or across all, counting
what the ledger holds plus what this pass already decided, so campaigns
handled earlier in the pass (higher priority) win.

Within one campaign, a cap that leaves a customer room for fewer messages than the rows due to them
at once (several orders of a campaign on every order, two steps fresh at once) lets through those
that come first by (trigger instant, trigger key, step): the order of the listing of every message
(an export, ``engine plan --format csv|jsonl``, a plan diff, one customer's plan:
``Reconciler.due(ordered=True)``, whose rows the warehouse sorts), so that a pass and the plan's
table let through the instances the listing shows, at every run and on every engine. A campaign
with a re-entry rule has its rows sorted too (``due.due_query``: the earliest instance enters).
Elsewhere the rows come in the warehouse's order, unsorted (on DuckDB with several threads it
changes from run to run), and where the order can change what is sent (``due.counts_customer_rows``:
a cap may limit the campaign's messages, and the trigger kind can give a customer several instances
at once - its ``several_at_once`` - or two steps' windows overlap) each row carries how many rows
its customer has in the campaign's due set (``count(*) OVER (PARTITION BY customer_id)``: on DuckDB
a hash partition, not a sort; PostgreSQL and SQLite sort by customer for it). A customer's only row
goes straight through; the rows of one with several are held back until the last arrives and are
then decided in that order (``plan.in_customer_order``); the window returns them together, so at
most a few customers are held at once (3 in the 1M-order shop). Measured with a cap of one a day on
the shipped campaigns (7 of the 14 count their rows) at 1M orders, medians of 5 alternated rounds
(benchmarks/capped_ab.py; benchmarks/README.md): the plan's CPU within the noise (+7 % at load 7-11,
-5 % at load 12-16), peak RSS +5 to +7 MB; an aggregate of the due set joined back instead: +17 %
CPU (the campaign's rows evaluated twice), +19 MB. Trigger keys compare
as the warehouse orders text in the listing and as Python does in the pass: the same for keys of
digits (order ids, dates); a collation ordering punctuation or case otherwise could differ.
A recency window (``not_contacted_within``) does not depend on this order: it counts only the
other campaigns' sends. How many messages of a step a cap lets through per customer never does.

A message a policy stops becomes ``skip`` with the policy's reason; it is
recorded, so the decision is visible later (quiet hours only ``defer``). Reads
the ledger, writes nothing; must not send, render or record.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from engine import channel_kinds
from engine.channel_kinds import ChannelKind
from engine.clock import to_utc
from engine.decide import customer_zone, in_holdout, in_quiet_hours
from engine.sql.due import reentry_in_sql, settled_in_sql
from engine.state.ledger import Ledger
from engine.model import Campaign, ProjectConfig, QuietHours


@dataclass
class PolicyState:
    """What this pass (or plan) has decided to send so far, per customer, for caps and recency."""

    sends: dict[str, list[tuple[datetime, str, str]]] = field(default_factory=dict)  # (at, channel, campaign)
    #: re-entry: (campaign, customer) -> the instances (trigger key, trigger time) sent in this pass
    entered: dict[tuple[str, str], list[tuple[str, datetime]]] = field(default_factory=dict)
    #: re-entry: (campaign, customer) -> trigger keys the ledger did not hold when this pass first met
    #: them: a claim of theirs the ledger holds later is this pass's own, not history (``reentry_history``)
    new_instances: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    #: campaign -> messages ``reentry_history`` skipped on steps whose skips a pass can settle in SQL
    #: (counted for ``settle.worth_settling``, as ``settle.settled_count`` counts decide_row's)
    history_skips: dict[str, int] = field(default_factory=dict)


#: what ``choose_channels`` notes of a candidate whose customer has no address of its kind, or one it cannot send to
_NO_CONTACT, _INVALID_CONTACT = object(), object()


def choose_channels(config: ProjectConfig, ledger: Ledger, batch: list, channel_of: dict[str, str]) -> list:
    """Settle each ``send`` message on its first receivable candidate variant.

    ``channel_of`` maps "campaign:step:variant" to the variant's channel; a
    message's ``candidates`` are its qualifying variant ids in preference order.
    What is the same for every message of a step and candidate list (each candidate's channel,
    kind and settings) is looked up once per batch; per message, only its customer's addresses.
    """
    sending = [m for m in batch if m.action == "send"]
    if not sending:
        return batch
    targets = _Targets(config, channel_of)
    unsubscribed = ledger.unsubscribed({m.customer_id for m in sending})  # sorted by the ledger where it queries
    unsubscribing = {customer_id for customer_id, _ in unsubscribed}  # the customers with any unsubscribe
    addresses: dict[str, set[str]] = {}
    #: (campaign, step, candidates) -> each candidate's (variant, channel, kind, settings, plain field, addresses): ``_link``
    chains: dict[tuple, tuple] = {}
    #: per sending message, its candidates' chain; per candidate of each in turn, the address's suppression key
    #: (the address as the channel sends it: a phone number is parsed here only, once), or why there is none
    chain_of: list[tuple] = []
    noted: list = []
    for m in sending:
        target = (m.campaign, m.step, m.candidates)
        chain = chains.get(target)
        if chain is None:
            chain = chains[target] = tuple(_link(variant_id, *targets.of(m.campaign, m.step, variant_id), addresses)
                                           for variant_id in m.candidates)
        chain_of.append(chain)
        customer = m.customer
        for _, _, kind, settings, plain, found in chain:
            if plain is not None:  # the field's value is the address and its key (``ChannelKind.plain_address``)
                raw = customer.get(plain)
                if not raw:
                    noted.append(_NO_CONTACT)
                    continue
                key = str(raw)
            else:
                raw = kind.address(customer)
                if not kind.usable_address(raw):
                    noted.append(_NO_CONTACT)
                    continue
                address = kind.normal_address(str(raw), settings)
                if address is None:
                    noted.append(_INVALID_CONTACT)
                    continue
                key = kind.suppression_key(address)
            found.add(key)
            noted.append(key)
    #: kind -> the suppressed addresses among the batch's (kinds with none left out)
    suppressed = {kind: keys for kind, keys in
                  ((kind, ledger.suppressed(kind, found)) for kind, found in addresses.items() if found) if keys}

    decided = []
    chain_iter = iter(chain_of)
    at = 0  # the next message's first candidate in ``noted``
    for m in batch:
        if m.action == "send":
            first_reason = None
            customer_id, customer = m.customer_id, m.customer
            chain = next(chain_iter)
            first, at = at, at + len(chain)
            for offset, (variant_id, channel, kind, _, _, _) in enumerate(chain):
                key = noted[first + offset]
                if key is _NO_CONTACT:
                    reason = "no_contact"
                elif key is _INVALID_CONTACT:
                    reason = "invalid_contact"
                elif (kind.consent_column in customer and not customer[kind.consent_column]) or \
                        (customer_id in unsubscribing and ((customer_id, kind.unsubscribe_scope) in unsubscribed
                                                           or (customer_id, "all") in unsubscribed)):
                    reason = "no_consent"
                elif kind.name in suppressed and key in suppressed[kind.name]:
                    reason = "suppressed"
                else:
                    if variant_id != m.variant:
                        m = replace(m, variant=variant_id, channel=channel)
                    break
                first_reason = first_reason or reason
            else:
                m = m.decided("skip", first_reason)
        decided.append(m)
    return decided


def _link(variant_id: str, channel: str, kind: ChannelKind, settings: Mapping, addresses: dict[str, set[str]]) -> tuple:
    """One candidate of a chain: (variant, channel, kind, settings, the contact field when the kind's address
    is that field's value as given - else None -, the batch's set of the kind's addresses)."""
    return (variant_id, channel, kind, settings, kind.contact_field if kind.plain_address else None,
            addresses.setdefault(kind.name, set()))


class _Targets:
    """(campaign, step, variant) -> (channel name, its kind, its settings), looked up once per batch."""

    def __init__(self, config: ProjectConfig, channel_of: Mapping[str, str]):
        self.config, self.channel_of = config, channel_of
        self.found: dict[tuple[str, str, str], tuple[str, ChannelKind, Mapping]] = {}

    def of(self, campaign: str, step: str, variant: str) -> tuple[str, ChannelKind, Mapping]:
        key = (campaign, step, variant)
        target = self.found.get(key)
        if target is None:
            name = self.channel_of[f"{campaign}:{step}:{variant}"]
            channel = self.config.channels[name]
            target = self.found[key] = (name, channel_kinds.kind(channel.kind), channel.settings)
        return target


def apply_policies(config: ProjectConfig, ledger: Ledger, batch: list, now: datetime, state: PolicyState,
                   recency: dict[str, object] | None = None) -> list:
    """Contact pressure. ``recency`` maps campaign name -> its ``not_contacted_within`` (or None)."""
    sending = [m for m in batch if m.action == "send"]
    if not sending:
        return batch
    recency = {name: window for name, window in (recency or {}).items() if window is not None}
    caps = config.frequency_caps
    if not caps and not any(m.campaign in recency for m in sending):
        # nothing to check, and only caps and recency windows read the pass's sends (see below)
        if recency:
            for m in sending:
                state.sends.setdefault(m.customer_id, []).append((now, m.channel, m.campaign))
        return batch
    windows = [cap.per for cap in caps] + [recency[m.campaign] for m in sending if m.campaign in recency]
    history: dict[str, list[tuple[datetime, str, str]]] = {}
    if windows:
        history = ledger.recent_sends(sorted({m.customer_id for m in sending}), min(now - w for w in windows))
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
                m = m.decided("skip", reason)
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


# --- the ordered stages -------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyInputs:
    """Everything a policy stage reads; the stages reach into nothing else."""

    config: ProjectConfig
    ledger: Ledger
    now: datetime
    state: PolicyState
    #: the campaigns decided about, by name (holdout, re-entry, a step's quiet hours); a retry's may be gone
    campaigns: Mapping[str, Campaign]
    #: "campaign:step:variant" -> the variant's channel (for a retry: the channel it was rendered for)
    channel_of: Mapping[str, str]
    #: campaign -> its ``not_contacted_within``; None for a retry (decided with the first attempt)
    recency: Mapping[str, timedelta | None] | None
    #: False for a retry: the stages marked ``on_retry=False`` are left out
    first_attempt: bool


def first_attempt_inputs(config: ProjectConfig, ledger: Ledger, now: datetime, campaigns: list[Campaign],
                         all_campaigns: list[Campaign]) -> PolicyInputs:
    """The inputs of one plan or pass over ``campaigns`` (recency windows are read from ``all_campaigns``)."""
    return PolicyInputs(
        config, ledger, now, PolicyState(), {c.name: c for c in campaigns},
        {f"{c.name}:{s.id}:{v.id}": v.channel for c in campaigns for s in c.steps for v in s.variants},
        {c.name: c.not_contacted_within for c in all_campaigns}, first_attempt=True)


def retry_inputs(config: ProjectConfig, ledger: Ledger, now: datetime, all_campaigns: list[Campaign],
                 channel_of: Mapping[str, str]) -> PolicyInputs:
    """The inputs of a pass's retries: each message keeps the channel it was rendered for."""
    return PolicyInputs(config, ledger, now, PolicyState(), {c.name: c for c in all_campaigns}, channel_of,
                        recency=None, first_attempt=False)


def channel_choice(batch: list, inputs: PolicyInputs) -> list:
    """Contact data, consent, unsubscribes, suppressions: ``choose_channels``."""
    return choose_channels(inputs.config, inputs.ledger, batch, inputs.channel_of)


def holdout(batch: list, inputs: PolicyInputs) -> list:
    """The campaign's holdout group is skipped (stable per customer)."""
    if not any(inputs.campaigns[name].holdout > 0 for name in {m.campaign for m in batch if m.action == "send"}):
        return batch
    decided = []
    for m in batch:
        if m.action == "send":
            campaign = inputs.campaigns[m.campaign]
            if in_holdout(campaign.name, m.customer_id, campaign.holdout):
                m = m.decided("skip", "holdout")
        decided.append(m)
    return decided


def quiet_hours_of(inputs: PolicyInputs, campaign: str, step: str, channel: str | None) -> QuietHours | None:
    """The quiet hours of a step (or its channel's default), also for a campaign removed since."""
    try:
        quiet = inputs.campaigns[campaign].step(step).quiet_hours
    except KeyError:
        quiet = None
    return quiet or inputs.config.quiet_hours.get(channel)


def _quiet_hours_for(inputs: PolicyInputs, m) -> QuietHours | None:
    """The quiet hours that defer ``m``: for a kind that does not observe them (a letter takes days)
    only those configured for its channel itself (defaults.quiet_hours.<channel>), never a step's."""
    channel = inputs.config.channels.get(m.channel)
    if channel is not None and not channel_kinds.kind(channel.kind).observes_quiet_hours:
        return inputs.config.quiet_hours.get(m.channel)
    return quiet_hours_of(inputs, m.campaign, m.step, m.channel)


def quiet_hours(batch: list, inputs: PolicyInputs) -> list:
    """In the quiet hours of the channel finally chosen, in the customer's time zone: ``defer``
    (not recorded: the message stays due, for the first pass after they end). A kind that does not
    observe quiet hours (its declaration) is deferred only by those set for its channel."""
    decided = []
    quiet_of: dict[tuple, QuietHours | None] = {}  # (campaign, step, channel) -> its quiet hours
    quiet_in: dict[tuple, bool] = {}  # (quiet hours, the customer's time zone value) -> whether now is in them
    for m in batch:
        if m.action == "send":
            target = (m.campaign, m.step, m.channel)
            quiet = quiet_of[target] if target in quiet_of else quiet_of.setdefault(target, _quiet_hours_for(inputs, m))
            if quiet is None:
                decided.append(m)
                continue
            zone_name = m.customer.get("timezone")
            local = (quiet, zone_name if isinstance(zone_name, str) else "")
            quiet_now = quiet_in.get(local)
            if quiet_now is None:
                quiet_now = quiet_in[local] = in_quiet_hours(
                    inputs.now, quiet, customer_zone(zone_name, inputs.config.default_timezone))
            if quiet_now:
                m = m.decided("defer", "quiet_hours")
        decided.append(m)
    return decided


def _blocks(rule, m, earlier: list[tuple[str, datetime | None]]) -> bool:
    """Whether instances ``earlier`` (trigger key, first trigger time) forbid ``m``'s under ``rule``:
    another instance at all (once), or one less than the cool-down before or after it."""
    others = [at for key, at in earlier if key != m.trigger_key]
    if rule.mode == "once":
        return bool(others)
    return any(at is not None and m.trigger_at - rule.cooldown < to_utc(at) < m.trigger_at + rule.cooldown
               for at in others)


def reentry_history(batch: list, inputs: PolicyInputs) -> list:
    """Skip instances the campaign's re-entry rule forbids because of what the ledger held before this
    pass (a sent or claimed instance: once ever / within the cool-down). A rule about the instance, so
    it comes before channel choice: a customer the campaign cannot reach is recorded ``reentry``, and
    so is one in quiet hours. The settle stage decides the same in SQL (``due.settled_reason``) where it
    runs; this stage decides the rest (and finds nothing more where SQL already has). Instances this
    pass met first are left to ``reentry``."""
    rules = {name: inputs.campaigns[name].reentry for name in dict.fromkeys(m.campaign for m in batch)}
    history = {name: inputs.ledger.sent_instances(name, sorted({m.customer_id for m in batch
                                                                 if m.campaign == name and m.action == "send"}))
               for name, rule in rules.items() if rule.mode != "per_trigger"}
    if not history:
        return batch
    fresh, decided = inputs.state.new_instances, []
    for m in batch:
        if m.action == "send" and m.campaign in history:
            mine = fresh.get((m.campaign, m.customer_id), ())
            held = [(k, at) for k, at in history[m.campaign].get(m.customer_id, []) if k not in mine]
            if m.trigger_key not in {k for k, _ in held}:  # new: a claim of it the ledger holds later is this pass's
                fresh.setdefault((m.campaign, m.customer_id), set()).add(m.trigger_key)
            if _blocks(rules[m.campaign], m, held):
                m = m.decided("skip", "reentry")
                campaign = inputs.campaigns[m.campaign]
                if reentry_in_sql(campaign, inputs.config.dialect) and \
                        settled_in_sql(campaign, campaign.step(m.step), zone_due=True, dialect=inputs.config.dialect):
                    skips = inputs.state.history_skips
                    skips[m.campaign] = skips.get(m.campaign, 0) + 1
        decided.append(m)
    return decided


def reentry(batch: list, inputs: PolicyInputs) -> list:
    """Skip instances the campaign's re-entry rule forbids because of what this pass sent before
    (``PolicyState.entered``; the ledger's history is ``reentry_history``'s). After channel choice and
    quiet hours: only an instance that goes out enters."""
    rules = {name: inputs.campaigns[name].reentry for name in dict.fromkeys(m.campaign for m in batch)}
    if all(rule.mode == "per_trigger" for rule in rules.values()):
        return batch  # every instance may enter: nothing to remember or skip
    entered = inputs.state.entered
    decided = []
    for m in batch:
        if m.action == "send" and rules[m.campaign].mode != "per_trigger":
            if _blocks(rules[m.campaign], m, entered.get((m.campaign, m.customer_id), [])):
                m = m.decided("skip", "reentry")
            else:
                entered.setdefault((m.campaign, m.customer_id), []).append((m.trigger_key, m.trigger_at))
        decided.append(m)
    return decided


def contact_pressure(batch: list, inputs: PolicyInputs) -> list:
    """Recency windows and frequency caps: ``apply_policies``."""
    return apply_policies(inputs.config, inputs.ledger, batch, inputs.now, inputs.state, inputs.recency)


@dataclass(frozen=True)
class PolicyStage:
    name: str
    apply: Callable[[list, PolicyInputs], list]
    #: False: decided once, with the first attempt; a retry keeps that decision
    on_retry: bool = True


#: The policy stages in the order they run, for first attempts and retries alike. Re-entry against
#: the ledger's history comes first: a rule about the trigger instance, whatever the channel (the
#: settle stage decides it in SQL, before any row reaches Python). Channel choice comes next because
#: every later stage depends on the channel finally chosen (holdout: the control group is the
#: reachable customers left out); contact pressure comes last so that only messages that will go
#: out count against the caps.
STAGES: tuple[PolicyStage, ...] = (
    PolicyStage("reentry_history", reentry_history, on_retry=False),
    PolicyStage("channel_choice", channel_choice),
    PolicyStage("holdout", holdout, on_retry=False),
    PolicyStage("quiet_hours", quiet_hours),
    PolicyStage("reentry", reentry, on_retry=False),
    PolicyStage("contact_pressure", contact_pressure),
)


def apply_stages(batch: list, inputs: PolicyInputs) -> list:
    """``batch`` through every stage of ``STAGES`` that applies, in order."""
    for stage in STAGES:
        if inputs.first_attempt or stage.on_retry:
            batch = stage.apply(batch, inputs)
    return batch
