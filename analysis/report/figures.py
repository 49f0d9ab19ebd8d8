"""The report's figures, drawn with matplotlib (Agg) from typed table rows and returned as bytes.

Every layer-wise curve is the mean over seeds, each seed's own curve thin beside it; a band spans
the lowest to the highest of the seeds' values and their bootstrap intervals (ci_low .. ci_high).
The study's numbers (`analysis.report.reference`) are drawn as dashed lines, at relative depth when this
run's stack has another number of layers than the study's six.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from analysis.io.tables import DIFFERENT_INIT, INIT_PAIR, SEED_BASELINE
from analysis.report import reference
from analysis.report.claims import cross_task
from analysis.report.plotting import (
    INIT_LS,
    PAIR_COLOURS,
    SHUFFLED_STYLE,
    Rows,
    Style,
    colour,
    draw_reference,
    draw_shuffled,
    draw_spread,
    layer_axis,
    legend,
    panels,
    render,
    shuffled_legend,
    spread,
)
from pipeline.config.grid import INIT

PROPERTIES = ("identity", "position", "left_token", "right_token")
PROPERTY_TITLES = {"identity": "same token (share)", "position": "|Δ position| (same type)",
                   "left_token": "same left token (share)", "right_token": "same right token (share)"}

plt.rcParams.update({"svg.hashsalt": "bottom-up-evolution", "font.size": 9, "axes.titlesize": 10,
                     "axes.spines.top": False, "axes.spines.right": False, "legend.fontsize": 8,
                     "legend.frameon": False})


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
    """One panel per model (objective, seed, log entries, `pipeline.train.convergence` result): its dev loss per
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


READOUT_TITLES = {"loss": ("logit lens: loss of the target", "nats"),
                  "accuracy": ("logit lens: top-1 accuracy", "share"),
                  "kl": ("logit lens: KL(last layer ‖ layer)", "nats")}


def readout_panels(rows: Rows, mi: Rows | None, models: Sequence[str], quantities: Sequence[str],
                   n_clusters: int | None, style: Style) -> tuple[bytes, str]:
    """Side by side on one layer axis, a curve per model in its colour: the corrected MI with the output
    label (as the MI section draws it, `n_clusters`), then each readout quantity (table `readout`)."""
    fig, axes = panels(1 + len(quantities), 1 + len(quantities), width=3.1, height=2.7)
    ax = axes[0]
    for objective in models:
        if mi is None or not draw_spread(ax, mi, "layer", "mi_corrected", colour(objective), objective,
                                         objective=objective, target="output", n_clusters=n_clusters):
            ax.plot([], [], color=colour(objective), label=f"{objective}: no MI rows")
    ax.set_title("MI with the output label (corrected)")
    ax.set_ylabel("nats")
    layer_axis(ax)
    legend(ax, fontsize=7)
    for ax, quantity in zip(axes[1:], quantities):
        for objective in models:
            draw_spread(ax, rows, "layer", "value", colour(objective), objective, objective=objective,
                        quantity=quantity)
        title, unit = READOUT_TITLES.get(quantity, (quantity, ""))
        ax.set_title(title)
        ax.set_ylabel(unit)
        layer_axis(ax)
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
