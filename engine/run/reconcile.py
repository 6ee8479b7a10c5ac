"""One reconciler pass: plan -> contacts -> policies -> claim -> render -> send -> record, after recovery and retries.

Level-based like a Kubernetes controller: each pass recomputes what should
have happened by ``now`` from the warehouse and the ledger alone, so a crash
or restart needs no special path. ``due`` (the plan) is the same computation
without the writes. The warehouse computes due sets (sql.compile); Python only
sees due rows, in batches, and keeps counts, never the whole set.

A batch is sent on one background thread while the next is planned, claimed and
rendered (the send stage waits on the network and the ledger's hand-over writes,
the others on Python): at most one batch is sending at any moment, each batch is
claimed before it is sent as always, and the batch in flight is finished and
recorded before the next is sent. The last batch of a campaign goes on sending
while the next campaign's settled skips are recorded and its first rows are queried
and decided; it is finished and recorded before those rows meet the contacts and
policies (which read what sending records: suppressions, gone contacts, recent
sends), and before the next campaign's statements run at all when it may set tags
(a campaign sees the tags of the ones before it, as without the overlap).

Owns the order of the stages and what binds them: the project, its databases,
the pass's channel sessions and report. Each stage is a module of engine.run
called with its collaborators; this module must not decide, render, send or
write to a database itself.
"""
from __future__ import annotations

import itertools
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Callable, Iterator

from engine.clock import to_utc
from engine.model import Campaign, Project
from engine.progress import Progress
from engine.run import attributes, incremental, plan, policies, settle
from engine.run.claim import claim
from engine.run.coupons import sync_pools
from engine.run.dispatch import sending_threads
from engine.run.contacts import attach_contacts
from engine.run.isolation import isolated
from engine.run.ledger_state import open_ledger, record_segment_entries
from engine.run.messages import DueMessage, PassReport
from engine.run.plan import BATCH_SIZE
from engine.run.record import record_decisions, record_failures, record_sent
from engine.run.recover import recover
from engine.run.render import render
from engine.run.responses import ResponseReader, order_by_response
from engine.run.retry import retry
from engine.run.segments import enter_segment
from engine.run.send import send
from engine.run.sessions import ChannelSessions
from engine.run.sources import SourceRows
from engine.spec.code_secret import code_secrets
from engine.spec.config import database_url
from engine.state.ledger import Ledger
from engine.state.warehouse import Database
from engine.templating.render import Renderer

#: A pass that recorded at least this many outcomes refreshes the ledger's planner statistics at its end,
#: and as soon as its settle statements have written this many skips (before the next campaign's query).
STATISTICS_AFTER = 10_000


class Reconciler:
    """Binds a project to its databases and channels; ``due`` reads, ``run_once`` acts."""

    def __init__(self, project: Project, batch_size: int = BATCH_SIZE, shard: tuple[int, int] | None = None,
                 ledger: Ledger | None = None, progress: Progress | None = None, writes: bool = True):
        """``ledger`` replaces the configured one (a backtest's scratch ledger in another database);
        ``progress`` hears of each campaign and batch of rows (default: silent); ``writes``: False for
        commands that only read (nothing is created anywhere, a missing ledger reads as empty)."""
        self.project, self.config, self.shard, self.batch_size = project, project.config, shard, batch_size
        self.progress = progress or Progress()
        self.warehouse = Database(database_url(self.config, "warehouse"), must_exist=True,
                                  duckdb_settings=self.config.duckdb_settings,
                                  statement_timeout=self.config.statement_timeout)
        if ledger is not None:
            self.ledger, self.ledger_shares_warehouse = ledger, False
            self.ledger.ensure_schema()
        else:
            self.ledger, self.ledger_shares_warehouse = open_ledger(self.config, self.warehouse, writes)
        self.key_kinds: dict[tuple[str, str], str] = {}  # (entity, id column) -> "int" | "str" | "cast"
        self.settled_last: dict[str, int] = {}  # campaign -> settled skips its last pass found (settle.worth_settling)
        #: campaign -> (instant, count) the ledger holds of it (engine_settled), as this process read or wrote it
        self.settled_remembered: dict[str, tuple[datetime, int]] = {}
        self.writes = writes
        #: how the last ``due`` read each source's per-customer facts (run.incremental; ``engine plan --explain-cost``)
        self.facts_costs: list[incremental.SourceCost] = []
        self._renderer: Renderer | None = None  # made at the first pass, reused by the next (``renderer``)

    def close(self) -> None:
        self.warehouse.dispose()
        self.ledger.close()

    def renderer(self) -> Renderer:
        """The passes' renderer: made once per project (a reload builds a new Reconciler, as it builds a new
        project from a snapshot of its templates), so a template is compiled at the first pass that renders
        it and every later pass reuses it; one changed on disk meanwhile is compiled again
        (``Renderer.forget_changed``, once per pass)."""
        if self._renderer is None or self._renderer.templates_dir != self.project.templates_dir:
            self._renderer = Renderer(self.project.templates_dir)
        else:
            self._renderer.forget_changed()
        return self._renderer

    def campaigns(self, names: list[str] | None = None) -> list[Campaign]:
        if names:
            return [self.project.campaign(n) for n in names]
        return [c for c in self.project.campaigns if c.enabled]

    def due(self, now: datetime, campaigns: list[Campaign] | None = None,
            customer_id: str | None = None, failures: dict[str, str] | None = None,
            report: PassReport | None = None,
            before_campaign: Callable[[], None] | None = None,
            before_decisions: Callable[[], None] | None = None,
            settled_counts: settle.SettledCounts | None = None, ordered: bool = False) -> Iterator[list[DueMessage]]:
        """Batches of messages due at ``now`` and not yet in the ledger, policies applied.

        Campaigns go in priority order (highest first), so when a frequency cap
        lets a customer receive fewer messages than are due, the higher
        priority campaign's message is the one that goes out. ``customer_id``
        restricts the plan to one customer (``engine explain``), same rules.

        With ``failures`` given, a campaign whose query or decisions fail
        (a type error only the warehouse sees, an overflow in its dates) is
        recorded there by name with the reason, and the other campaigns go on;
        the batches it yielded before failing stand. Without, the error ends
        the iteration.

        With ``report`` (a pass), the skips the warehouse settles (stale, stopped: ``settle``) are
        recorded set-based and counted there before each campaign's other rows are planned, and
        are not among the batches, when that pays (``settle.worth_settling``: a campaign new to
        the ledger, or whose last pass found many); otherwise, and without ``report`` (the plan,
        explain), they come as ``skip`` messages.

        With ``settled_counts`` instead (a plan that shows only how many skips there are: ``engine
        plan`` without ``--include-skipped``), those skips are counted in SQL into it, nothing
        written (by the statement that returns the campaign's other rows: ``settle.counted_rows``;
        from a ledger in another database ``settle.count_settled``), and are not among the batches,
        where a pass would settle them (``settle.worth_settling`` on what the ledger remembers; a plan
        records no count of its own); the batches and the counts together are the plan without it.

        ``before_campaign`` (a pass: finish the batch still sending if it may set tags) is called
        before each campaign's rows are settled or queried; ``before_decisions`` (a pass: finish
        the batch still sending) once per campaign, after its first rows are decided (``decide_row``)
        and before they meet the contacts and policies. Neither runs inside the campaign's isolation:
        their errors end the iteration.

        ``ordered`` (what lists every message: an export, ``engine plan --format csv|jsonl``, a
        plan diff): each campaign's rows come by (trigger instant, customer, trigger key, step),
        sorted by the warehouse, so the listing and the policies' choices among one customer's
        instances are the same at every run; one customer's plan (``customer_id``) always is. A
        pass and the plan's table read the rows in the warehouse's order: no sort of the due set; where a
        frequency cap could pick among one customer's rows, theirs are decided in the listing's order all
        the same (``plan.in_customer_order``), so a pass sends the instances the listing shows.
        """
        if report is not None and settled_counts is not None:
            raise ValueError("a pass records its settled skips: settled_counts is for a plan")
        selected = campaigns if campaigns is not None else self.campaigns()
        by_priority = sorted(selected, key=lambda c: -c.priority)
        rules = policies.first_attempt_inputs(self.config, self.ledger, now, by_priority, self.project.campaigns)
        self.ledger.snapshot_policies()
        in_query = self.ledger_shares_warehouse
        sources = SourceRows(self.warehouse, self.config, self.key_kinds)
        responses = ResponseReader(self.config, self.warehouse, self.ledger, in_query)
        # a replica's shard: in the due queries where the dialect computes the stable hash, else per batch
        sql_shard = self.shard if plan.shard_in_sql(self.config) else None
        python_shard = None if sql_shard is not None else self.shard
        # a campaign this process has not planned yet: as the ledger remembers its last pass (engine_settled),
        # else it settles when the ledger has none of its rows - one query each for all campaigns
        settling = report is not None or settled_counts is not None
        unknown = [c.name for c in by_priority if settling and c.name not in self.settled_last
                   and settle.settles(c, self.config, python_shard, customer_id)]
        if unknown:
            memory = self.ledger.settled_memory(unknown)
            self.settled_remembered.update(memory)
            self.settled_last.update(settle.remembered(memory, now))
            unknown = [name for name in unknown if name not in self.settled_last]
        held = self.ledger.campaigns_held(unknown) if unknown else set()
        planned: list[str] = []  # the campaigns whose settled skips this pass counted, remembered at its end
        unanalysed = 0  # settled skips written since the ledger's planner statistics were refreshed
        kept, self.facts_costs = incremental.refresh(self.warehouse, self.ledger, self.config, now,
                                                     writes=self.writes and customer_id is None, shares=in_query,
                                                     campaigns=self.project.campaigns)
        # the customer attributes each campaign's rows carry: those read after the query (one customer: all)
        columns = attributes.due_columns(self.project, by_priority) if customer_id is None else None
        with plan.due_rows(self.warehouse, self.ledger, self.config, now, by_priority, exclude_ledger=in_query,
                           customer_id=customer_id, batch_size=self.batch_size, shard=sql_shard, kept=kept,
                           columns=columns, ordered=ordered or customer_id is not None) as rows_of:
            for position, campaign in enumerate(by_priority, 1):
                if failures is not None and campaign.name in failures:
                    continue  # failed earlier in this pass (its segment entries)
                self.progress.stage("campaign", position, len(by_priority), campaign.name)
                if before_campaign is not None:
                    before_campaign()
                decided = None  # the campaign's decided batches, closed below
                try:
                    with isolated(campaign.name, failures):
                        settled, counted = "include", None
                        if report is not None and settle.settles(campaign, self.config, python_shard, customer_id):
                            if settle.worth_settling(campaign, self.settled_last.get(campaign.name), held):
                                self.settled_last[campaign.name] = settle.record_settled(
                                    campaign, rows_of, self.config, self.ledger, now, report, ledger_in_query=in_query)
                                settled = "exclude"
                                unanalysed += self.settled_last[campaign.name]
                                if unanalysed >= STATISTICS_AFTER:  # the next campaigns' queries join a ledger grown
                                    self.ledger.refresh_statistics()  # from nothing: planned for it, not for empty
                                    unanalysed = 0
                            else:  # row by row this time; what it finds decides the next pass
                                counted = self.settled_last[campaign.name] = 0
                            planned.append(campaign.name)
                        elif settled_counts is not None and settle.settles(campaign, self.config, python_shard, customer_id) \
                                and settle.worth_settling(campaign, self.settled_last.get(campaign.name), held):
                            if in_query:  # counted by the statement of the other rows (the ledger's left out)
                                settled = "count"
                            else:  # a ledger elsewhere: the settled rows' keys first, those it holds not counted
                                settle.count_settled(campaign, rows_of, self.ledger, settled_counts)
                                settled = "exclude"
                        reentry_before = rules.state.history_skips.get(campaign.name, 0)
                        row_batches = rows_of(campaign, settled)
                        if settled == "count":
                            row_batches = settle.counted_rows(campaign, row_batches, settled_counts)
                        decided = plan.decided_batches(campaign, row_batches, now, self.config, self.ledger,
                                                       ledger_in_query=in_query, shard=python_shard, progress=self.progress)
                        del row_batches  # held by ``decided`` alone: closing it closes the query's stream
                        # a pass: the campaign's query runs and its first rows are decided while the batch in flight sends
                        first = next(decided, None) if before_decisions is not None else None
                    if failures is not None and campaign.name in failures:
                        continue  # its statements failed (recorded by isolated)
                    if first is not None:
                        before_decisions()
                    with isolated(campaign.name, failures):
                        for batch in decided if first is None else itertools.chain([first], decided):
                            if counted is not None:
                                self.settled_last[campaign.name] += settle.settled_count(campaign, batch, self.config)
                            batch = attach_contacts(batch, self.config, sources, self.ledger, rules.channel_of)
                            batch = policies.apply_stages(order_by_response(batch, campaign, responses, rules.channel_of),
                                                          rules)
                            if batch:
                                yield batch
                        if counted is not None:  # the re-entry skips the policy stage found, which SQL could settle
                            found = rules.state.history_skips.get(campaign.name, 0) - reentry_before
                            self.settled_last[campaign.name] += found
                finally:  # a consumer that stops early: the query's cursor closes before due_rows drops its tables
                    if decided is not None:
                        decided.close()
        # a new process decides as this one would (settle.remembered); a steady pass writes nothing
        changed = settle.to_remember({name: self.settled_last[name] for name in planned}, self.settled_remembered, now)
        if changed:
            self.ledger.remember_settled(changed, now)
            self.settled_remembered.update({name: (to_utc(now), count) for name, count in changed.items()})

    def run_once(self, now: datetime, campaigns: list[Campaign] | None = None,
                 stop: threading.Event | None = None) -> PassReport:
        """One pass. With ``stop`` set (SIGTERM) it ends after the batch in flight:
        every claim it made is sent and recorded before it returns."""
        report = PassReport(now=now)
        selected = campaigns if campaigns is not None else self.campaigns()
        sessions = ChannelSessions(self.config, selected, report)  # a missing secret fails before any claim
        secret = code_secrets(self.config).signing  # refuses a missing or known secret outside the demo
        sources = SourceRows(self.warehouse, self.config, self.key_kinds)
        project, config, ledger = self.project, self.config, self.ledger
        try:
            recover(now, project, config, ledger, sessions, report)
            retry(now, project, config, ledger, sources, sessions, report)
            self.enter_segments(now, selected, failures=report.failed_campaigns)
            sync_pools(project, self.warehouse, ledger, selected, now, report.failed_campaigns)
            renderer = self.renderer()
            with sending_threads(), ThreadPoolExecutor(1, thread_name_prefix="engine-send") as sender:
                sending = _Sending(sender, project, ledger, now, report)
                try:
                    for batch in self.due(now, selected, failures=report.failed_campaigns, report=report,
                                          before_campaign=sending.finish_if_tagging,
                                          before_decisions=sending.finish):
                        skips = record_decisions(batch, ledger, now, report, write=False)  # written with the claims
                        claimed = claim(batch, ledger, sessions, now, report, project, secret, skips=skips)
                        rendered = render(claimed, project, config, renderer, secret, sources, report, now)
                        record_failures(rendered.failures, ledger, now)
                        sending.finish()  # one batch in flight at a time
                        sending.start(send, rendered.messages, rendered.contents, now, sessions, ledger, config, report,
                                      tagging=any(project.campaign(m.campaign).step(m.step).actions
                                                  for m, _ in rendered.messages))
                        if stop is not None and stop.is_set():
                            report.errors.append("stopped early on request; the rest is due at the next pass")
                            break
                    sending.finish()
                finally:
                    sending.finish_quietly()  # an error ended the loop: the batch in flight still ends recorded
        finally:
            sessions.close()
        if sum(report.counts.values()) >= STATISTICS_AFTER:
            ledger.refresh_statistics()
        return report

    def enter_segments(self, now: datetime, campaigns: list[Campaign] | None = None,
                       failures: dict[str, str] | None = None) -> None:
        """Record who entered a segment trigger (at risk) since the last pass; a pass does this
        before it plans, so ``due`` sees the entries. With ``failures``, a campaign whose
        entries fail is recorded there (and ``due`` skips it) instead of ending the pass."""
        for campaign in campaigns if campaigns is not None else self.campaigns():
            with isolated(campaign.name, failures):
                if self.ledger_shares_warehouse:
                    enter_segment(campaign, self.warehouse, self.config, now)
                else:  # computed in the warehouse, recorded in the ledger
                    record_segment_entries(self.warehouse, self.ledger, campaign, self.config, now)


class _Sending:
    """The batch the send stage is sending on its thread, recorded (``record_sent``) when it is finished."""

    def __init__(self, sender: ThreadPoolExecutor, project: Project, ledger: Ledger, now: datetime,
                 report: PassReport):
        self.sender, self.project, self.ledger, self.now, self.report = sender, project, ledger, now, report
        self.in_flight: Future | None = None
        self.tagging = False  # a message in flight may set tags when delivered (its step's actions)

    def start(self, send_stage: Callable, *args, tagging: bool = True) -> None:
        self.in_flight, self.tagging = self.sender.submit(send_stage, *args), tagging

    def finish_if_tagging(self) -> None:
        """``finish`` when the batch in flight may set tags: the next campaign's statements read them."""
        if self.tagging:
            self.finish()

    def finish(self) -> None:
        """Wait for the batch in flight (its error is raised here) and record it."""
        if self.in_flight is not None:
            done, self.in_flight = self.in_flight, None
            record_sent(done.result(), self.project, self.ledger, self.now, self.report)

    def finish_quietly(self) -> None:
        """``finish`` while another error is on its way out: that error is the one reported."""
        try:
            self.finish()
        except Exception:  # noqa: BLE001 - the pass's own error propagates; this one could only hide it
            pass


__all__ = ["BATCH_SIZE", "DueMessage", "PassReport", "Reconciler", "STATISTICS_AFTER"]
