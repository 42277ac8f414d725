"""The funnel as one self-contained HTML page: inline CSS, an inline SVG chart, the table.

No script, no font, no image, no link to anything: the page reads the same offline, in a
mail attachment or in a BI tool's HTML widget.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncd.report import Funnel, Row

LABELS = {"subscribers": "Bot subscribers", "linked": "Linked (email)", "ordered": "Ordered",
          "paid": "Paid"}  # fmt: skip
COLOURS = ("#2f6fdf", "#2a9d8f", "#e9a23b", "#d1495b")
WIDTH, BAR_HEIGHT, GAP, LEFT = 760, 46, 30, 150

CSS = """
body { font: 15px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2430;
       margin: 32px auto; max-width: 980px; padding: 0 16px; background: #ffffff; }
h1 { font-size: 22px; margin: 0 0 4px; }
p.period { color: #5a6475; margin: 0 0 20px; }
svg { display: block; margin: 0 0 28px; }
svg text { font: 14px system-ui, sans-serif; }
svg .value { font-weight: 600; fill: #1d2430; }
svg .step { fill: #1d2430; }
svg .rate { fill: #5a6475; font-size: 13px; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 6px 10px; border-bottom: 1px solid #e3e6eb; text-align: right;
         white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f5f8; font-weight: 600; }
tr.total td { font-weight: 700; border-top: 2px solid #1d2430; }
td.rate { color: #5a6475; }
"""


def _count(value: int) -> str:
    return f"{value:,}".replace(",", "\u202f")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _amount(row: Row) -> str:
    whole, _, cents = f"{row.revenue:.2f}".partition(".")
    return f"{int(whole):,}".replace(",", "\u202f") + "." + cents


def chart(total: Row) -> str:
    """The funnel of the total: one centred bar per step, its width the share of step one."""
    values = [total.subscribers, total.linked, total.ordered, total.paid]
    rates = (None, *total.conversions())
    top = max(values[0], 1)
    span = WIDTH - LEFT - 20
    height = len(values) * (BAR_HEIGHT + GAP)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="Funnel chart">'
    ]
    for i, (step, value, rate, colour) in enumerate(
        zip(LABELS, values, rates, COLOURS, strict=True)
    ):
        y = i * (BAR_HEIGHT + GAP)
        width = max(span * value / top, 3.0)
        x = LEFT + (span - width) / 2
        parts.append(
            f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{BAR_HEIGHT}" rx="4" '
            f'fill="{colour}"/>'
        )
        parts.append(
            f'<text class="step" x="0" y="{y + BAR_HEIGHT / 2 + 5:.0f}">{LABELS[step]}</text>'
        )
        parts.append(
            f'<text class="value" x="{LEFT + span / 2:.1f}" y="{y + BAR_HEIGHT / 2 + 5:.0f}" '
            f'text-anchor="middle" style="fill:#ffffff">{_count(value)}</text>'
            if width > 90
            else f'<text class="value" x="{x + width + 8:.1f}" y="{y + BAR_HEIGHT / 2 + 5:.0f}">'
            f"{_count(value)}</text>"
        )
        if rate is not None or i:
            parts.append(
                f'<text class="rate" x="{LEFT + span / 2:.1f}" y="{y - 9}" '
                f'text-anchor="middle">↓ {_pct(rate)}</text>'
            )
    parts.append("</svg>")
    return "\n".join(parts)


def table(f: Funnel) -> str:
    head = "".join(
        f"<th>{escape(name)}</th>"
        for name in (f.by, "subscribers", "linked", "%", "ordered", "%", "paid", "%", "revenue")
    )
    body = []
    rows = (*f.rows, f.total)
    for n, row in enumerate(rows, 1):
        linked, ordered, paid = row.conversions()
        cells = [
            f"<td>{escape(row.key)}</td>",
            f"<td>{_count(row.subscribers)}</td>",
            f"<td>{_count(row.linked)}</td>",
            f'<td class="rate">{_pct(linked)}</td>',
            f"<td>{_count(row.ordered)}</td>",
            f'<td class="rate">{_pct(ordered)}</td>',
            f"<td>{_count(row.paid)}</td>",
            f'<td class="rate">{_pct(paid)}</td>',
            f"<td>{_amount(row)}</td>",
        ]
        css = ' class="total"' if n == len(rows) else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    rows_html = "\n".join(body)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows_html}\n</tbody>\n</table>"


def page(f: Funnel) -> str:
    title = f"Funnel by {f.by}"
    total = f.total
    revenue = _amount(total)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} — syncd</title>
<style>{CSS}</style>
</head>
<body>
<h1>{escape(title)}</h1>
<p class="period">First bot contact {escape(f.period())} (UTC) · revenue {revenue}</p>
{chart(total)}
{table(f)}
</body>
</html>
"""
