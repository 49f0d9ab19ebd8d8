"""The evolution section's figures (analysis/report/evolution.py): a layer x point heat map per model, and
the measures over training per model with the dev loss on the same step axis."""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from analysis.report.plotting import Rows, Style, colour, legend, panels, plt, render

# What the dev-loss panel of a model without a dev-loss curve says
NO_DEV_LOSS_PUBLISHED = "no dev loss: a published model's training is not ours"
NO_DEV_LOSS_LOG = "no dev-loss log"


def evolution_heatmaps(grids: Sequence[Any], style: Style, label: str | None = None, title: str | None = None,
                       vmin: float | None = 0.0) -> tuple[bytes, str] | None:
    """One panel per model: its `report_evolution.Grid` as a layer (rows, 0 at the bottom) x point
    (columns: the kept steps, then the finished model) heat map of its quantity (by default the distance
    to the finished model; `label`: the colour bar's, `title`: after the model's name; `vmin`: the colour
    scale's floor, None: the panel's lowest value)."""
    grids = [g for g in grids if g.values.size]
    if not grids:
        return None
    fig, axes = panels(len(grids), 3, width=3.6, height=2.6)
    for ax, g in zip(axes, grids):
        image = heatmap(ax, g, vmin)
        ax.set_title(f"{g.objective} seed {g.seed}" + (f": {title}" if title else ""))
        fig.colorbar(image, ax=ax, shrink=0.85, label=label or f"{g.measure} distance to final")
    return render(fig, style)


def heatmap(ax, g: Any, vmin: float | None = 0.0):
    """Draw `g` on `ax` (row i of the image is layer g.layers[i], column j point g.points[j])."""
    image = ax.imshow(g.values, origin="lower", aspect="auto", cmap="viridis", vmin=vmin,
                      vmax=max(float(np.nanmax(g.values)) if np.isfinite(g.values).any() else 1.0, 1e-9))
    ax.set_xticks(range(len(g.points)), g.labels(), rotation=60, fontsize=7)
    ax.set_yticks(range(len(g.layers)), [str(layer) for layer in g.layers])
    ax.set_xlabel("training step")
    ax.set_ylabel("layer")
    return image


def evolution_curves(rows: Rows, models: Sequence[tuple[str, int]], logs: Mapping[tuple[str, int], list[dict]],
                     measure: str, style: Style, published: Collection[str] = ()) -> tuple[bytes, str] | None:
    """Columns: models; rows: distance to final, corrected MI with the input, with the output, identity
    share of the neighbours (a line per layer, light to dark with depth), and the dev loss, all against
    the training step on one symmetric-log axis per column. A model of `published` (a pretrained grid:
    its revisions are the publisher's checkpoints) has no dev loss of ours: its panel says so, as does that
    of a trained model without a dev-loss log."""
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
                _say(ax, "no such label" if quantity == "mi" else "not measured")
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
        if objective in published:
            _say(ax, NO_DEV_LOSS_PUBLISHED.replace(": ", ":\n"), fontsize=7)
        elif points:
            ax.plot(*zip(*points), color=colour(objective), marker="o", ms=2, lw=1.2)
        else:
            _say(ax, NO_DEV_LOSS_LOG, fontsize=7)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("training step")
        if col == 0:
            ax.set_ylabel("dev loss", fontsize=8)
    legend(axes[0][0], fontsize=6, ncol=2)
    return render(fig, style)


def _say(ax, text: str, fontsize: float | None = None) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#888888", fontsize=fontsize)
