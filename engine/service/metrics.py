"""Prometheus metrics of the reconciler service (prometheus-client), derived from pass reports.

Owns the metric names and labels. The reconciler is not instrumented inside:
``record_pass`` turns a ``PassReport`` (counts per campaign, step, channel
and outcome) into counters; ``wsgi_app`` is prometheus-client's own exposition
of them (text format, or OpenMetrics when the scraper's Accept header asks). ``none`` is the channel of messages no variant
applied to. Each ``Metrics`` has its own registry, so several
services (tests) never share counters.
"""
from __future__ import annotations

from typing import Callable, Mapping

from prometheus_client import (
    CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector, ProcessCollector,
    disable_created_metrics, generate_latest, make_wsgi_app,
)

from engine import __version__
from engine.errors import WarehouseError
from engine.run.coupons import PoolLevel
from engine.run.messages import PassReport

PASS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
MESSAGE_LABELS = ("campaign", "step", "channel")

# The *_created series double what a scrape returns and no dashboard of ours reads them.
disable_created_metrics()


class Metrics:
    """Every metric the service exposes on /metrics."""

    def __init__(self, seconds_since_last_pass: Callable[[], float] | None = None):
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        Info("engine", "Version of the campaign engine.", registry=registry).info({"version": __version__})
        self.passes = Counter("engine_passes", "Reconciler passes by result: ok, incomplete (a channel could not open or a campaign failed) or error (the pass raised).",
                              ["result"], registry=registry)
        self.pass_duration = Histogram("engine_pass_duration_seconds", "Wall time of one reconciler pass.",
                                       buckets=PASS_BUCKETS, registry=registry)
        self.last_pass = Gauge("engine_last_pass_timestamp_seconds", "Unix time at which the last completed pass ended.",
                               registry=registry)
        self.due = Counter("engine_messages_due", "Messages a pass decided about (sent, skipped, failed or deferred).",
                           MESSAGE_LABELS, registry=registry)
        self.sent = Counter("engine_messages_sent", "Messages delivered to the channel.", MESSAGE_LABELS, registry=registry)
        self.skipped = Counter("engine_messages_skipped", "Messages recorded as skipped, by reason (stale, no_contact, ...).",
                               MESSAGE_LABELS + ("reason",), registry=registry)
        self.failed = Counter("engine_messages_failed", "Messages recorded as failed, by reason (transient, permanent, render_error).",
                              MESSAGE_LABELS + ("reason",), registry=registry)
        self.deferred = Counter("engine_messages_deferred", "Due messages not claimed this pass (e.g. channel_unavailable); retried next pass.",
                                MESSAGE_LABELS + ("reason",), registry=registry)
        self.pass_errors = Counter("engine_pass_errors", "Errors reported by passes (a channel that could not open, an unreachable database).",
                                   registry=registry)
        self.claimed = Gauge("engine_ledger_claimed_messages", "Ledger rows claimed but without an outcome (a pass died between claim and send).",
                             registry=registry)
        self.oldest_claim = Gauge("engine_ledger_oldest_claim_age_seconds", "Age of the oldest claimed-but-unfinished ledger row (0 if none).",
                                  registry=registry)
        self.since_pass = Gauge("engine_seconds_since_last_pass", "Seconds since the last completed pass ended (ledger lag); -1 before the first.",
                                registry=registry)
        if seconds_since_last_pass is not None:
            self.since_pass.set_function(seconds_since_last_pass)
        self.config_valid = Gauge("engine_config_valid", "1 if the project on disk is valid and running, 0 if the last change was refused.",
                                  registry=registry)
        self.config_valid.set(1)
        self.reloads = Counter("engine_config_reloads", "Project changes picked up and applied.", registry=registry)
        self.reload_failures = Counter("engine_config_reload_failures", "Project changes refused (invalid); the last valid project kept running.",
                                       registry=registry)
        self.campaigns = Gauge("engine_campaigns_active", "Campaigns the reconciler runs.", registry=registry)
        self.coupon_codes_left = Gauge("engine_coupon_codes_left", "Unused codes of each coupon pool after the last pass.",
                                       ["pool"], registry=registry)
        self.coupon_pool_low = Gauge("engine_coupon_pool_low", "1 when a coupon pool has its low_at (engine.yaml) unused codes "
                                     "or fewer: messages that find it empty are skipped (no_code).", ["pool"], registry=registry)
        self.campaign_failures = Counter("engine_campaign_failures", "Passes in which a campaign's query or decisions failed "
                                         "(it sent nothing more that pass; the other campaigns went on).",
                                         ["campaign"], registry=registry)
        self.warehouse_errors = Counter("engine_warehouse_errors", "Warehouse statements that failed during passes, by reason: "
                                        "timeout (stopped at warehouse.statement_timeout), unreachable (no connection, "
                                        "or it was lost), query (the database refused or failed it).",
                                        ["reason"], registry=registry)
        for reason in WarehouseError.REASONS:  # every reason shows from the start, at 0
            self.warehouse_errors.labels(reason)
        self.events_deleted = Counter("engine_response_events_deleted", "Response events (opens, clicks, bounces, ...) "
                                      "deleted for being older than policies.responses.retention.", registry=registry)

    def record_pass(self, report: PassReport, duration: float, ended_at: float) -> None:
        """Count one completed pass and every message decision in its report."""
        self.passes.labels("incomplete" if report.errors or report.failed_campaigns else "ok").inc()
        self.pass_errors.inc(len(report.errors))
        for campaign in report.failed_campaigns:
            self.campaign_failures.labels(campaign).inc()
        self.pass_duration.observe(duration)
        self.last_pass.set(ended_at)
        for (campaign, step, channel, outcome), n in report.by_channel.items():
            labels = (campaign, step, channel or "none")
            kind, _, reason = outcome.partition(":")
            self.due.labels(*labels).inc(n)
            if kind == "sent":
                self.sent.labels(*labels).inc(n)
            elif kind == "skipped":
                self.skipped.labels(*labels, reason or "unknown").inc(n)
            elif kind == "failed":
                self.failed.labels(*labels, reason or "unknown").inc(n)
            else:
                self.deferred.labels(*labels, reason or kind).inc(n)

    def record_pools(self, levels: list[PoolLevel]) -> None:
        """The coupon pools' unused codes and whether each is running low (run.coupons.pool_levels)."""
        for level in levels:
            self.coupon_codes_left.labels(level.pool).set(level.left)
            self.coupon_pool_low.labels(level.pool).set(1 if level.low else 0)

    def record_warehouse_errors(self, by_reason: Mapping[str, int]) -> None:
        """Failed warehouse statements by reason (``Database.take_failures``)."""
        for reason, n in by_reason.items():
            self.warehouse_errors.labels(reason).inc(n)

    def record_failed_pass(self, duration: float) -> None:
        self.passes.labels("error").inc()
        self.pass_errors.inc()
        self.pass_duration.observe(duration)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def wsgi_app(self):
        """The /metrics endpoint: content negotiation (text or OpenMetrics), ``name[]`` filters, gzip."""
        return make_wsgi_app(self.registry)

