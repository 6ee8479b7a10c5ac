"""A self-contained HTML report of campaign statistics: one index.html, readable offline.

Inline CSS and inline SVG drawn here from the figures ``engine.tools.stats``
computed; no script, no web font, nothing fetched. Per campaign: the funnel
(entered -> sent -> converted, the holdout group next to it), the uplift
against the holdout, a table per step, and messages sent and conversions per
day as a chart.
"""
from __future__ import annotations

from datetime import date, timedelta
from html import escape
from pathlib import Path

from engine.tools.stats import CampaignStats, StepStats
from engine.clock import format_duration
from engine.tools.stats_output import percent, skipped_text, uplift_line

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2933;margin:0;background:#f5f7fa}
main{max-width:980px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:19px;margin:0 0 4px}
.meta{color:#52606d;margin:0 0 16px}
section.campaign{background:#fff;border:1px solid #d9e2ec;border-radius:8px;padding:20px;margin:0 0 20px}
.table{overflow-x:auto} table{border-collapse:collapse;width:100%;margin:12px 0;font-size:13px;font-variant-numeric:tabular-nums}
th,td{text-align:right;padding:4px 8px;border-bottom:1px solid #e4e7eb} th:first-child,td:first-child{text-align:left}
th,td{white-space:nowrap} th{color:#52606d;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:16px} svg{background:#fff}
.uplift{background:#f0f4f8;border-radius:6px;padding:8px 12px}
.empty{color:#7b8794}
"""
COLOURS = {"entered": "#9aa5b1", "sent": "#2680c2", "converted": "#27ab83", "holdout": "#f0b429",
           "holdout-converted": "#cb6e17"}


def render_report(all_stats: list[CampaignStats], period: str, generated: str) -> str:
    sections = "\n".join(_campaign(s) for s in all_stats) or '<p class="empty">No campaigns.</p>'
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>Campaign report</title><style>{CSS}</style></head><body><main>"
            f"<h1>Campaign report</h1><p class=\"meta\">{escape(period)} &middot; generated {escape(generated)}</p>"
            f"{sections}</main></body></html>\n")


def write_report(out_dir: Path, all_stats: list[CampaignStats], period: str, generated: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(render_report(all_stats, period, generated), encoding="utf-8")
    return path


def _campaign(stats: CampaignStats) -> str:
    total = stats.total
    holdout = f" &middot; holdout {stats.holdout_percent:g}%" if stats.holdout_percent else ""
    uplift = ""
    if stats.holdout_percent or total.holdout.customers:
        uplift = f'<p class="uplift" data-uplift="{escape(stats.name)}">Uplift: {escape(uplift_line(total))}</p>'
    return (f'<section class="campaign" id="campaign-{escape(stats.name)}" data-campaign="{escape(stats.name)}">'
            f"<h2>{escape(stats.name)}</h2><p class=\"meta\">conversion window "
            f"{format_duration(stats.conversion_window)}{holdout}</p>"
            f'<div class="charts">{_funnel(total)}{_daily(stats)}</div>{uplift}{_steps_table(stats)}</section>')


def _steps_table(stats: CampaignStats) -> str:
    head = ("<tr><th>step</th><th>entered</th><th>sent</th><th>failed</th><th>unknown</th><th>skipped</th>"
            "<th>unsubscribed</th><th>converted</th><th>rate</th><th>revenue</th><th>holdout</th>"
            "<th>holdout converted</th><th>holdout rate</th></tr>")
    rows = []
    for figures in (*stats.steps, stats.total):
        c = figures.comparison
        name = figures.step or "all steps"
        cells = [figures.entered, figures.sent, figures.failed, figures.unknown, skipped_text(figures),
                 figures.unsubscribed, figures.reached.converted, percent(c.sent_rate),
                 f"{figures.reached.revenue:.2f}", figures.holdout.customers, figures.holdout.converted,
                 percent(c.holdout_rate)]
        keys = ["entered", "sent", "failed", "unknown", "skipped", "unsubscribed", "converted", "rate", "revenue",
                "holdout", "holdout-converted", "holdout-rate"]
        rows.append(f'<tr data-step="{escape(name)}"><td>{escape(name)}</td>'
                    + "".join(f'<td data-k="{k}">{escape(str(v))}</td>' for k, v in zip(keys, cells)) + "</tr>")
    return f"<div class=\"table\"><table>{head}{''.join(rows)}</table></div>"


def _funnel(total: StepStats) -> str:
    """Horizontal bars: entered, sent (customers), converted; holdout customers and converted below."""
    bars = [("entered", "entered", total.entered), ("sent", "sent", total.reached.customers),
            ("converted", "converted", total.reached.converted)]
    if total.holdout.customers:
        bars += [("holdout", "holdout", total.holdout.customers),
                 ("holdout converted", "holdout-converted", total.holdout.converted)]
    width, label_w, bar_h, gap = 420, 130, 22, 8
    top = max([n for _, _, n in bars] + [1])
    height = len(bars) * (bar_h + gap) + 30
    parts = [f'<svg class="funnel" role="img" aria-label="funnel" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             '<text x="0" y="14" font-size="13" font-weight="600">Funnel (customers; trigger instances entered)</text>']
    for i, (label, key, n) in enumerate(bars):
        y = 26 + i * (bar_h + gap)
        length = 0 if not n else max(2.0, (width - label_w - 60) * n / top)
        parts.append(f'<text x="0" y="{y + 16}" font-size="12">{label}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{length:.1f}" height="{bar_h}" fill="{COLOURS[key]}"/>'
                     f'<text x="{label_w + length + 6:.1f}" y="{y + 16}" font-size="12" data-funnel="{key}">{n}</text>')
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
