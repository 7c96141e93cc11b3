"""eval.html: one self-contained page over an eval folder (eval.json): task scores with the
few-shot verdict, per-example answers side by side, stop and format health, general-text
perplexity, general answers, and the safety baseline. Charts are inline SVG; no script, no request.
"""

from __future__ import annotations

from pathlib import Path

from markupsafe import Markup

from sftlab.core.errors import SftlabError
from sftlab.core.io import read_json
from sftlab.report.page import _svg, render_page, write_page

COLORS = {"tuned": "#3b6ea8", "model": "#3b6ea8", "base": "#9aa5b1", "base_few_shot": "#e0a800",
          "model_few_shot": "#e0a800"}  # fmt: skip
HEALTH_KEYS = ("stop_rate", "leak_rate", "empty_rate", "loop_rate", "echo_rate")


def svg_bars(groups: dict[str, dict[str, float]], ylabel: str, ymax: float | None = 1.0) -> Markup:
    """Grouped bars: one group per outer key (a measure), one bar per inner key (a variant)."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 2.6), layout="constrained")
    ax = fig.subplots()
    variants = list(dict.fromkeys(v for g in groups.values() for v in g))
    width = 0.8 / max(len(variants), 1)
    x = np.arange(len(groups))
    for i, variant in enumerate(variants):
        values = [g.get(variant, 0.0) for g in groups.values()]
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=variant.replace("_", " "),
                      color=COLORS.get(variant, "#6c8f3a"))  # fmt: skip
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, [k.replace("_", " ") for k in groups])
    if ymax is not None:
        ax.set_ylim(0, ymax * 1.12)
    ax.set_ylabel(ylabel)
    # above the axes, so a full-height bar never hides under it
    ax.legend(fontsize=7, frameon=False, ncols=len(variants), loc="lower left",
              bbox_to_anchor=(0, 1.0), borderaxespad=0.2)  # fmt: skip
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def charts(report: dict) -> dict[str, Markup]:
    out = {"task": svg_bars({"task score": report["task"]["scores"]}, "mean score")}
    health = report["health"]
    out["health"] = svg_bars({k: {v: health[v][k] for v in health} for k in HEALTH_KEYS}, "share")
    general = {k: v for k, v in report["general_text"].items() if isinstance(v, dict)}
    out["general"] = svg_bars({"perplexity": {k: v["perplexity"] for k, v in general.items()}},
                              "perplexity", ymax=None)  # fmt: skip
    if report.get("safety"):
        rates = report["safety"]["rates"]
        out["safety"] = svg_bars({k: {m: r[k] for m, r in rates.items()}
                                  for k in ("refusal_rate", "over_refusal_rate")}, "share")  # fmt: skip
    return out


def write_eval_page(folder: str | Path) -> Path:
    folder = Path(folder)
    path = folder / "eval.json"
    if not path.is_file():
        raise SftlabError(
            f"{folder}: no eval.json here; run `sftlab eval ... --out {folder}` first"
        )
    report = read_json(path)
    try:
        html = render_page("eval.html.j2", title="sftlab eval", report=report, charts=charts(report),
                           variants=list(report["task"]["scores"]))  # fmt: skip
    except KeyError as exc:
        raise SftlabError(f"{path}: missing {exc} (written by another sftlab version?)") from None
    return write_page(folder / "eval.html", html)
