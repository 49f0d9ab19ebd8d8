"""The drawing kit every figure shares: colours and line styles per model, the page's style, panels,
a curve with its seeds' band and intervals, the no-correspondence level, references, legends and
axes; PNG and SVG out (matplotlib, Agg)."""
from __future__ import annotations

import io
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.report.interactive import SEED_COLUMNS, curve_spec, record, record_reference  # noqa: E402
from analysis.report.reference import Curve, scaled_layers  # noqa: E402
from pipeline.config.grid import INIT  # noqa: E402

Rows = Sequence[Mapping[str, Any]]

COLOURS = {"mt": "#1f6fb4", "mt_td": "#86b9e3", "lm": "#c8321e", "lm_td": "#f0a08f", "mlm": "#2f9a3c",
           "init": "#7f7f7f"}

INIT_LS = "--"  # the step-0 control `init`: drawn grey dashed, as a reference, wherever objectives are curves

_EXTRA = ["#8e5bb5", "#a66a1e", "#4d4d4d", "#d4a017", "#17a2b8"]

PAIR_COLOURS = {("mlm", "mt"): "#6a3d9a", ("lm", "mt"): "#e08214", ("lm", "mlm"): "#1b9e9e"}


@dataclass(frozen=True)
class Style:
    """How figures are stored: svg (vector; scatter points rasterised at `dpi`) or png."""

    fmt: str = "svg"
    dpi: int = 110

    def __post_init__(self) -> None:
        if self.fmt not in ("svg", "png"):
            raise ValueError(f"setting analysis.report.figure_format={self.fmt!r}: expected svg or png")


def colour(objective: str) -> str:
    if objective not in COLOURS:
        COLOURS[objective] = _EXTRA[(len(COLOURS) - 5) % len(_EXTRA)]
    return COLOURS[objective]


class Rendered(tuple):
    """(bytes, MIME type) of a figure; `live`: its layer-wise curves as the page's live view draws them
    (analysis.report.interactive.curve_spec), None when it has none."""

    live: dict | None = None


def render(fig, style: Style) -> Rendered:
    """(bytes, MIME type) of `fig`, closed afterwards, with the curves it recorded (`Rendered.live`)."""
    buf = io.BytesIO()
    try:
        if style.fmt == "png":
            fig.savefig(buf, format="png", dpi=style.dpi, bbox_inches="tight", metadata={"Software": None})
            out = Rendered((buf.getvalue(), "image/png"))
        else:
            fig.savefig(buf, format="svg", dpi=style.dpi, bbox_inches="tight", metadata={"Date": None})
            out = Rendered((buf.getvalue(), "image/svg+xml"))
        out.live = curve_spec(fig)
        return out
    finally:
        plt.close(fig)


def panels(n: int, ncols: int, width: float = 3.4, height: float = 2.6, sharey: bool = False):
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             sharey=sharey, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


# The bootstrap interval columns of each value column (analysis/io/tables.py).
INTERVALS = {"mi": ("ci_low", "ci_high"), "mi_corrected": ("corrected_ci_low", "corrected_ci_high"),
             "distance": ("ci_low", "ci_high"), "value": ("ci_low", "ci_high")}



def _bounds(row: Mapping[str, Any], value: str) -> tuple[float, float]:
    """The row's bootstrap interval of `value`, or the value itself where it has none."""
    v = float(row[value])
    low, high = (float(row.get(c) if row.get(c) is not None else math.nan) for c in INTERVALS.get(value, ("", "")))
    return (low, high) if math.isfinite(low) and math.isfinite(high) else (v, v)


def spread(rows: Rows, x: str, value: str, **where: Any) -> tuple[list, np.ndarray, np.ndarray, np.ndarray, int]:
    """(xs, mean, low, high, most values at one x) of `value` over the rows matching `where`: the
    mean over the seeds, and a band from the lowest to the highest of the seeds' values and their
    bootstrap intervals (so it shows both the seeds' spread and each estimate's noise)."""
    groups: dict[Any, list[tuple[float, float, float]]] = defaultdict(list)
    for row in rows:
        if all(row.get(k) == v for k, v in where.items()) and not np.isnan(float(row[value])):
            groups[row[x]].append((float(row[value]), *_bounds(row, value)))
    xs = sorted(groups)
    vals = [groups[k] for k in xs]
    return (xs, np.array([statistics.fmean(v for v, _, _ in g) for g in vals]),
            np.array([min(min(v, lo) for v, lo, _ in g) for g in vals]),
            np.array([max(max(v, hi) for v, _, hi in g) for g in vals]), max((len(g) for g in vals), default=0))


def draw_spread(ax, rows: Rows, x: str, value: str, colour_: str, label: str, lw: float = 1.6,
                ls: str = "-", **where: Any) -> bool:
    """The seed mean of `value` per `x` over the rows matching `where`, every seed's own curve thin
    beside it, and a band over the seeds' values and their bootstrap intervals (`spread`); the
    step-0 control's solid curves are drawn dashed and thinner, as a reference."""
    xs, mean, lo, hi, n = spread(rows, x, value, **where)
    if not xs:
        return False
    if where.get("objective") == INIT and ls == "-":
        ls, lw = INIT_LS, min(lw, 1.2)
    ax.plot(xs, mean, color=colour_, lw=lw, ls=ls, marker="o", ms=2.5, label=label)
    record(ax, rows, x, value, colour_, label, ls, lw, where, INTERVALS.get(value))
    if n > 1:
        mine = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
        for key in sorted({tuple(r.get(c) for c in SEED_COLUMNS) for r in mine}, key=str):
            sx, sm, _, _, _ = spread([r for r in mine if tuple(r.get(c) for c in SEED_COLUMNS) == key], x, value)
            ax.plot(sx, sm, color=colour_, lw=0.6, ls=ls, alpha=0.55, label="_")
    if np.any(hi > lo):
        ax.fill_between(xs, lo, hi, color=colour_, alpha=0.18, lw=0)
    return True

SHUFFLED_STYLE = {"ls": ":", "lw": 0.9, "marker": "x", "ms": 3}


def draw_shuffled(ax, rows: Rows, x: str, colour_: str, **where: Any) -> bool:
    """The no-correspondence level of the rows matching `where` (column `shuffled`, the same distance
    with one view's rows permuted, at the same n): dotted with crosses, in the curve's colour."""
    xs, mean, _, _, _ = spread([r for r in rows if r.get("shuffled") is not None], x, "shuffled", **where)
    if xs:
        ax.plot(xs, mean, color=colour_, label="_", **SHUFFLED_STYLE)
        record(ax, [r for r in rows if r.get("shuffled") is not None], x, "shuffled", colour_, "_",
               SHUFFLED_STYLE["ls"], SHUFFLED_STYLE["lw"], where, None)
    return bool(xs)


def shuffled_legend(ax) -> None:
    """One legend entry for the shuffled levels drawn in `ax`."""
    ax.plot([], [], color="#555555", label="rows shuffled (same n)", **SHUFFLED_STYLE)


def draw_reference(ax, curve: Curve | None, n_layers: int, colour_: str = "black", label: str | None = None) -> None:
    if curve is not None:
        ax.plot(scaled_layers(curve, n_layers), curve.values, ls="--", lw=1.1,
                color=colour_, alpha=0.75, label=label)
        record_reference(ax, scaled_layers(curve, n_layers), curve.values, colour_, label)


def legend(ax, **kwargs) -> None:
    """A legend when something labelled was drawn (matplotlib warns otherwise)."""
    if any(not label.startswith("_") for label in ax.get_legend_handles_labels()[1]):
        ax.legend(**kwargs)


def layer_axis(ax, label: str = "layer") -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)
