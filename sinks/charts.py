"""Small inline SVG charts for the replay report: no plotting library, no script,
no network — the report must open anywhere, years later, and be byte-identical
for the same input (every coordinate is printed with fixed decimals).

Two shapes serve every chart the report draws: a line over days with shaded
horizontal bands (a pool's months of payment against its warning bands, its
balance) and bars with reference lines (a surge's baseline weeks against the
current week and its threshold; a pool's monthly income and expenditure).

>>> svg = line_chart([("2025-03-01", 7.0), ("2025-03-02", 2.5)], title="months",
...                  bands=[Band(None, 3.0, "critical")])
>>> svg.startswith("<svg") and "critical" in svg and svg.count("<path") == 1
True
>>> "<rect" in bar_chart([Bar("week 1", 10.0), Bar("now", 30.0, "current")],
...                      lines=[Rule(12.0, "threshold")])
True
"""
from __future__ import annotations

from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 22, 34

COLOURS = {  # the report's stylesheet names the same classes
    "critical": "#f4c7c3", "warning": "#fde7b0", "surplus": "#cfe2f3", "info": "#cfe2f3",
}


@dataclass(frozen=True)
class Band:
    """A horizontal band from ``low`` to ``high`` (None: the chart's edge)."""

    low: float | None
    high: float | None
    label: str


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    kind: str = "base"  # base | current | income | expenditure


@dataclass(frozen=True)
class Rule:
    """A horizontal reference line."""

    value: float
    label: str


@dataclass(frozen=True)
class Mark:
    """A vertical marker at an x label (an alert's day)."""

    at: str
    label: str


def _f(x: float) -> str:
    return f"{x:.1f}"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _axis_label(value: float) -> str:
    def short(x: float) -> str:
        return f"{x:.2f}".rstrip("0").rstrip(".")

    if abs(value) >= 1e8:
        return short(value / 1e8) + "亿"
    if abs(value) >= 1e4:
        return short(value / 1e4) + "万"
    return short(value)


def _frame(title: str, lo: float, hi: float, plot_h: float) -> list[str]:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
           f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
           f'<text x="{LEFT}" y="14" class="t">{escape(title)}</text>']
    for k in range(5):
        value = lo + (hi - lo) * k / 4
        y = TOP + plot_h - plot_h * k / 4
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_f(y)}" y2="{_f(y)}" '
                   'class="g"/>')
        out.append(f'<text x="{LEFT - 4}" y="{_f(y + 4)}" class="a" text-anchor="end">'
                   f'{escape(_axis_label(value))}</text>')
    return out


def line_chart(points: list[tuple[str, float | None]], *, title: str,
               bands: list[Band] = (), marks: list[Mark] = (), floor_zero: bool = True
               ) -> str:
    """``points``: (x label, y or None for a gap), evenly spaced, oldest first."""
    values = [v for _, v in points if v is not None]
    edges = [e for b in bands for e in (b.low, b.high) if e is not None]
    hi = _nice_max(max(values + edges + [0.0]) * 1.05)
    lo = min(values + [0.0]) if floor_zero else min(values + edges)
    lo = -_nice_max(-lo * 1.05) if lo < 0 else 0.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = max(len(points) - 1, 1)

    def x(i: float) -> float:
        return LEFT + plot_w * i / n

    def y(v: float) -> float:
        return TOP + plot_h - plot_h * (min(max(v, lo), hi) - lo) / (hi - lo)

    out = _frame(title, lo, hi, plot_h)
    for band in bands:
        top = y(band.high if band.high is not None else hi)
        bottom = y(band.low if band.low is not None else lo)
        out.append(f'<rect x="{LEFT}" y="{_f(top)}" width="{plot_w}" '
                   f'height="{_f(max(bottom - top, 0))}" class="band {escape(band.label)}">'
                   f'<title>{escape(band.label)}</title></rect>')
    path, pen_up = [], True
    for i, (_, v) in enumerate(points):
        if v is None:
            pen_up = True
            continue
        path.append(f"{'M' if pen_up else 'L'}{_f(x(i))},{_f(y(v))}")
        pen_up = False
    if path:
        out.append(f'<path d="{" ".join(path)}" class="l"/>')
    index = {label: i for i, (label, _) in enumerate(points)}
    for mark in marks:
        if mark.at in index:
            mx = x(index[mark.at])
            out.append(f'<line x1="{_f(mx)}" x2="{_f(mx)}" y1="{TOP}" y2="{TOP + plot_h}" '
                       f'class="m"><title>{escape(mark.label)}</title></line>')
    labels = _x_labels([label for label, _ in points])
    for i, label in labels:
        out.append(f'<text x="{_f(x(i))}" y="{HEIGHT - 16}" class="a" text-anchor="middle">'
                   f'{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _x_labels(labels: list[str]) -> list[tuple[int, str]]:
    """Up to seven evenly spread labels; days shown as month-day."""
    if not labels:
        return []
    step = max(1, (len(labels) + 5) // 6)
    picked = list(range(0, len(labels), step))
    return [(i, labels[i][5:] if len(labels[i]) == 10 else labels[i]) for i in picked]


def bar_chart(bars: list[Bar], *, title: str = "", lines: list[Rule] = (),
              labels_left: bool = False) -> str:
    """``labels_left``: label every reference line above it at the left edge (where
    the bars are the baseline, below the lines), not at the right edge, where the
    current bar of an alert stands above them and would hide the lower labels."""
    hi = _nice_max(max([b.value for b in bars] + [r.value for r in lines] + [0.0]) * 1.05)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(bars), 1)

    def y(v: float) -> float:
        return TOP + plot_h - plot_h * max(v, 0) / hi

    out = _frame(title, 0.0, hi, plot_h)
    for i, bar in enumerate(bars):
        x0 = LEFT + slot * i + slot * 0.15
        out.append(f'<rect x="{_f(x0)}" y="{_f(y(bar.value))}" width="{_f(slot * 0.7)}" '
                   f'height="{_f(TOP + plot_h - y(bar.value))}" class="b {escape(bar.kind)}">'
                   f'<title>{escape(bar.label)}: {bar.value:,.2f}</title></rect>')
        out.append(f'<text x="{_f(x0 + slot * 0.35)}" y="{HEIGHT - 16}" class="a" '
                   f'text-anchor="middle">{escape(bar.label)}</text>')
    # Reference lines lie close together (a threshold and its critical one): the
    # highest is labelled above its line, the others below theirs.
    for k, rule in enumerate(sorted(lines, key=lambda r: -r.value)):
        ly = y(rule.value)
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_f(ly)}" y2="{_f(ly)}" '
                   'class="r"/>')
        if labels_left:
            out.append(f'<text x="{LEFT + 4}" y="{_f(ly - 3)}" class="a" '
                       f'text-anchor="start">{escape(rule.label)}</text>')
            continue
        out.append(f'<text x="{WIDTH - RIGHT}" y="{_f(ly - 3 if k == 0 else ly + 11)}" '
                   f'class="a" text-anchor="end">{escape(rule.label)}</text>')
    out.append("</svg>")
    return "".join(out)


#: The charts' classes, for the page's stylesheet.
STYLE = """
svg .t{font:600 12px sans-serif;fill:#222}
svg .a{font:10px sans-serif;fill:#555}
svg .g{stroke:#e4e4e4;stroke-width:1}
svg .l{fill:none;stroke:#1f4e8c;stroke-width:1.6}
svg .m{stroke:#b00020;stroke-width:1;stroke-dasharray:3 2}
svg .r{stroke:#b00020;stroke-width:1.2;stroke-dasharray:5 3}
svg .band.critical{fill:#f4c7c3}
svg .band.warning{fill:#fde7b0}
svg .band.surplus{fill:#d6e6f5}
svg .b.base{fill:#9fb4cc}
svg .b.current{fill:#c0392b}
svg .b.income{fill:#6aa84f}
svg .b.expenditure{fill:#c0392b}
"""
