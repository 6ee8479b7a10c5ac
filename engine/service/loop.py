"""The reconciler as a long-running service: a pass every interval, hot reload, health and metrics.

Owns the interval loop of ``engine run --interval``: at the start of each
pass it reloads a changed project (``reload.py``; an invalid change is logged
issue by issue and the last valid project keeps running), runs one pass,
turns its ``PassReport`` into metrics (``metrics.py``) and log events
(``logs.py``), measures the ledger backlog, and deletes response events older than
policies.responses.retention (after the first pass, then at most once an hour). It answers readiness for
``httpd.py``: warehouse and ledger reachable and the last pass recent; its
detail names the campaigns that failed alone in the last pass.

Time is injected: ``clock`` gives the pass instant, ``monotonic`` measures
durations and ages. Signals are the CLI's business: ``run`` stops when the
given event is set, after the pass in progress.
"""
from __future__ import annotations

import dataclasses
import html
import logging
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

from engine.clock import Clock, SystemClock, format_instant, to_utc
from engine.tools.demo import ensure_demo
from engine.errors import EngineError, ProjectInvalid
from engine import heap, unsubscribe as unsubscribe_link
from engine.spec.code_secret import code_secrets, secret_issues
from engine.sql.compile import render_sql
from engine.service.httpd import StatusServer
from engine.sql.lookup import customer_query
from engine.state.ledger import Ledger, Record
from engine.logs import declare_personal, event
from engine.masking import mask
from engine.service.metrics import Metrics
from engine.model import Project
from engine.run.coupons import pool_levels
from engine.run.messages import PassReport
from engine.run.reconcile import Reconciler
from engine.service.reload import LoadResult, ProjectWatcher
from engine.service import tracking
from engine.service.settings import DEFAULT_METRICS_PORT
from engine.service import webhooks

#: The service deletes response events older than policies.responses.retention at most this often (seconds).
RETENTION_EVERY = 3600.0
#: /readyz fails when the last completed pass ended longer ago than this many intervals
#: (or pass durations, when passes take longer than the interval).
STALE_PASSES = 3


class LoggedLedger:
    """The reconciler's ledger, logging every outcome it records: one event per message.

    The ledger is where each decision becomes final (skipped, claimed, sent,
    failed), so logging here needs nothing inside the reconciler. Everything
    else is passed through to the wrapped ``Ledger``.
    """

    def __init__(self, ledger: Ledger, monotonic: Callable[[], float] = time.monotonic):
        self._ledger = ledger
        self._monotonic = monotonic
        self._claimed_at: dict[str, float] = {}

    def __getattr__(self, name: str):
        return getattr(self._ledger, name)

    def write_new(self, records: Iterable[Record], now: datetime) -> set[str]:
        records = list(records)
        inserted = self._ledger.write_new(records, now)
        started = self._monotonic()
        for r in records:
            if r.message_key not in inserted:
                continue
            if r.status == "claimed":
                self._claimed_at[r.message_key] = started
                _message_event(r, logging.DEBUG)
            else:
                _message_event(r, logging.INFO)
        return inserted

    def claim_with_codes(self, records: list[Record], wanted: dict, now: datetime):
        claims = self._ledger.claim_with_codes(records, wanted, now)
        started = self._monotonic()
        for r in records:
            if r.message_key in claims.claimed:
                self._claimed_at[r.message_key] = started
                _message_event(r, logging.DEBUG)
            elif r.message_key in claims.no_code:
                _message_event(dataclasses.replace(r, status="skipped", reason="no_code"), logging.INFO)
        return claims

    def record_outcomes(self, records: Iterable[Record], now: datetime) -> None:
        records = list(records)
        self._ledger.record_outcomes(records, now)
        self._log_outcomes(records)

    def hand_over(self, outcomes: list[Record], contents: list[tuple[str, str]], now: datetime) -> set[str]:
        stored = self._ledger.hand_over(outcomes, contents, now)
        self._log_outcomes(outcomes)
        return stored

    def _log_outcomes(self, records: list[Record]) -> None:
        ended = self._monotonic()
        for r in records:
            claimed = self._claimed_at.pop(r.message_key, None)
            _message_event(r, logging.WARNING if r.status == "failed" else logging.INFO,
                           duration=None if claimed is None else round(ended - claimed, 4))

    def forget_claims(self) -> None:
        self._claimed_at.clear()


def _message_event(r: Record, level: int, duration: float | None = None) -> None:
    what = r.status + (f" ({r.reason})" if r.reason else "")
    event(f"message.{r.status}", f"{r.campaign}/{r.step} for customer {r.customer_id}: {what}", level,
          campaign=r.campaign, step=r.step, channel=r.channel, customer_id=r.customer_id,
          message_key=r.message_key, outcome=r.status, reason=r.reason, duration=duration,
          detail=r.detail if r.status == "failed" else None)


class Service:
    """``engine run --interval`` as an object: ``start``, ``run(stop)``, ``close``."""

    def __init__(self, root: Path | str, interval: float, *, campaigns: Iterable[str] = (),
                 metrics_host: str = "127.0.0.1", metrics_port: int = DEFAULT_METRICS_PORT,
                 clock: Clock | None = None, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, shard: tuple[int, int] | None = None,
                 tracking_only: bool = False):
        self.shard = shard
        #: ``engine serve-tracking``: health and the tracking endpoints only, no passes (interval: reload checks)
        self.tracking_only = tracking_only
        self._tracking: tuple[Reconciler, tracking.Tracking] | None = None
        if interval <= 0:
            raise ValueError("the interval must be positive")
        self.root = Path(root).resolve()
        self.interval = interval
        self.names = tuple(campaigns)
        self.clock = clock or SystemClock()
        self.monotonic = monotonic
        self.wall = wall
        self.metrics_host, self.metrics_port = metrics_host, metrics_port
        self.watcher = ProjectWatcher(self.root)
        self.metrics = Metrics(seconds_since_last_pass=self._seconds_since_last_pass)
        self.server: StatusServer | None = None
        self._lock = threading.Lock()
        self._reconciler: Reconciler | None = None
        self._last_pass_end: float | None = None
        self._last_pass_duration = 0.0
        self._loaded_at: str | None = None
        self._config_errors: list[str] = []
        self._last_error: str | None = None
        self._failed_campaigns: dict[str, str] = {}  # of the last completed pass
        self._retention_at: float | None = None  # monotonic time of the last retention run
        #: the next pass that completes freezes what the process holds (engine.heap): set at start and reload,
        #: so the reconciler's compiled statements and templates are frozen with the modules and the project
        self._settle_heap = False

    # --- life cycle --------------------------------------------------------------

    def start(self) -> None:
        """Load and validate the project, serve HTTP, build the demo shop if needed, connect."""
        result = self.watcher.load()
        for _ in range(10):  # files changing under us (a checkout in progress): let it settle
            if not result.retry:
                break
            time.sleep(0.5)
            result = self.watcher.load()
        if result.retry:
            raise EngineError(f"the project files in {self.root} keep changing; cannot load a consistent project")
        if result.project is None:
            for issue in result.errors:
                _issue_event(issue)
            raise ProjectInvalid(result.issues)
        for issue in result.issues:
            _issue_event(issue)
        self._check_names(result.project)
        self._check_secrets(result.project)
        self.server = StatusServer(self.metrics_host, self.metrics_port, readiness=self.readiness,
                                   metrics=self.metrics.wsgi_app(),
                                   unsubscribe=None if self.tracking_only else self.unsubscribe,
                                   routes={**tracking.routes(self.tracking_state, self.clock),
                                           **webhooks.routes(lambda: self._reconciler, self.clock)})
        self.server.start()
        event("http.listening", f"Serving /healthz, /readyz and /metrics on http://{self.server.host}:{self.server.port}",
              host=self.server.host, port=self.server.port)
        ensure_demo(result.project.config, echo=lambda text: event("demo.build", text.strip()))
        reconciler = self._build(result.project)
        with self._lock:
            self._reconciler = reconciler
            self._loaded_at = format_instant(self.clock.now())
        self._settle_heap = True
        self.metrics.campaigns.set(len(reconciler.campaigns(list(self.names) or None)))
        event("project.loaded", f"Loaded {self.root}: {_campaign_list(reconciler)}",
              campaigns=[c.name for c in reconciler.campaigns(list(self.names) or None)])

    def unsubscribe(self, query: str, confirm: bool) -> tuple[int, str]:
        """/unsubscribe: a signed link; GET shows a confirmation form, POST (RFC 8058 one-click) records it.

        400: not a link the engine makes (unsubscribe.check); 403: no code secret signed it; 404: the
        customer is not in the warehouse's customers source. Nothing is recorded for any of them."""
        reconciler = self._reconciler
        if reconciler is None:
            return 503, "not ready, try again in a minute"
        try:
            keys = code_secrets(reconciler.config).verifying
            customer_id, kind = unsubscribe_link.check(query, keys)
        except unsubscribe_link.LinkRefused as refused:
            event("unsubscribe.refused", f"Refused an unsubscribe link: {refused.reason}", logging.WARNING,
                  status=refused.status)
            return refused.status, refused.reason
        except EngineError:
            return 503, "unsubscribing is not possible right now, try again later"
        try:
            known = _customer_exists(reconciler, customer_id)
        except EngineError as exc:
            event("unsubscribe.unavailable", f"Could not look the customer up: {exc}", logging.WARNING)
            return 503, "unsubscribing is not possible right now, try again later"
        if not known:
            event("unsubscribe.refused", "Refused an unsubscribe link: no such customer", logging.WARNING, status=404)
            return 404, "this unsubscribe link names no customer of this shop"
        if not confirm:
            return 200, (f"<!doctype html><form method=post action='/unsubscribe?{html.escape(query)}'>"
                         f"<p>Stop {html.escape(kind)} messages?</p><button>Unsubscribe</button></form>")
        reconciler.ledger.unsubscribe(customer_id, kind, "link", self.clock.now())
        event("customer.unsubscribed", f"Unsubscribed a customer from {kind} by link", kind=kind)
        return 200, "You are unsubscribed."

    def tracking_state(self) -> tracking.Tracking | None:
        """What /open, /click and /scan need of the running project (its keys resolved once per project)."""
        reconciler = self._reconciler
        if reconciler is None:
            return None
        cached = self._tracking
        if cached is None or cached[0] is not reconciler:
            try:
                secrets = code_secrets(reconciler.config).verifying
            except EngineError:
                return None
            cached = self._tracking = (reconciler, tracking.Tracking(reconciler.config, secrets, reconciler.ledger))
        return cached[1]

    def run(self, stop: threading.Event) -> None:
        """Pass, wait, repeat until ``stop`` is set; the pass in progress always finishes."""
        self._stop = stop
        event("service.started", f"Reconciling every {self.interval:g}s; SIGTERM or Ctrl-C stops after the current pass.",
              interval=self.interval)
        while not stop.is_set():
            started = self.monotonic()
            self.reload_if_changed()
            if not self.tracking_only:
                self.run_pass()
            stop.wait(max(0.0, self.interval - (self.monotonic() - started)))

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        with self._lock:
            reconciler, self._reconciler = self._reconciler, None
        self._flush_tracking(reconciler)
        if reconciler is not None:
            reconciler.close()
        self.watcher.release(None)
        heap.release()

    def _flush_tracking(self, reconciler: Reconciler | None) -> None:
        """The tracking events of ``reconciler``'s ledger still being written: written before it closes."""
        cached = self._tracking
        if cached is not None and cached[0] is reconciler:
            cached[1].writer.close()

    # --- one pass -----------------------------------------------------------------

    def run_pass(self) -> PassReport | None:
        reconciler = self._reconciler
        assert reconciler is not None, "start() first"
        now = self.clock.now()
        started = self.monotonic()
        try:
            report = reconciler.run_once(now, reconciler.campaigns(list(self.names) or None),
                                         stop=getattr(self, "_stop", None))
        except Exception as exc:  # noqa: BLE001 - a service reports and goes on; readiness turns stale
            duration = self.monotonic() - started
            self.metrics.record_failed_pass(duration)
            first_line = (str(exc).strip().splitlines() or [""])[0]  # SQL and parameters stay out of the log
            self._last_error = mask(str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {first_line}")
            event("pass.failed", f"Pass at {format_instant(now)} failed: {self._last_error}", logging.ERROR,
                  duration=round(duration, 4))
            return None
        finally:
            if isinstance(reconciler.ledger, LoggedLedger):
                reconciler.ledger.forget_claims()
            self.metrics.record_warehouse_errors(reconciler.warehouse.take_failures())
        duration = self.monotonic() - started
        self.metrics.record_pass(report, duration, self.wall())
        with self._lock:
            self._last_pass_end = self.monotonic()
            self._last_pass_duration = duration
            self._last_error = mask(report.errors[0]) if report.errors else None
            self._failed_campaigns = {name: mask(reason) for name, reason in report.failed_campaigns.items()}
        for error in report.errors:
            event("pass.error", f"Error: {error}", logging.ERROR)
        for campaign, reason in report.failed_campaigns.items():
            event("campaign.failed", f"Campaign {campaign} failed this pass; the other campaigns went on: {reason}",
                  logging.ERROR, campaign=campaign, reason=reason)
        sent, skipped, failed = report.total("sent"), report.total("skipped"), report.total("failed")
        event("pass.finished", f"Pass at {format_instant(now)}: {sent} sent, {skipped} skipped, {failed} failed "
              f"in {duration:.2f}s", now=format_instant(now), sent=sent, skipped=skipped, failed=failed,
              due=sum(report.counts.values()), duration=round(duration, 4))
        self._checkpoint(reconciler)
        self._measure_backlog(reconciler, now)
        self._measure_pools(reconciler)
        self._apply_retention(reconciler, now)
        if self._settle_heap:
            heap.settle(collect=True)
            self._settle_heap = False
        return report

    def _checkpoint(self, reconciler: Reconciler) -> None:
        """The ledger's checkpoint, between passes, where its database holds its own off during a pass
        (``Ledger.checkpoint``): no send worker waits on it, and the next pass starts on a short log."""
        try:
            reconciler.ledger.checkpoint()
        except EngineError as exc:  # the next pass's commits checkpoint at the hold's limit all the same
            event("ledger.checkpoint_failed", f"Could not checkpoint the ledger: {str(exc).splitlines()[0]}", logging.WARNING)

    def _apply_retention(self, reconciler: Reconciler, now: datetime) -> None:
        """Delete response events older than policies.responses.retention: after the first pass, then at
        most once per ``RETENTION_EVERY`` (one DELETE over the events' occurred_at index)."""
        started = self.monotonic()
        if self._retention_at is not None and started - self._retention_at < RETENTION_EVERY:
            return
        self._retention_at = started
        cutoff = to_utc(now) - reconciler.project.config.response_retention
        try:
            deleted = reconciler.ledger.delete_events_before(cutoff.replace(tzinfo=None))
        except EngineError as exc:
            event("ledger.unreadable", f"Could not delete old response events: {str(exc).splitlines()[0]}", logging.WARNING)
            return
        self.metrics.events_deleted.inc(deleted)
        event("responses.retention", f"Deleted {deleted} response events that occurred before {format_instant(cutoff)} "
              f"(policies.responses.retention)", logging.INFO if deleted else logging.DEBUG,
              deleted=deleted, cutoff=format_instant(cutoff))

    def _measure_pools(self, reconciler: Reconciler) -> None:
        """The coupon pools' unused codes (the pass copied the warehouse tables' codes into the ledger)."""
        if not reconciler.project.config.coupon_pools:
            return
        try:
            levels = pool_levels(reconciler.project, reconciler.ledger)
        except EngineError as exc:
            event("ledger.unreadable", f"Could not count the coupon pools: {str(exc).splitlines()[0]}", logging.WARNING)
            return
        self.metrics.record_pools(levels)
        for level in levels:
            if level.low:
                event("coupons.low", level.warning(), logging.WARNING, pool=level.pool, left=level.left)

    def _measure_backlog(self, reconciler: Reconciler, now: datetime) -> None:
        """Claimed rows without an outcome: left by a pass that died between claim and send."""
        try:
            count, oldest = reconciler.ledger.claimed_backlog()
        except EngineError as exc:
            event("ledger.unreadable", f"Could not measure the ledger backlog: {str(exc).splitlines()[0]}", logging.WARNING)
            return
        self.metrics.claimed.set(count)
        age = (now - to_utc(oldest)).total_seconds() if oldest is not None else 0.0
        self.metrics.oldest_claim.set(max(0.0, age))

    # --- hot reload ---------------------------------------------------------------

    def reload_if_changed(self) -> bool:
        """Swap in the project on disk if it changed and is valid; True if swapped."""
        if not self.watcher.changed():
            return False
        started = self.monotonic()
        result = self.watcher.load()
        if result.retry:
            event("config.changing", "Project files changed while loading them; trying again at the next pass",
                  logging.WARNING)
            return False
        if result.project is None:
            self._refuse(result)
            return False
        problem = self._names_problem(result.project)
        if problem:
            self.watcher.release(keep=self._reconciler.project if self._reconciler else None)
            self._refuse(result, [problem])
            return False
        refused = secret_issues(result.project.config)
        if refused:
            self.watcher.release(keep=self._reconciler.project if self._reconciler else None)
            self._refuse(dataclasses.replace(result, project=None, issues=result.issues + refused))
            return False
        try:
            reconciler = self._build(result.project)
        except EngineError as exc:
            self.watcher.release(keep=self._reconciler.project if self._reconciler else None)
            self.watcher.forget()  # a database may come back: try the same change again next pass
            self._refuse(result, [str(exc)])
            return False
        with self._lock:
            old, self._reconciler = self._reconciler, reconciler
            self._loaded_at = format_instant(self.clock.now())
            self._config_errors = []
        if old is not None:
            self._flush_tracking(old)
            old.close()
        heap.release()  # the old project's reference cycles become collectable; the next pass settles again
        self._settle_heap = True
        self.watcher.release(keep=reconciler.project)
        for issue in result.issues:
            _issue_event(issue)
        duration = self.monotonic() - started
        selected = reconciler.campaigns(list(self.names) or None)
        self.metrics.reloads.inc()
        self.metrics.config_valid.set(1)
        self.metrics.campaigns.set(len(selected))
        changed = ", ".join(result.changed_files) or "project files"
        event("config.reloaded", f"Reloaded the project after changes to {changed}: {_campaign_list(reconciler)}",
              files=result.changed_files, campaigns=[c.name for c in selected], duration=round(duration, 4))
        return True

    def _refuse(self, result: LoadResult, extra: Iterable[str] = ()) -> None:
        """Keep the running project; report every issue of the refused one, loudly."""
        for issue in result.errors:
            _issue_event(issue)
        for problem in extra:
            event("config.invalid", problem, logging.ERROR)
        problems = [mask(p) for p in [i.format() for i in result.errors] + list(extra)]
        with self._lock:
            self._config_errors = problems
            loaded_at = self._loaded_at
        self.metrics.reload_failures.inc()
        self.metrics.config_valid.set(0)
        changed = ", ".join(result.changed_files) or "project files"
        event("config.rejected", f"Refused the change to {changed}: {len(problems)} error(s); still running the "
              f"project loaded at {loaded_at}", logging.ERROR, files=result.changed_files, errors=len(problems))

    def _build(self, project: Project) -> Reconciler:
        declare_personal(project.config.customer_attributes())  # never logged unless asked
        webhooks.check(project.config)  # a provider's key or secret that cannot verify: refused like any bad setting
        reconciler = Reconciler(project, shard=self.shard)
        reconciler.ledger = LoggedLedger(reconciler.ledger, self.monotonic)
        return reconciler

    def _names_problem(self, project: Project) -> str | None:
        known = {c.name for c in project.campaigns}
        missing = [n for n in self.names if n not in known]
        if missing:
            return f"--campaign {', '.join(missing)}: no such campaign in the project (known: {', '.join(sorted(known)) or 'none'})"
        return None

    def _check_names(self, project: Project) -> None:
        problem = self._names_problem(project)
        if problem:
            raise EngineError(problem)

    def _check_secrets(self, project: Project) -> None:
        """No start with a missing or known code secret outside the demo; the demo says what it signs with."""
        issues = secret_issues(project.config)
        for issue in issues:
            _issue_event(issue)
        if issues:
            raise ProjectInvalid(issues)
        warning = code_secrets(project.config).warning
        if warning:
            event("secret.demo", warning, logging.WARNING)

    # --- health -------------------------------------------------------------------

    def _seconds_since_last_pass(self) -> float:
        last = self._last_pass_end
        return -1.0 if last is None else self.monotonic() - last

    def readiness(self) -> tuple[bool, dict]:
        """Ready: warehouse and ledger answer and the last pass ended recently enough."""
        with self._lock:
            reconciler = self._reconciler
            last_end, last_duration = self._last_pass_end, self._last_pass_duration
            config_errors, loaded_at, last_error = list(self._config_errors), self._loaded_at, self._last_error
            failed_campaigns = dict(self._failed_campaigns)
        checks: dict[str, str] = {}
        ok = True
        if reconciler is None:
            return False, {"checks": {"project": "starting"}}
        for name, database in (("warehouse", reconciler.warehouse), ("ledger", reconciler.ledger)):
            if name == "ledger" and reconciler.ledger.in_database(reconciler.warehouse):
                checks[name] = checks["warehouse"] + " (the warehouse database)"
                continue
            try:
                database.check()
                checks[name] = "ok"
            except EngineError as exc:
                checks[name] = mask(str(exc))
                ok = False
        limit = STALE_PASSES * max(self.interval, last_duration)
        if self.tracking_only:
            checks["last_pass"] = "no passes: tracking only"
        elif last_end is None:
            checks["last_pass"] = "no pass completed yet"
            ok = False
        else:
            age = self.monotonic() - last_end
            fresh = age <= limit
            checks["last_pass"] = f"{'ok' if fresh else 'stale'}: ended {age:.1f}s ago (limit {limit:g}s)"
            ok = ok and fresh
        detail = {
            "checks": checks,
            "config": {"valid": not config_errors, "loaded_at": loaded_at, "errors": config_errors},
            "campaigns": [c.name for c in reconciler.campaigns(list(self.names) or None)],
        }
        if last_error:
            detail["last_error"] = last_error
        if failed_campaigns:  # ready all the same: the other campaigns run; the metric and log say more
            detail["failed_campaigns"] = failed_campaigns
        return ok, detail


def _customer_exists(reconciler: Reconciler, customer_id: str) -> bool:
    """Is ``customer_id`` in the warehouse's customers source? (The id is a quoted literal, never SQL.)"""
    config = reconciler.config
    if "customers" not in config.sources:
        return False
    query = customer_query(config, customer_id).limit(1)
    return bool(reconciler.warehouse.fetch_all(render_sql(query, config.dialect)))


def _issue_event(issue) -> None:
    level = logging.ERROR if issue.severity == "error" else logging.WARNING
    event("config.invalid" if issue.severity == "error" else "config.warning", issue.format().split("\n")[0], level,
          file=issue.file, line=issue.line, column=issue.column, fix=issue.fix or None)


def _campaign_list(reconciler: Reconciler) -> str:
    names = [c.name for c in reconciler.project.campaigns if c.enabled]
    return f"{len(names)} campaign(s): {', '.join(names) or 'none'}"
