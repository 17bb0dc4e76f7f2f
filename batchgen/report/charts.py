"""Small inline SVG charts for the report header: no script, no network, no library.

Every label goes through ``html.escape``: axis values come from manifests and prompts.
"""

from __future__ import annotations

import html
import math
import unicodedata
from collections.abc import Sequence

WIDTH = 360
BAR_H = 16
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _width(char: str) -> int:
    """Rough width in half-em units: wide (CJK, emoji) characters count twice."""
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _short(text: str, limit: int = 28) -> str:
    """``text`` cut (with an ellipsis) to about ``limit`` narrow characters wide."""
    if sum(map(_width, text)) <= limit:
        return text
    used, kept = 1, []
    for char in text:
        used += _width(char)
        if used > limit:
            break
        kept.append(char)
    return "".join(kept) + "…"


def _seconds(s: float) -> str:
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def histogram(values: Sequence[float], *, title: str, bins: int = 12) -> str:
    """Distribution of ``values`` (seconds) as an SVG bar chart; a note when empty."""
    height = 150
    head = (
        f'<svg class="chart" role="img" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">'
        f"<title>{_esc(title)}</title>"
        f'<text x="4" y="14" {_FONT} font-weight="bold">{_esc(title)}</text>'
    )
    if not values:
        return head + f'<text x="4" y="40" {_FONT}>no finished runs yet</text></svg>'
    lo, hi = min(values), max(values)
    if math.isclose(lo, hi):
        lo, hi = lo - 0.5, hi + 0.5
    n = max(1, min(bins, len(values)))
    step = (hi - lo) / n
    counts = [0] * n
    for v in values:
        counts[min(n - 1, int((v - lo) / step))] += 1
    top = max(counts)
    left, bottom, plot_h = 4, height - 22, height - 50
    bar_w = (WIDTH - 2 * left) / n
    parts = [head]
    for i, c in enumerate(counts):
        h = plot_h * c / top
        x = left + i * bar_w
        label = f"{_seconds(lo + i * step)} to {_seconds(lo + (i + 1) * step)}: {c} run(s)"
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{bottom - h:.1f}" width="{max(1.0, bar_w - 2):.1f}" '
            f'height="{h:.1f}" fill="#4a7bd0"><title>{_esc(label)}</title></rect>'
        )
        if c:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{bottom - h - 3:.1f}" {_FONT} '
                f'text-anchor="middle">{c}</text>'
            )
    parts.append(
        f'<text x="{left}" y="{height - 6}" {_FONT}>{_esc(_seconds(lo))}</text>'
        f'<text x="{WIDTH - left}" y="{height - 6}" {_FONT} text-anchor="end">'
        f"{_esc(_seconds(hi))}</text>"
        f'<text x="{WIDTH / 2:.0f}" y="{height - 6}" {_FONT} text-anchor="middle">'
        f"n = {len(values)}</text></svg>"
    )
    return "".join(parts)


def spend_bars(items: Sequence[tuple[str, int]], *, title: str, limit: int = 12) -> str:
    """Spend (micro-USD) per label as horizontal bars, the largest ``limit`` and the rest."""
    ranked = sorted(items, key=lambda kv: -kv[1])
    if len(ranked) > limit:
        rest = sum(v for _, v in ranked[limit - 1 :])
        ranked = [*ranked[: limit - 1], (f"{len(items) - limit + 1} others", rest)]
    height = 24 + max(1, len(ranked)) * (BAR_H + 4) + 4
    parts = [
        f'<svg class="chart" role="img" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">'
        f"<title>{_esc(title)}</title>"
        f'<text x="4" y="14" {_FONT} font-weight="bold">{_esc(title)}</text>'
    ]
    if not ranked:
        parts.append(f'<text x="4" y="40" {_FONT}>nothing spent yet</text></svg>')
        return "".join(parts)
    top = max(v for _, v in ranked) or 1
    label_w, value_w = 140, 60
    span = WIDTH - label_w - value_w - 8
    for i, (label, value) in enumerate(ranked):
        y = 24 + i * (BAR_H + 4)
        w = span * value / top
        usd = f"${value / 1_000_000:,.2f}"
        parts.append(
            f'<text x="{label_w - 4}" y="{y + BAR_H - 4}" {_FONT} text-anchor="end">'
            f"<title>{_esc(label)}</title>{_esc(_short(label, 20))}</text>"
            f'<rect x="{label_w}" y="{y}" width="{max(1.0, w):.1f}" height="{BAR_H}" '
            f'fill="#3c9a6a"><title>{_esc(f"{label}: {usd}")}</title></rect>'
            f'<text x="{label_w + max(1.0, w) + 4:.1f}" y="{y + BAR_H - 4}" {_FONT}>'
            f"{_esc(usd)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


__all__ = ["histogram", "spend_bars"]
