"""The report's figures, drawn with matplotlib (Agg) from typed table rows and returned as bytes.

Every layer-wise curve is the mean over seeds, each seed's own curve thin beside it; a band spans
the lowest to the highest of the seeds' values and their bootstrap intervals (ci_low .. ci_high).
The study's numbers (`analysis.reference`) are drawn as dashed lines, at relative depth when this
run's stack has another number of layers than the study's six.
"""
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

from pipeline.config.grid import INIT  # noqa: E402

from analysis.report import reference  # noqa: E402
from analysis.report.claims import cross_task  # noqa: E402
from analysis.report.reference import Curve, scaled_layers  # noqa: E402
from analysis.io.tables import DIFFERENT_INIT, INIT_PAIR, SEED_BASELINE  # noqa: E402

Rows = Sequence[Mapping[str, Any]]
COLOURS = {"mt": "#1f6fb4", "mt_td": "#86b9e3", "lm": "#c8321e", "lm_td": "#f0a08f", "mlm": "#2f9a3c",
           "init": "#7f7f7f"}
INIT_LS = "--"  # the step-0 control `init`: drawn grey dashed, as a reference, wherever objectives are curves
_EXTRA = ["#8e5bb5", "#a66a1e", "#4d4d4d", "#d4a017", "#17a2b8"]
PAIR_COLOURS = {("mlm", "mt"): "#6a3d9a", ("lm", "mt"): "#e08214", ("lm", "mlm"): "#1b9e9e"}
PROPERTIES = ("identity", "position", "left_token", "right_token")
PROPERTY_TITLES = {"identity": "same token (share)", "position": "|Δ position| (same type)",
                   "left_token": "same left token (share)", "right_token": "same right token (share)"}

plt.rcParams.update({"svg.hashsalt": "bottom-up-evolution", "font.size": 9, "axes.titlesize": 10,
                     "axes.spines.top": False, "axes.spines.right": False, "legend.fontsize": 8,
                     "legend.frameon": False})


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


def render(fig, style: Style) -> tuple[bytes, str]:
    """(bytes, MIME type) of `fig`, closed afterwards."""
    buf = io.BytesIO()
    try:
        if style.fmt == "png":
            fig.savefig(buf, format="png", dpi=style.dpi, bbox_inches="tight", metadata={"Software": None})
            return buf.getvalue(), "image/png"
        fig.savefig(buf, format="svg", dpi=style.dpi, bbox_inches="tight", metadata={"Date": None})
        return buf.getvalue(), "image/svg+xml"
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
SEED_COLUMNS = ("seed", "seed_a", "seed_b")


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
    return bool(xs)


def shuffled_legend(ax) -> None:
    """One legend entry for the shuffled levels drawn in `ax`."""
    ax.plot([], [], color="#555555", label="rows shuffled (same n)", **SHUFFLED_STYLE)


def draw_reference(ax, curve: Curve | None, n_layers: int, colour_: str = "black", label: str | None = None) -> None:
    if curve is not None:
        ax.plot(scaled_layers(curve, n_layers), curve.values, ls="--", lw=1.1,
                color=colour_, alpha=0.75, label=label)


def legend(ax, **kwargs) -> None:
    """A legend when something labelled was drawn (matplotlib warns otherwise)."""
    if any(not label.startswith("_") for label in ax.get_legend_handles_labels()[1]):
        ax.legend(**kwargs)


def layer_axis(ax, label: str = "layer") -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)


# ---------------------------------------------------------------- setup

def training_curves(logs: Mapping[str, Mapping[int, list[dict]]], style: Style) -> tuple[bytes, str] | None:
    """Train and dev loss against steps; one panel per objective, one colour shade per seed."""
    objectives = [o for o, runs in logs.items() if any(runs.values())]
    if not objectives:
        return None
    fig, axes = panels(len(objectives), 3)
    for ax, objective in zip(axes, objectives):
        for i, (seed, log) in enumerate(sorted(logs[objective].items())):
            steps = [e["step"] for e in log]
            alpha = 1.0 if i == 0 else 0.6
            if any("dev_loss" in e for e in log):
                ax.plot(steps, [e.get("dev_loss", np.nan) for e in log], color=colour(objective), alpha=alpha,
                        marker="o", ms=2, label=f"dev, seed {seed}")
            if any("train_loss" in e for e in log):
                ax.plot(steps, [e.get("train_loss", np.nan) for e in log], color=colour(objective), ls=":",
                        alpha=alpha, label=f"train, seed {seed}")
        ax.set_title(objective)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        legend(ax)
    return render(fig, style)


def dev_loss_curves(runs: Sequence[tuple[str, int, list[dict], Mapping[str, Any]]],
                    style: Style) -> tuple[bytes, str]:
    """One panel per model (objective, seed, log entries, `pipeline.convergence` result): its dev loss per
    evaluation, the last quarter of its steps shaded, the title saying whether it converged (red if not)."""
    fig, axes = panels(len(runs), 4, width=2.8, height=2.2)
    for ax, (objective, seed, log, verdict) in zip(axes, runs):
        points = [(e["step"], e["dev_loss"]) for e in log if np.isfinite(float(e.get("dev_loss", np.nan)))]
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, color=colour(objective), marker="o", ms=2.5, lw=1.4)
            ax.axvspan(0.75 * max(steps), max(steps), color="#dddddd", alpha=0.5, lw=0)
        change = verdict.get("last_quarter_improvement")
        title = f"{objective} seed {seed}: " + ("converged" if verdict["converged"] else "NOT converged")
        ax.set_title(title + ("" if change is None else f"\nlast quarter: dev loss {-100 * change:+.1f}%"), fontsize=8,
                     color="#222222" if verdict["converged"] else "#b3261e")
        ax.set_xlabel("step")
        ax.set_ylabel("dev loss")
    return render(fig, style)


# ---------------------------------------------------------------- mutual information

def mi_panels(rows: Rows, which: Sequence[tuple[str, str]], n_clusters: int, n_layers: int,
              style: Style) -> tuple[bytes, str]:
    """Per (objective, target): the plug-in MI, its chance level (labels shuffled), the corrected MI
    (plug-in minus chance), in input panels the untrained stack's corrected MI (init, grey dashed)
    and the study's plug-in values."""
    fig, axes = panels(len(which), 3, sharey=False)
    for i, (ax, (objective, target)) in enumerate(zip(axes, which)):
        where = {"objective": objective, "target": target, "n_clusters": n_clusters}
        c = colour(objective)
        draw_spread(ax, rows, "layer", "mi", c, "plug-in MI", lw=1.0, ls="-.", **where)
        draw_spread(ax, rows, "layer", "mi_shuffled", "#888888", "chance (shuffled)", lw=1.0, ls=":", **where)
        draw_spread(ax, rows, "layer", "mi_corrected", c, "corrected", lw=2.0, **where)
        if target == "input" and objective != INIT:
            draw_spread(ax, rows, "layer", "mi_corrected", colour(INIT), "untrained (init), corrected", lw=1.0,
                        objective=INIT, target=target, n_clusters=n_clusters)
        draw_reference(ax, reference.MI.get((objective, target)), n_layers, label="study (plug-in)")
        ax.set_title(f"{objective}: {target}")
        ax.set_ylabel("nats")
        layer_axis(ax)
        if i == 0:
            legend(ax)
    return render(fig, style)


def mi_sweep(rows: Rows, which: Sequence[tuple[str, str]], style: Style) -> tuple[bytes, str]:
    """Corrected MI (solid) and chance level (dotted) per number of clusters."""
    fig, axes = panels(len(which), 3)
    for ax, (objective, target) in zip(axes, which):
        mine = [r for r in rows if r["objective"] == objective and r["target"] == target]
        counts = sorted({r["n_clusters"] for r in mine})
        shades = plt.cm.viridis(np.linspace(0.1, 0.85, max(len(counts), 1)))
        for k, shade in zip(counts, shades):
            draw_spread(ax, mine, "layer", "mi_corrected", shade, f"{k} clusters", n_clusters=k)
            draw_spread(ax, mine, "layer", "mi_shuffled", shade, "_", lw=1.0, ls=":", n_clusters=k)
        ax.set_title(f"{objective}: {target}")
        ax.set_ylabel("nats (dotted: chance)")
        layer_axis(ax)
        legend(ax)
    return render(fig, style)


# ---------------------------------------------------------------- similarity, change, influence

def similarity(rows: Rows, measures: Sequence[str], pairs: Sequence[tuple[str, str]], n_layers: int,
               style: Style) -> tuple[bytes, str]:
    """Distance at each layer between two objectives: models of the same seed (as `claims.cross_task`
    picks them; band: their values and intervals), and thin dash-dotted beside them models of different seeds;
    each objective's seed baseline (same objective, different seeds, grey dotted); the step-0
    controls of two seeds (grey dashed); the study's PWCCA dashed in the pair's colour."""
    fig, axes = panels(len(measures), 3, width=3.8, height=3.0)
    for i, (ax, measure) in enumerate(zip(axes, measures)):
        mine = [r for r in rows if r["measure"] == measure]
        cross, mixed = cross_task(mine), [r for r in mine if r["pair"] == DIFFERENT_INIT]
        for j, (a, b) in enumerate(pairs):
            c = PAIR_COLOURS.get(reference.pair_key(a, b), "#555555")
            same = [r for r in cross if {r["objective_a"], r["objective_b"]} == {a, b}]
            draw_spread(ax, same, "layer", "distance", c, f"{a}–{b}")
            if draw_shuffled(ax, same, "layer", c) and j == len(pairs) - 1:
                shuffled_legend(ax)
            drew = draw_spread(ax, [r for r in mixed if {r["objective_a"], r["objective_b"]} == {a, b}], "layer",
                               "distance", c, "_", lw=0.9, ls="-.")
            if drew and j == 0:
                ax.plot([], [], color="#555555", lw=0.9, ls="-.", label="different seeds")
            if measure == "pwcca":
                draw_reference(ax, reference.PWCCA.get(reference.pair_key(a, b)), n_layers, c)
        base = [r for r in mine if r["pair"] == SEED_BASELINE]
        objectives = sorted({r["objective_a"] for r in base})
        for j, objective in enumerate(objectives):
            draw_spread(ax, [r for r in base if r["objective_a"] == objective], "layer", "distance", "#9a9a9a",
                        f"seed baselines ({', '.join(objectives)})" if j == 0 else "_", lw=1.0, ls=":")
        controls = [r for r in mine if r["pair"] == INIT_PAIR and r["objective_a"] == r["objective_b"] == INIT]
        draw_spread(ax, controls, "layer", "distance", colour(INIT), "untrained: init seeds", lw=1.0, ls=INIT_LS)
        if measure == "pwcca":
            ax.axhspan(*reference.PWCCA_SEED_BASELINE, color="#cccccc", alpha=0.3, lw=0, label="study: seeds")
        ax.set_title(measure.upper())
        ax.set_ylabel("distance (1 − similarity)")
        layer_axis(ax)
        if i == 0:
            legend(ax, fontsize=7)
    return render(fig, style)


def change_all(rows: Rows, objectives: Sequence[str], measure: str, n_layers: int, style: Style) -> tuple[bytes, str]:
    """Distance between the states of all tokens at layers l-1 and l, per objective."""
    fig, (ax,) = panels(1, 1, width=5.5, height=3.4)
    for objective in objectives:
        if draw_spread(ax, rows, "layer_to", "distance", colour(objective), objective,
                       objective=objective, bucket="all", measure=measure):
            draw_reference(ax, reference.CHANGE.get(objective), n_layers, colour(objective))
            draw_shuffled(ax, rows, "layer_to", colour(objective), objective=objective, bucket="all", measure=measure)
    shuffled_legend(ax)
    ax.set_yscale("log", nonpositive="clip")  # the change (~0.05) and the shuffled level (~0.8) both legible
    ax.set_ylabel(f"{measure.upper()} distance, layer l−1 → l")
    layer_axis(ax, "l (transition l−1 → l)")
    legend(ax)
    return render(fig, style)


def bucket_order(buckets) -> list[str]:
    """Frequency buckets from frequent to rare ('1-10' < '10-25' < ...; others last)."""
    def start(b: str) -> float:
        try:
            return float(b.split("-")[0])
        except ValueError:
            return float("inf")
    return sorted(set(buckets), key=start)


def change_by_bucket(rows: Rows, objectives: Sequence[str], measure: str, style: Style) -> tuple[bytes, str]:
    """Per objective: the change of each frequency bucket's tokens (viridis: frequent dark, rare light)."""
    mine = [r for r in rows if r["measure"] == measure and r["bucket"] != "all"]
    buckets = bucket_order(r["bucket"] for r in mine)
    shades = dict(zip(buckets, plt.cm.viridis(np.linspace(0, 0.92, max(len(buckets), 1)))))
    fig, axes = panels(len(objectives), 3, sharey=True)
    for ax, objective in zip(axes, objectives):
        for bucket in buckets:
            draw_spread(ax, mine, "layer_to", "distance", shades[bucket], bucket, lw=1.2,
                        objective=objective, bucket=bucket)
            draw_shuffled(ax, mine, "layer_to", shades[bucket], objective=objective, bucket=bucket)
        ax.set_yscale("log", nonpositive="clip")
        ax.set_title(objective)
        layer_axis(ax, "l (transition l−1 → l)")
    axes[0].set_ylabel(f"{measure.upper()} distance")
    shuffled_legend(axes[-1])
    legend(axes[-1], title="rank bucket", loc="center left", bbox_to_anchor=(1.02, 0.5))
    return render(fig, style)


def influence(rows: Rows, layout: Sequence[Sequence[str]], measure: str, style: Style) -> tuple[bytes, str]:
    """Per objective (a row per kind: the base objective, then its token-dropout variant beside it):
    influence of each frequency bucket's tokens, one line per layer."""
    mine = [r for r in rows if r["measure"] == measure and r["bucket"] != "all"]
    buckets = bucket_order(r["bucket"] for r in mine)
    layers = sorted({r["layer"] for r in mine})
    shades = dict(zip(layers, plt.cm.plasma(np.linspace(0, 0.85, max(len(layers), 1)))))
    ncols = max(len(row) for row in layout)
    fig, grid = plt.subplots(len(layout), ncols, figsize=(4.2 * ncols, 2.7 * len(layout)), squeeze=False,
                             sharey=True, layout="constrained")
    for r, row in enumerate(layout):
        for c in range(ncols):
            ax = grid[r][c]
            if c >= len(row):
                ax.set_visible(False)
                continue
            objective = row[c]
            for layer in layers:
                xs, mean, lo, hi, n = spread([x for x in mine if x["objective"] == objective and x["layer"] == layer],
                                             "bucket", "distance")
                pos = [buckets.index(b) for b in xs]
                order = np.argsort(pos)
                pos, mean, lo, hi = np.asarray(pos)[order], mean[order], lo[order], hi[order]
                if len(pos):
                    ax.plot(pos, mean, color=shades[layer], marker="o", ms=2.5, lw=1.3, label=f"layer {layer}")
                    if np.any(hi > lo):  # the seeds' values and their bootstrap intervals
                        ax.fill_between(pos, lo, hi, color=shades[layer], alpha=0.15, lw=0)
                here = [x for x in mine if x["objective"] == objective and x["layer"] == layer
                        and x.get("shuffled") is not None]
                xs, level, _, _, _ = spread(here, "bucket", "shuffled")
                if xs:
                    order = np.argsort([buckets.index(b) for b in xs])
                    ax.plot(np.asarray([buckets.index(b) for b in xs])[order], level[order], color=shades[layer],
                            label="_", **SHUFFLED_STYLE)
            ax.set_yscale("log", nonpositive="clip")  # influence (~0.005) and the shuffled level (~0.8)
            ax.set_title(objective)
            ax.set_xticks(range(len(buckets)), buckets, rotation=45, ha="right", fontsize=7)
            ax.set_ylabel(f"{measure.upper()} distance")
    shuffled_legend(grid[0][0])
    legend(grid[0][0])
    return render(fig, style)


# ---------------------------------------------------------------- neighbours, t-SNE

def neighbours(rows: Rows, objectives: Sequence[str], n_layers: int, style: Style) -> tuple[bytes, str]:
    """Per property: the seed-mean value per layer for each objective; the study's endpoints dashed."""
    present = [p for p in PROPERTIES if any(r["property"] == p for r in rows)]
    fig, axes = panels(len(present), 4, width=3.0, height=2.8)
    for i, (ax, prop) in enumerate(zip(axes, present)):
        for objective in objectives:
            if draw_spread(ax, rows, "layer", "value", colour(objective), objective,
                           objective=objective, property=prop):
                draw_reference(ax, reference.NEIGHBOURS.get((objective, prop)), n_layers, colour(objective))
        ax.set_title(PROPERTY_TITLES[prop])
        layer_axis(ax)
        if i == 0:
            legend(ax)
    return render(fig, style)


def tsne_grid(rows: Rows, objectives: Sequence[str], layers: Sequence[int], colour_by: str,
              max_points: int, style: Style, seed: int = 0) -> tuple[bytes, str]:
    """t-SNE points: a row per objective, a column per layer. `colour_by`: token (a colour per
    word; in the masked run [MASK]ed occurrences as black crosses, randomly replaced ones as grey pluses) or position."""
    fig, grid = plt.subplots(len(objectives), len(layers), figsize=(1.9 * len(layers) + 1.2, 1.9 * len(objectives)),
                             squeeze=False, layout="constrained")
    tokens = sorted({r["token"] for r in rows})
    palette = dict(zip(tokens, plt.cm.tab10(np.arange(len(tokens)) % 10)))
    positions = [r["position"] for r in rows] or [0]
    norm = plt.Normalize(min(positions), max(positions))
    rng = np.random.default_rng(seed)
    by_panel: dict[tuple[str, int], list] = defaultdict(list)
    for row in rows:
        by_panel[(row["objective"], row["layer"])].append(row)
    scatter = None
    for i, objective in enumerate(objectives):
        for j, layer in enumerate(layers):
            ax = grid[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ("top", "right"):
                ax.spines[side].set_visible(True)
            pts = by_panel.get((objective, layer), [])
            if len(pts) > max_points:
                pts = [pts[k] for k in sorted(rng.choice(len(pts), max_points, replace=False))]
            if i == 0:
                ax.set_title(f"layer {layer}")
            if j == 0:
                ax.set_ylabel(objective)
            if not pts:
                ax.text(0.5, 0.5, "no points", ha="center", va="center", transform=ax.transAxes, color="#888888")
                continue
            x, y = np.array([p["x"] for p in pts]), np.array([p["y"] for p in pts])
            # the masking code of the masked run: 1 [MASK], 2 a random token (3, kept, looks unmasked)
            code = np.array([int(p.get("masked") or 0) for p in pts])
            masked, replaced = code == 1, code == 2
            if colour_by == "position":
                scatter = ax.scatter(x, y, c=[p["position"] for p in pts], cmap="viridis", norm=norm, s=5,
                                     lw=0, rasterized=True)
            else:
                plain = ~(masked | replaced)
                ax.scatter(x[plain], y[plain], c=[palette[p["token"]] for p, m in zip(pts, plain) if m],
                           s=5, lw=0, rasterized=True)
                if masked.any():
                    ax.scatter(x[masked], y[masked], c="black", marker="x", s=6, lw=0.6, rasterized=True)
                if replaced.any():
                    ax.scatter(x[replaced], y[replaced], c="#999999", marker="+", s=6, lw=0.6, rasterized=True)
    if colour_by == "position" and scatter is not None:
        fig.colorbar(scatter, ax=grid[:, -1].tolist(), label="position", shrink=0.8)
    elif colour_by != "position":
        handles = [plt.Line2D([], [], ls="", marker="o", color=palette[t], label=t) for t in tokens]
        codes = {int(r.get("masked") or 0) for r in rows}
        if 1 in codes:
            handles.append(plt.Line2D([], [], ls="", marker="x", color="black", label="[MASK]"))
        if 2 in codes:
            handles.append(plt.Line2D([], [], ls="", marker="+", color="#999999", label="random token"))
        fig.legend(handles=handles, loc="outside right center")
    return render(fig, style)


# ---------------------------------------------------------------- evolution over training

def evolution_heatmaps(grids: Sequence[Any], style: Style) -> tuple[bytes, str] | None:
    """One panel per model: its `report_evolution.Grid` as a layer (rows, 0 at the bottom) x point
    (columns: the kept steps, then the finished model) heat map of the distance to the finished model."""
    grids = [g for g in grids if g.values.size]
    if not grids:
        return None
    fig, axes = panels(len(grids), 3, width=3.6, height=2.6)
    for ax, g in zip(axes, grids):
        image = heatmap(ax, g)
        ax.set_title(f"{g.objective} seed {g.seed}")
        fig.colorbar(image, ax=ax, shrink=0.85, label=f"{g.measure} distance to final")
    return render(fig, style)


def heatmap(ax, g: Any):
    """Draw `g` on `ax` (row i of the image is layer g.layers[i], column j point g.points[j])."""
    image = ax.imshow(g.values, origin="lower", aspect="auto", cmap="viridis", vmin=0.0,
                      vmax=max(float(np.nanmax(g.values)) if np.isfinite(g.values).any() else 1.0, 1e-9))
    ax.set_xticks(range(len(g.points)), g.labels(), rotation=60, fontsize=7)
    ax.set_yticks(range(len(g.layers)), [str(layer) for layer in g.layers])
    ax.set_xlabel("training step")
    ax.set_ylabel("layer")
    return image


def evolution_curves(rows: Rows, models: Sequence[tuple[str, int]], logs: Mapping[tuple[str, int], list[dict]],
                     measure: str, style: Style) -> tuple[bytes, str] | None:
    """Columns: models; rows: distance to final, corrected MI with the input, with the output, identity
    share of the neighbours (a line per layer, light to dark with depth), and the dev loss, all against
    the training step on one symmetric-log axis per column."""
    if not models:
        return None
    quantities = [("to_final", measure, "final", f"{measure} distance to final"),
                  ("mi", "corrected", "input", "corrected MI, input (nats)"),
                  ("mi", "corrected", "output", "corrected MI, output (nats)"),
                  ("neighbours", "identity", "", "neighbours: same token")]
    fig, axes = plt.subplots(len(quantities) + 1, len(models), figsize=(3.2 * len(models), 2.0 * (len(quantities) + 1)),
                             squeeze=False, sharex="col", layout="constrained")
    for col, (objective, seed) in enumerate(models):
        mine = [r for r in rows if r["objective"] == objective and r["seed"] == seed]
        layers = sorted({r["layer"] for r in mine if r["quantity"] == "to_final"})
        cmap = plt.get_cmap("Blues" if objective.startswith("mt") else "Reds" if objective.startswith("lm")
                            else "Greens" if objective.startswith("mlm") else "Greys")
        for row, (quantity, m, target, label) in enumerate(quantities):
            ax = axes[row][col]
            picked = [r for r in mine if r["quantity"] == quantity and r["measure"] == m and r["target"] == target]
            if not picked:
                ax.text(0.5, 0.5, "no such label" if quantity == "mi" else "not measured", ha="center", va="center", transform=ax.transAxes, color="#888888")
            for layer in layers:
                shade = cmap(0.3 + 0.7 * layer / max(layers[-1], 1))
                snaps = sorted((r["step"], r["value"]) for r in picked if r["layer"] == layer and not r["final"])
                final = [(r["step"], r["value"]) for r in picked if r["layer"] == layer and r["final"]]
                if snaps:
                    ax.plot(*zip(*snaps), color=shade, lw=1.2, marker="o", ms=2, label=f"layer {layer}")
                if final:
                    ax.plot(*zip(*final), color=shade, ls="none", marker="o", ms=4, mfc="none")
            ax.set_xscale("symlog", linthresh=10)
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
            if row == 0:
                ax.set_title(f"{objective} seed {seed}")
        ax = axes[len(quantities)][col]
        points = [(e["step"], e["dev_loss"]) for e in logs.get((objective, seed), []) if "dev_loss" in e]
        if points:
            ax.plot(*zip(*points), color=colour(objective), marker="o", ms=2, lw=1.2)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("training step")
        if col == 0:
            ax.set_ylabel("dev loss", fontsize=8)
    legend(axes[0][0], fontsize=6, ncol=2)
    return render(fig, style)
