"""A self-contained HTML report of campaign statistics: one index.html, readable offline.

Inline CSS and inline SVG drawn here from the figures ``engine.tools.stats``
computed; no script, no web font, nothing fetched. It opens with an overview
of every campaign (messages sent, conversion rate, revenue in the shop's
currency, uplift against the holdout) and a short glossary, then per campaign:
the funnel (qualified -> reached -> bought, the holdout group next to it), the
uplift, a table per step, and messages sent and conversions per day as a
chart. Laid out for a 1280 px wide window without sideways scrolling. Words
are a marketer's; the figures are exactly those of ``engine stats``.
"""
from __future__ import annotations

from datetime import date, timedelta
from html import escape
from pathlib import Path

from engine.tools.stats import CampaignStats, StepStats
from engine.clock import format_duration
from engine.tools.stats_output import ab_text, percent, uplift_line
from engine.tools.uplift import SIGNIFICANCE

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2933;margin:0;background:#f5f7fa}
main{max-width:1232px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:19px;margin:0 0 4px}
.meta{color:#52606d;margin:0 0 16px}
section{background:#fff;border:1px solid #d9e2ec;border-radius:8px;padding:20px 16px;margin:0 0 20px}
.table{overflow-x:auto} table{border-collapse:collapse;width:100%;margin:12px 0;font-size:12.5px;font-variant-numeric:tabular-nums}
th,td{text-align:right;padding:4px 5px;border-bottom:1px solid #e4e7eb} th:first-child,td:first-child{text-align:left}
td{white-space:nowrap} th{color:#52606d;font-weight:600;vertical-align:bottom}
td:first-child{white-space:normal;overflow-wrap:anywhere;min-width:6em} td.why{text-align:left;font-size:11.5px}
tr.all td{font-weight:600;border-top:2px solid #9aa5b1}
.charts{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start} svg{background:#fff;max-width:100%;height:auto}
.uplift{background:#f0f4f8;border-radius:6px;padding:8px 12px}
.empty{color:#7b8794}
dl.glossary{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:8px 0 0}
dl.glossary dt{font-weight:600} dl.glossary dd{margin:0}
"""
COLOURS = {"entered": "#9aa5b1", "sent": "#2680c2", "converted": "#27ab83", "holdout": "#f0b429",
           "holdout-converted": "#cb6e17"}
#: the words of the report a marketer may not know, and what they mean here
GLOSSARY = (
    ("Qualified", "times a customer met the campaign's trigger in the period (one who qualifies twice, e.g. with "
                  "two orders, counts twice), whether or not a message went out."),
    ("Reached", "customers who were sent at least one message of the campaign."),
    ("Bought / conversion rate", "customers with an order within the campaign's conversion window after a "
                                 "message; the rate is bought / reached. Revenue is the total of those orders."),
    ("Holdout", "a share of qualified customers, chosen at random, who on purpose get nothing. They show what "
                "customers buy anyway."),
    ("Uplift", "how much higher the conversion rate of reached customers is than the holdout's, in percentage "
               "points. 'Significant' means it is unlikely to be chance (p < 0.05); with few orders the report says "
               "it is too early to tell."),
    ("Stale", "not sent because it would have gone out too late: the moment for it (the step's freshness window) "
              "had passed, e.g. while the engine was stopped."),
    ("Unknown", "handed to the email or SMS provider, but the engine stopped before it learnt whether the provider "
                "accepted it; never sent twice, so it may or may not have arrived."),
    ("Failed", "the provider refused it (a bad address, an outage that outlasted the retries)."),
)


def count(n: int) -> str:
    return f"{n:,}"


def money(amount: float, currency: str) -> str:
    return f"{amount:,.2f} {currency}"


def render_report(all_stats: list[CampaignStats], period: str, generated: str, currency: str = "EUR") -> str:
    sections = "\n".join(_campaign(s, currency) for s in all_stats)
    body = (f"{_overview(all_stats, currency)}{_glossary()}<h2 class=\"part\">Campaign details</h2>{sections}"
            if all_stats else '<p class="empty">No campaigns.</p>')
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>Campaign report</title><style>{CSS}</style></head><body><main>"
            f"<h1>Campaign report</h1><p class=\"meta\">{escape(period)} &middot; generated {escape(generated)}</p>"
            f"{body}</main></body></html>\n")


def write_report(out_dir: Path, all_stats: list[CampaignStats], period: str, generated: str,
                 currency: str = "EUR") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(render_report(all_stats, period, generated, currency), encoding="utf-8")
    return path


def uplift_summary(figures: StepStats) -> str:
    """The uplift in one cell: points, and whether it means anything."""
    c = figures.comparison
    if not figures.holdout.customers:
        return "no holdout group"
    if c.uplift_points is None:
        return "nothing sent yet"
    if c.p_value is None:
        return f"{c.uplift_points:+.1f} pts (too early to tell)"
    verdict = "significant" if c.p_value < SIGNIFICANCE else "may be chance"
    return f"{c.uplift_points:+.1f} pts ({verdict})"


def _overview(all_stats: list[CampaignStats], currency: str) -> str:
    head = ("<tr><th>campaign</th><th>messages sent</th><th>customers reached</th><th>bought</th>"
            f"<th>conversion rate</th><th>revenue ({escape(currency)})</th><th>uplift against the holdout</th></tr>")
    rows = []
    for stats in all_stats:
        t = stats.total
        cells = {"sent": count(t.sent), "reached": count(t.reached.customers), "converted": count(t.reached.converted),
                 "rate": percent(t.comparison.sent_rate), "revenue": money(t.reached.revenue, currency),
                 "uplift": uplift_summary(t)}
        rows.append(f'<tr data-overview="{escape(stats.name)}"><td>{escape(stats.name)}</td>'
                    + "".join(f'<td data-o="{k}">{escape(v)}</td>' for k, v in cells.items()) + "</tr>")
    reached = sum(s.total.reached.customers for s in all_stats)
    converted = sum(s.total.reached.converted for s in all_stats)
    totals = {"sent": count(sum(s.total.sent for s in all_stats)), "reached": count(reached), "converted": count(converted),
              "rate": percent(converted / reached if reached else None),
              "revenue": money(sum(s.total.reached.revenue for s in all_stats), currency), "uplift": ""}
    rows.append('<tr class="all" data-overview="*"><td>all campaigns</td>'
                + "".join(f'<td data-o="{k}">{escape(v)}</td>' for k, v in totals.items()) + "</tr>")
    return (f'<section class="overview" id="overview"><h2>All campaigns at a glance</h2>'
            f"<div class=\"table\"><table>{head}{''.join(rows)}</table></div>"
            '<p class="meta">A customer reached by two campaigns counts in both; an order can count for '
            "several campaigns, so the revenue of all campaigns may be more than the shop's.</p></section>")


def _glossary() -> str:
    items = "".join(f"<dt>{escape(term)}</dt><dd>{escape(text)}</dd>" for term, text in GLOSSARY)
    return f'<section class="glossary" id="glossary"><h2>What the words mean</h2><dl class="glossary">{items}</dl></section>'


def _campaign(stats: CampaignStats, currency: str) -> str:
    total = stats.total
    holdout = f" &middot; holdout {stats.holdout_percent:g}% of qualified customers" if stats.holdout_percent else ""
    uplift = ""
    if stats.holdout_percent or total.holdout.customers:
        uplift = f'<p class="uplift" data-uplift="{escape(stats.name)}">Uplift: {escape(uplift_line(total))}</p>'
    return (f'<section class="campaign" id="campaign-{escape(stats.name)}" data-campaign="{escape(stats.name)}">'
            f"<h2>{escape(stats.name)}</h2><p class=\"meta\">an order counts if placed within "
            f"{format_duration(stats.conversion_window)} of a message{holdout}</p>"
            f'<div class="charts">{_funnel(total)}{_daily(stats)}</div>{uplift}{_steps_table(stats, currency)}'
            f"{_responses_table(stats)}{_ab_tests(stats)}</section>")


def _responses_table(stats: CampaignStats) -> str:
    """Per step, variant and kind: sent, delivered, opened, clicked, click rate, bounced, complaints,
    unsubscribed, bought, conversion rate."""
    if not any(vars(stats.total.engagement).values()) and not stats.ab_tests:
        return ""  # no response recorded (tracking off, or no provider events): nothing to show
    head = ("<tr><th>responses</th><th>sent</th><th>delivered</th><th>opened</th><th>clicked</th><th>click rate</th>"
            "<th>bounced</th><th>complaints</th><th>unsubscribed</th><th>bought</th><th>conversion rate</th></tr>")
    rows = []
    named = [(f"step {f.step}", f) for f in stats.steps] + [("all steps", stats.total)]
    named += [(f"variant {v.step}/{v.variant}", v) for v in stats.variants]
    named += [(f"kind {k.kind}", k) for k in stats.kinds if k.sent]
    for name, f in named:
        e = f.engagement
        cells = {"sent": count(f.sent), "delivered": count(e.delivered), "opened": count(e.opened),
                 "clicked": count(e.clicked), "click-rate": percent(f.click_rate), "bounced": count(e.bounced),
                 "complained": count(e.complained), "unsubscribed": count(f.unsubscribed),
                 "converted": count(f.reached.converted),
                 "rate": percent(f.reached.converted / f.reached.customers if f.reached.customers else None)}
        rows.append(f'<tr data-responses="{escape(name)}"><td>{escape(name)}</td>'
                    + "".join(f'<td data-r="{k}">{escape(v)}</td>' for k, v in cells.items()) + "</tr>")
    return (f"<div class=\"table\"><table>{head}{''.join(rows)}</table></div>"
            '<p class="meta">Opened, clicked: messages opened, or with a link followed, at least once (an email '
            "client's privacy prefetch and a link scanner's checks left out); click rate = clicked / sent. Bounced: "
            "undeliverable for good (the address is then suppressed); complaints: marked as spam. An A/B variant is "
            "compared with the step's first by conversion rate and by click rate, with the uplift's test.</p>")


def _ab_tests(stats: CampaignStats) -> str:
    return "".join(f'<p class="uplift" data-ab="{escape(t.step)}:{escape(t.variant)}">{escape(ab_text(t))}</p>'
                   for t in stats.ab_tests)


def _steps_table(stats: CampaignStats, currency: str) -> str:
    head = ("<tr><th>step</th><th>qualified</th><th>sent</th><th>failed</th><th>unknown</th><th>not sent, why</th>"
            "<th>unsubscribed</th><th>bought</th><th>conversion rate</th>"
            f"<th>revenue ({escape(currency)})</th><th>holdout</th><th>holdout bought</th>"
            "<th>holdout conversion rate</th></tr>")
    rows = []
    for figures in (*stats.steps, stats.total):
        c = figures.comparison
        name = figures.step or "all steps"
        cells = [count(figures.entered), count(figures.sent), count(figures.failed), count(figures.unknown),
                 count(figures.unsubscribed), count(figures.reached.converted), percent(c.sent_rate),
                 f"{figures.reached.revenue:,.2f}", count(figures.holdout.customers), count(figures.holdout.converted),
                 percent(c.holdout_rate)]
        keys = ["entered", "sent", "failed", "unknown", "unsubscribed", "converted", "rate", "revenue",
                "holdout", "holdout-converted", "holdout-rate"]
        row_class = ' class="all"' if figures.step is None else ""
        why = "<br>".join(f"{escape(reason)} {n:,}" for reason, n in sorted(figures.skipped.items())) or "-"
        tds = [f'<td data-k="{k}">{escape(v)}</td>' for k, v in zip(keys, cells)]
        tds.insert(4, f'<td data-k="skipped" class="why">{why}</td>')
        rows.append(f'<tr data-step="{escape(name)}"{row_class}><td>{escape(name)}</td>{"".join(tds)}</tr>')
    return f"<div class=\"table\"><table>{head}{''.join(rows)}</table></div>"


def _funnel(total: StepStats) -> str:
    """Horizontal bars: qualified, reached, bought (customers); holdout customers and those who bought below."""
    bars = [("qualified", "entered", total.entered), ("reached", "sent", total.reached.customers),
            ("bought", "converted", total.reached.converted)]
    if total.holdout.customers:
        bars += [("holdout", "holdout", total.holdout.customers),
                 ("holdout bought", "holdout-converted", total.holdout.converted)]
    width, label_w, bar_h, gap = 420, 130, 22, 8
    top = max([n for _, _, n in bars] + [1])
    height = len(bars) * (bar_h + gap) + 30
    parts = [f'<svg class="funnel" role="img" aria-label="funnel" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             '<text x="0" y="14" font-size="13" font-weight="600">From qualified to bought</text>']
    for i, (label, key, n) in enumerate(bars):
        y = 26 + i * (bar_h + gap)
        length = 0 if not n else max(2.0, (width - label_w - 80) * n / top)
        parts.append(f'<text x="0" y="{y + 16}" font-size="12">{label}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{length:.1f}" height="{bar_h}" fill="{COLOURS[key]}"/>'
                     f'<text x="{label_w + length + 6:.1f}" y="{y + 16}" font-size="12" data-funnel="{key}">{n:,}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _days(stats: CampaignStats) -> list[str]:
    if not stats.daily:
        return []
    first, last = date.fromisoformat(min(stats.daily)), date.fromisoformat(max(stats.daily))
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def _daily(stats: CampaignStats) -> str:
    """Bars: messages sent per day; dots on a line: attributed orders per day (the order's day)."""
    days = _days(stats)
    width, height, left, bottom, top_pad = 520, 200, 36, 30, 28
    parts = [f'<svg class="daily" role="img" aria-label="messages sent and conversions per day" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             '<text x="0" y="14" font-size="13" font-weight="600">Per day: '
             f'<tspan fill="{COLOURS["sent"]}">messages sent</tspan>, '
             f'<tspan fill="{COLOURS["converted"]}">conversions</tspan></text>']
    if not days:
        parts.append(f'<text x="{left}" y="{height // 2}" font-size="12" fill="#7b8794">nothing sent</text></svg>')
        return "".join(parts)
    peak = max([max(d.sent, d.conversions) for d in stats.daily.values()] + [1])
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    step = plot_w / len(days)
    base = height - bottom
    parts.append(f'<line x1="{left}" y1="{base}" x2="{width - 10}" y2="{base}" stroke="#9aa5b1"/>'
                 f'<text x="{left - 4}" y="{top_pad + 4}" font-size="10" text-anchor="end">{peak}</text>'
                 f'<text x="{left - 4}" y="{base}" font-size="10" text-anchor="end">0</text>')
    points = []
    for i, day in enumerate(days):
        figures = stats.daily.get(day)
        sent = figures.sent if figures else 0
        conversions = figures.conversions if figures else 0
        x = left + i * step
        h = plot_h * sent / peak
        bar = min(max(step * 0.8, 1), 28)
        if sent:
            parts.append(f'<rect x="{x + (step - bar) / 2:.1f}" y="{base - h:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}" fill="{COLOURS["sent"]}" data-day="{day}" data-sent="{sent}">'
                         f"<title>{day}: {sent} sent</title></rect>")
        cy = base - plot_h * conversions / peak
        points.append(f"{x + step / 2:.1f},{cy:.1f}")
        if conversions:
            parts.append(f'<circle cx="{x + step / 2:.1f}" cy="{cy:.1f}" r="3" fill="{COLOURS["converted"]}" '
                         f'data-day="{day}" data-conversions="{conversions}"><title>{day}: {conversions} conversions'
                         "</title></circle>")
    parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{COLOURS["converted"]}" stroke-width="1.5"/>')
    parts.append(f'<text x="{left}" y="{height - 8}" font-size="10">{days[0]}</text>'
                 f'<text x="{width - 10}" y="{height - 8}" font-size="10" text-anchor="end">{days[-1]}</text></svg>')
    return "".join(parts)
