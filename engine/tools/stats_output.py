"""Campaign statistics for people (text) and tools (json, csv)."""
from __future__ import annotations

import csv
import json
from typing import IO

from engine.clock import format_duration
from engine.tools.stats import ABTest, CampaignStats, Engagement, KindStats, StepStats, VariantStats, verdict

CSV_FIELDS = ["campaign", "step", "entered", "sent", "failed", "unknown", "in_flight", "skipped", "skipped_by_reason",
              "unsubscribed", "sent_customers", "converted", "orders", "revenue", "conversion_rate",
              "holdout_customers", "holdout_converted", "holdout_orders", "holdout_revenue", "holdout_rate",
              "uplift_points", "uplift_relative", "p_value", "note", "delivered", "opened", "clicked", "clicks",
              "click_rate", "bounced", "complained"]
ALL_STEPS = "*"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def skipped_text(figures: StepStats) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(figures.skipped.items())) or "-"


def kind_text(figures: KindStats) -> str:
    """One kind's outcomes in a line: "email sent 120, failed 1, skipped 30 (no_contact 20, stale 10)"."""
    counts = [f"{label} {n}" for label, n in (("sent", figures.sent), ("failed", figures.failed),
                                              ("unknown", figures.unknown), ("in flight", figures.in_flight)) if n]
    skipped = sum(figures.skipped.values())
    if skipped:
        counts.append(f"skipped {skipped} (" + ", ".join(f"{r} {n}" for r, n in sorted(figures.skipped.items())) + ")")
    return f"{figures.kind} " + (", ".join(counts) or "-") + responses_text(figures.engagement, figures.sent,
                                                                            figures.unsubscribed)


def responses_text(e: Engagement, sent: int, unsubscribed: int) -> str:
    """" (opened 40, clicked 12 = 10.0%, bounced 1)": the responses that happened, nothing when none did."""
    parts = [f"{label} {n}" for label, n in (("delivered", e.delivered), ("opened", e.opened)) if n]
    if e.clicked:
        parts.append(f"clicked {e.clicked} = {percent(e.clicked / sent) if sent else '-'}")
    parts += [f"{label} {n}" for label, n in (("scanned", e.scanned), ("bounced", e.bounced),
                                               ("complained", e.complained), ("unsubscribed", unsubscribed)) if n]
    return f" ({', '.join(parts)})" if parts else ""


def variant_text(v: VariantStats) -> str:
    rate = v.reached.converted / v.reached.customers if v.reached.customers else None
    return (f"{v.step}/{v.variant}: sent {v.sent}, converted {v.reached.converted} of {v.reached.customers} "
            f"= {percent(rate)}, click rate {percent(v.click_rate)}" + responses_text(v.engagement, v.sent, v.unsubscribed))


def ab_text(t: ABTest) -> str:
    c, k = t.conversion, t.clicks
    return (f"A/B {t.step}: {t.variant} vs {t.control}: conversion {percent(c.sent_rate)} vs {percent(c.holdout_rate)}, "
            f"{verdict(c)}; click rate {percent(k.sent_rate)} vs {percent(k.holdout_rate)}, {verdict(k)}")


def uplift_line(figures: StepStats) -> str:
    c = figures.comparison
    if figures.holdout.customers == 0:
        return c.note
    relative = "" if c.uplift_relative is None else f" ({c.uplift_relative * 100:+.1f}% relative)"
    points = "-" if c.uplift_points is None else f"{c.uplift_points:+.1f} points"
    return (f"sent {percent(c.sent_rate)} of {figures.reached.customers} vs holdout {percent(c.holdout_rate)} "
            f"of {figures.holdout.customers}: {points}{relative}; {c.note}")


def row(stats: CampaignStats, figures: StepStats) -> dict:
    c = figures.comparison
    return {
        "campaign": stats.name, "step": figures.step or ALL_STEPS, "entered": figures.entered, "sent": figures.sent,
        "failed": figures.failed, "unknown": figures.unknown, "in_flight": figures.in_flight,
        "skipped": sum(figures.skipped.values()),
        "skipped_by_reason": ";".join(f"{r}={n}" for r, n in sorted(figures.skipped.items())),
        "unsubscribed": figures.unsubscribed, "sent_customers": figures.reached.customers,
        "converted": figures.reached.converted, "orders": figures.reached.orders,
        "revenue": f"{figures.reached.revenue:.2f}", "conversion_rate": _number(c.sent_rate),
        "holdout_customers": figures.holdout.customers, "holdout_converted": figures.holdout.converted,
        "holdout_orders": figures.holdout.orders, "holdout_revenue": f"{figures.holdout.revenue:.2f}",
        "holdout_rate": _number(c.holdout_rate), "uplift_points": _number(c.uplift_points),
        "uplift_relative": _number(c.uplift_relative), "p_value": _number(c.p_value), "note": c.note,
        "delivered": figures.engagement.delivered, "opened": figures.engagement.opened,
        "clicked": figures.engagement.clicked, "clicks": figures.engagement.clicks,
        "click_rate": _number(figures.click_rate), "bounced": figures.engagement.bounced,
        "complained": figures.engagement.complained,
    }


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def write_stats(all_stats: list[CampaignStats], fmt: str, out: IO[str], header: str) -> None:
    if fmt == "json":
        json.dump({"period": header, "campaigns": [s.as_dict() for s in all_stats]}, out, indent=2)
        out.write("\n")
        return
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for stats in all_stats:
            for figures in (*stats.steps, stats.total):
                writer.writerow(row(stats, figures))
        return
    out.write(header + "\n")
    headers = ["step", "entered", "sent", "failed", "unknown", "skipped", "unsub", "converted", "rate", "revenue",
               "holdout", "h.converted", "h.rate", "delivered", "opened", "clicked", "click rate", "bounced",
               "complaints"]
    for stats in all_stats:
        holdout = f", holdout {stats.holdout_percent:g}%" if stats.holdout_percent else ""
        out.write(f"\n{stats.name} (conversion window {format_duration(stats.conversion_window)}{holdout})\n")
        lines = []
        for figures in (*stats.steps, stats.total):
            c = figures.comparison
            lines.append([figures.step or "(all)", figures.entered, figures.sent, figures.failed, figures.unknown,
                          skipped_text(figures), figures.unsubscribed, figures.reached.converted, percent(c.sent_rate),
                          f"{figures.reached.revenue:.2f}", figures.holdout.customers, figures.holdout.converted,
                          percent(c.holdout_rate), figures.engagement.delivered, figures.engagement.opened,
                          figures.engagement.clicked, percent(figures.click_rate), figures.engagement.bounced,
                          figures.engagement.complained])
        widths = [max(len(str(x)) for x in column) for column in zip(headers, *lines)]
        for values in [headers, ["-" * w for w in widths], *lines]:
            out.write("  ".join(str(v).ljust(w) for v, w in zip(values, widths)).rstrip() + "\n")
        if stats.holdout_percent or stats.total.holdout.customers:
            out.write(f"uplift: {uplift_line(stats.total)}\n")
        if stats.kinds:
            out.write("by kind: " + "; ".join(kind_text(k) for k in stats.kinds) + "\n")
        if len(stats.variants) > len(stats.steps) or any(stats.ab_tests):
            out.write("by variant: " + "; ".join(variant_text(v) for v in stats.variants) + "\n")
        for test in stats.ab_tests:
            out.write(ab_text(test) + "\n")
        if stats.include_machine:
            out.write("opens and clicks include machine opens and link-scanner clicks\n")
