"""The reusable part of every sftlab page: Jinja templates shipped as package data, the shared
stylesheet, charts drawn by matplotlib into inline SVG, and an atomic write.

Why matplotlib -> SVG rather than a JavaScript charting library: a histogram is ~10-20 kB of
SVG that needs no script to draw, while plotly's inlined bundle alone is ~3.5 MB per page.
Text stays text in the SVG (`svg.fonttype: none`), so the browser's own font draws it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import jinja2
import numpy as np
from markupsafe import Markup, escape

from sftlab.core.io import write_text_atomic

ASSETS = files("sftlab.report") / "assets"
_SVG_START = re.compile(r"<svg\b")  # what precedes it (XML declaration, DOCTYPE) is dropped
_SVG_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.DOTALL)  # RDF credits: not needed


def asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """Autoescaping on: every value from the data is text until a function marks it Markup."""
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: asset(name)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the page, not silently blanks
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["thousands"] = lambda n: f"{n:,}" if isinstance(n, int) else n
    return env


def render_page(template: str, title: str, scripts: Sequence[str] = (), **context) -> str:
    """Render a page template (which extends page.html.j2) with the shared CSS and the named
    script assets inlined. Scripts must not contain '</script'; checked, not assumed."""
    code = [asset(name) for name in scripts]
    if any("</script" in c.lower() for c in code):
        raise ValueError("an inlined script contains '</script', which would end the element")
    return (
        environment()
        .get_template(template)
        .render(
            title=title, css=Markup(asset("page.css")), scripts=[Markup(c) for c in code], **context
        )
    )


def highlight(text: str, spans: Sequence[tuple[int, int, str]]) -> Markup:
    """Escape `text`, wrapping each [start, end) span in <mark title=...>. Spans that overlap
    an earlier one or fall outside the text are skipped."""
    out, cursor = [], 0
    for start, end, title in sorted(spans):
        if start < cursor or end > len(text) or end <= start:
            continue
        out.append(escape(text[cursor:start]))
        out.append(Markup('<mark class="tok" title="{}">{}</mark>').format(title, text[start:end]))
        cursor = end
    out.append(escape(text[cursor:]))
    return Markup("").join(out)


def svg_histogram(
    values: Sequence[float], xlabel: str, bins: int = 40, color: str = "#3b6ea8"
) -> Markup:
    """A histogram as inline SVG (an empty-data chart says so instead of failing)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5.6, 2.5), layout="constrained")
    ax = fig.subplots()
    if len(values):
        shown, top, above = _clip_tail(values)
        # np.histogram, then bars: ax.hist converts a 50,000-value list element by element (~1 s)
        counts, edges = np.histogram(shown, bins=bins)
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=color,
               edgecolor="white", linewidth=0.4)  # fmt: skip
        if above:  # a few very long rows would squeeze every other bar into one
            xlabel += f"  (last bar: {above} row(s) at {top:,.0f} or more)"
    else:
        ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # row counts: no 0.5 ticks
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def svg_lines(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
    points: bool = False,
    log_x: bool = False,
) -> Markup:
    """Line chart, one line per named (xs, ys) series, as inline SVG; NaN values leave gaps.
    points: mark each value (few values per line, e.g. eval passes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 2.6), layout="constrained")
    ax = fig.subplots()
    drawn = 0
    for label, (xs, ys) in series.items():
        if len(xs):
            # a sparse line (eval passes; a run's first eval) would be invisible without marks
            ax.plot(xs, ys, label=label, linewidth=1.4, markersize=3,
                    marker="o" if points or len(xs) < 25 else None)  # fmt: skip
            drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no values yet", ha="center", va="center", transform=ax.transAxes)
    elif len(series) > 1:
        ax.legend(frameon=False, fontsize=8)
    if log_y and drawn:
        ax.set_yscale("log")
    if log_x and drawn:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def _clip_tail(values: Sequence[float]) -> tuple[np.ndarray, float, int]:
    """Values with a long tail folded into the last bar: everything above the 99th percentile,
    when the maximum is more than twice it. Returns (values, where the fold starts, how many)."""
    data = np.asarray(values, dtype=float)
    top = float(np.percentile(data, 99))
    if top <= 0 or data.max() <= 2 * top:
        return data, top, 0
    return np.minimum(data, top), top, int((data > top).sum())


def _svg(fig) -> Markup:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "sftlab", "font.size": 9}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    match = _SVG_START.search(text)
    return Markup(_SVG_METADATA.sub("", text[match.start() :] if match else text, count=1))


def write_page(path: Path, html: str) -> Path:
    """Write atomically: a reader never sees half a page."""
    write_text_atomic(path, html)
    return path
