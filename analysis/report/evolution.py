"""The report's section on evolution over training (analysis/measures/evolution.py's table `evolution`).

Per model of `snapshots.models`, and per pretrained model with a grid of published revisions
(pretrained.models.<label>.revisions; analysis/report/revisions.py: its revisions' check, their names in the
points' labels where a name does not say its step): a layer x training-step heat map of each layer's distance to the
finished model (and, for an LM or MLM, of its logit-lens readout loss), the MI, neighbour and distance
curves over training with the dev loss on the same step axis, the step from which each layer stays
within `analysis.evolution.within` of its finished state, and the study's claims checked at every step
("when each finding appears").

A claim that compares objectives is checked at a step with each objective's state at that step; an
objective whose training ended before it enters with its finished model (marked in the table). The claims
read the trained objectives only (mt, lm, mlm by name; a pretrained label is never an objective's): a
pretrained grid model is left out of the per-step claims altogether, so that its published steps add no
points to them and it never enters a step beside our models (`per_step_rows`).
"""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.io.tables import REPLICATES
from analysis.report import claims, plotting
from analysis.report.criteria import Criteria, Verdict
from analysis.report.evolution_figures import (  # noqa: F401  (heatmap: read from here by the tests)
    NO_DEV_LOSS_LOG,
    NO_DEV_LOSS_PUBLISHED,
    evolution_curves,
    evolution_heatmaps,
    heatmap,
)
from analysis.report.gather import Experiment
from analysis.report.html import Section, details, not_measured, note, para, table
from analysis.report.plotting import Rows, Style
from analysis.report.revisions import grid_models, revision_names, revisions_block, shown_name

# The claims a step's rows can be checked for: those of MI (1, 2), MI and change (3), change (5) and
# neighbours (7). Task distances (4) need two seeds of every objective and influence (6) reruns the
# model: neither is measured per step.
PER_STEP_CLAIMS = (1, 2, 3, 5, 7)
FINAL = "final"


@dataclass(frozen=True)
class Grid:
    """One model's quantity per (layer, point): `values[layer][j]` at `points[j]` (a step, or FINAL), the
    points in training-step order with the finished model at its best step; snapshots kept after the best
    step (training went on until it stopped) come after FINAL, `after` of them."""

    objective: str
    seed: int
    measure: str
    points: list[Any]  # the snapshot steps up to the best step, FINAL, the snapshot steps after it
    steps: list[int]   # the training step of each point (the finished model's: its best step)
    layers: list[int]
    values: np.ndarray  # (len(layers), len(points)); nan where a cell has no row
    after: int = 0      # points after FINAL
    # a pretrained grid's revision names by point (a step, or FINAL); a label shows one where it adds to the step
    names: Mapping[Any, str] = field(default_factory=dict)

    def labels(self) -> list[str]:
        final = self.points.index(FINAL) if FINAL in self.points else len(self.points)
        out = []
        for j, (p, s) in enumerate(zip(self.points, self.steps)):
            name = shown_name(s, self.names.get(p))
            extra = [name] if name else []
            if p == FINAL:
                out.append(f"final ({', '.join([str(s), *extra])})")
            elif j > final:
                out.append(f"{p} ({', '.join([*extra, 'after best'])})")
            else:
                out.append(f"{p} ({name})" if name else str(p))
        return out

    def step_label(self, step: int | None) -> str:
        """A settle step as text: the step, with its revision name where that adds to it."""
        if step is None:
            return "final only"
        name = shown_name(step, self.names.get(step))
        return f"{step} ({name})" if name else str(step)


def points_of(rows: Sequence[Mapping[str, Any]], objective: str, seed: int) -> tuple[list[Any], list[int], int]:
    """(points, their steps, how many come after FINAL) of one model in training-step order: its snapshots
    up to its best step, the finished model (at its best step), the snapshots after it."""
    mine = [r for r in rows if r["objective"] == objective and r["seed"] == seed]
    snaps = sorted({r["step"] for r in mine if not r["final"]})
    final = sorted({r["step"] for r in mine if r["final"]})
    if not final:
        return snaps, snaps, 0
    best = final[0]
    before, after = [p for p in snaps if p <= best], [p for p in snaps if p > best]
    return [*before, FINAL, *after], [*before, best, *after], len(after)


def grid(rows: Sequence[Mapping[str, Any]], objective: str, seed: int, quantity: str = "to_final",
         measure: str = "pwcca", target: str | None = None, names: Mapping[Any, str] | None = None) -> Grid:
    points, steps, after = points_of(rows, objective, seed)
    mine = [r for r in rows if r["objective"] == objective and r["seed"] == seed and r["quantity"] == quantity
            and r["measure"] == measure and (target is None or r["target"] == target)]
    layers = sorted({r["layer"] for r in mine})
    values = np.full((len(layers), len(points)), np.nan)
    for r in mine:
        j = points.index(FINAL if r["final"] else r["step"])
        values[layers.index(r["layer"]), j] = r["value"]
    return Grid(objective, seed, measure, points, steps, layers, values, after, dict(names or {}))


def settled(g: Grid, within: float) -> dict[int, Any]:
    """Per layer, the first point from which its value stays at or below `within` up to the finished
    model (None: only the finished model itself); the snapshots after the best step are left out."""
    end = len(g.points) - g.after  # up to and including FINAL
    out = {}
    for i, layer in enumerate(g.layers):
        row = g.values[i, :end]
        first = None
        for j in range(end):
            if np.all(np.isfinite(row[j:])) and np.all(row[j:] <= within):
                first = g.steps[j] if g.points[j] != FINAL else None
                break
        out[layer] = first
    return out


# ---------------------------------------------------------------- the claims per step

def claim_tables(rows: Sequence[Mapping[str, Any]], crit: Criteria) -> dict[str, list[dict]]:
    """The rows of one point (every model at one step) in the shapes of the mi, change and
    neighbours tables, as analysis.report.claims reads them."""
    mi: dict[tuple, dict] = {}
    change, neighbours = [], []
    for r in rows:
        reps = (r.get(REPLICATES) or {}).get("value") if REPLICATES in r else None
        if r["quantity"] == "mi":
            key = (r["objective"], r["seed"], r["layer"], r["target"])
            out = mi.setdefault(key, {"objective": r["objective"], "seed": r["seed"], "layer": r["layer"],
                                      "target": r["target"], "n_clusters": crit.n_clusters,
                                      "n_tokens": r["n_tokens"]})
            column = "mi" if r["measure"] == "plugin" else "mi_corrected"
            prefix = "" if r["measure"] == "plugin" else "corrected_"
            out.update({column: r["value"], f"{prefix}ci_low": r["ci_low"], f"{prefix}ci_high": r["ci_high"]})
            if REPLICATES in r:
                out.setdefault(REPLICATES, {})[column] = reps
        elif r["quantity"] == "change":
            change.append({"measure": r["measure"], "objective": r["objective"], "seed": r["seed"],
                           "layer_from": r["layer"] - 1, "layer_to": r["layer"], "bucket": "all",
                           "distance": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                           "n_tokens": r["n_tokens"], **({REPLICATES: {"distance": reps}} if REPLICATES in r else {})})
        elif r["quantity"] == "neighbours":
            neighbours.append({"objective": r["objective"], "seed": r["seed"], "layer": r["layer"],
                               "property": r["measure"], "k": crit.k, "metric": crit.metric, "value": r["value"],
                               "n_queries": r["n_tokens"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                               **({REPLICATES: {"value": reps}} if REPLICATES in r else {})})
    complete = [m for m in mi.values() if "mi" in m and "mi_corrected" in m]
    return {"mi": complete, "change": change, "neighbours": neighbours}


def rows_at(rows: Sequence[Mapping[str, Any]], point: Any) -> tuple[list[Mapping[str, Any]], list[str]]:
    """Every model's rows at `point` (a step or FINAL): its snapshot of that step while the step is before
    its best step, else (its training had reached its best step, or ended) its finished model; and the
    models that entered with their finished model."""
    out, ended = [], []
    for objective, seed in sorted({(r["objective"], r["seed"]) for r in rows}):
        mine = [r for r in rows if r["objective"] == objective and r["seed"] == seed]
        finals = [r for r in mine if r["final"]]
        best = min((r["step"] for r in finals), default=None)
        if point == FINAL:
            out += finals
            continue
        at = [r for r in mine if not r["final"] and r["step"] == point]
        if at and (best is None or point < best):
            out += at
        elif best is not None and (point >= best or not any(not r["final"] and r["step"] > point for r in mine)):
            out += finals
            ended.append(f"{objective} seed {seed}")
    return out, ended


def verdicts_over_training(rows: Sequence[Mapping[str, Any]], crit: Criteria
                           ) -> tuple[list[Any], dict[int, list[Verdict]], dict[Any, list[str]]]:
    """(points, per claim number its verdict at each point, per point the models that entered with their
    finished model). The points are the kept steps before the last model's best step, then FINAL: a step
    at or after every model's best step would repeat FINAL."""
    last_best = max((r["step"] for r in rows if r["final"]), default=None)
    steps = sorted({r["step"] for r in rows if not r["final"]})
    points = [p for p in steps if last_best is None or p < last_best] + [FINAL]
    chosen = [c for c in claims.CLAIMS if c.number in PER_STEP_CLAIMS]
    verdicts: dict[int, list[Verdict]] = {c.number: [] for c in chosen}
    ended = {}
    for point in points:
        at, ended[point] = rows_at(rows, point)
        tables = claim_tables(at, crit)
        for claim, verdict in claims.check_all(tables, crit):
            if claim.number in verdicts:
                verdicts[claim.number].append(verdict)
    return points, verdicts, ended


def per_step_rows(rows: Sequence[Mapping[str, Any]], pretrained: Collection[str]
                  ) -> tuple[list[Mapping[str, Any]], list[str]]:
    """(the rows the claims over training read, the pretrained models left out): every model's but the
    pretrained ones'. The claims compare our trained objectives, each model of one seed at one training step;
    a published grid's steps are another training's (another corpus, size and schedule), so it neither
    enters a step nor adds its steps to the points."""
    left = sorted({r["objective"] for r in rows if r["objective"] in pretrained})
    return [r for r in rows if r["objective"] not in pretrained], left


def first_holding(points: Sequence[Any], verdicts: Sequence[Verdict]) -> Any:
    """The first point from which the claim holds at every later point (None: never so)."""
    for j in range(len(points)):
        if all(v.verdict == claims.HOLDS for v in verdicts[j:]):
            return points[j]
    return None


_MARK = {claims.HOLDS: "✓", claims.FAILS: "✗", claims.INCONCLUSIVE: "?", claims.NOT_MEASURED: "–"}


# ---------------------------------------------------------------- the section

def _models(rows) -> list[tuple[str, int]]:
    order = {o: i for i, o in enumerate(("mt", "lm", "mlm"))}
    return sorted({(r["objective"], r["seed"]) for r in rows}, key=lambda m: (order.get(m[0], 9), m[0], m[1]))


def _point_names(exp: Experiment) -> dict[tuple[str, int], dict[Any, str]]:
    """Per pretrained grid model (label, seed) its revision names by point (a step, or FINAL)."""
    return {model: {**steps, **({FINAL: final} if final else {})}
            for model, (steps, final) in revision_names(exp).items()}


def evolution_section(exp: Experiment, style: plotting.Style, crit: Criteria) -> Section:
    s = Section("evolution", "Evolution over training")
    s.add(para("The models of snapshots.models kept their weights at the steps of snapshots.keep while they "
               "trained (a published model's grid: its revisions, pretrained.models.<label>.revisions); each kept "
               "step was dumped on the probe set and measured as the finished model is: every layer's distance to "
               "the same layer of the finished model (on the same tokens), MI with the input and the output, nearest "
               "neighbours, the change between layers (all tokens) and the logit lens. Steps are optimiser steps; the finished model is the one with the best dev "
               "loss (its step in brackets). Each step has one k-means clustering per layer "
               "(analysis.evolution.restarts), so its MI can differ a little from the MI section's."))
    table_ = exp.tables.get("evolution")
    rows = table_.rows if table_ is not None else None
    grids_ = grid_models(exp, rows)
    if grids_:
        labels = ", ".join(dict.fromkeys(label for label, _ in grids_))
        s.add(para(f"Pretrained models with a grid of published revisions ({labels}; "
                   "pretrained.models.<label>.revisions): each revision was dumped as a snapshot and measured in the "
                   "same way against the model's final revision, its finished model (its training step in brackets, "
                   "and the revision's name where the name does not say the step). Their steps are the publisher's "
                   "optimiser steps of another training (corpus, size, schedule): they are read beside ours, never "
                   "compared with them step by step, and they have no dev loss of ours."))
    revisions_block(s, exp, grids_)
    if rows is None:
        s.add(not_measured("evolution over training", (table_.missing if table_ is not None else None)
                           or "no model keeps snapshots (snapshots.models) and no pretrained model names revisions"))
        return s
    measures = [str(m) for m in exp.cfg.analysis.evolution.measures]
    main = measures[0]
    within = float(exp.cfg.analysis.evolution.within)
    models = _models(rows)
    names = _point_names(exp)
    logs = {(m.objective, m.seed): m.log for m in exp.models}
    grids = [grid(rows, o, sd, "to_final", main, names=names.get((o, sd))) for o, sd in models]
    n = sorted({r["n_tokens"] for r in rows if r["quantity"] == "to_final"})
    figures_ = evolution_heatmaps(grids, style)
    if figures_ is not None:
        from analysis.report.html import figure
        s.add(figure(figures_[0], figures_[1], "distance to the finished model per layer and step",
                     f"{main.upper()} distance of each layer to the same layer of the finished model "
                     f"(0: the same representation up to a linear map); {', '.join(map(str, n))} tokens."))
    for g in grids:
        s.add(details(f"{g.objective} seed {g.seed}: the heat map's numbers ({main} distance to final)",
                      table(("layer", *g.labels()), [(layer, *(_num(v) for v in g.values[i]))
                                                     for i, layer in enumerate(g.layers)])))
    readout_heatmap(s, rows, models, style, names)
    # the step from which each layer stays close to its finished state (models of different depths: each
    # its own layers, "—" where a model has no such layer)
    layers = sorted({layer for g in grids for layer in g.layers})
    body = []
    for g in grids:
        done = settled(g, within)
        body.append((f"{g.objective} seed {g.seed}", *(g.step_label(done[layer]) if layer in done else "—"
                                                      for layer in layers)))
    s.add("<h3>When each layer settles</h3>")
    s.add(para(f"The first kept step from which a layer's {main.upper()} distance to its finished state stays at "
               f"or below {within:g} (analysis.evolution.within) up to the finished model (its best step); layers "
               "that settle first are those whose representation the rest of training leaves alone. Snapshots kept "
               "after the best step (training went on until early stopping or its cap ended it) are shown after "
               "the finished model, marked “after best”, and left out of the settle steps and of the claims "
               "below."))
    s.add(table(("model", *(f"layer {layer}" for layer in layers)), body))
    published = [o for o, _ in models if o in exp.pretrained]
    curves = evolution_curves(rows, models, logs, main, style, published)
    if curves is not None:
        from analysis.report.html import figure
        s.add(figure(curves[0], curves[1], "measures over training",
                     "Per model (columns), against the training step (symmetric log scale; the finished model at "
                     "its best step, a hollow marker): distance of each layer to the finished model, corrected MI "
                     "with the input and with the output, the neighbours' identity share, and the dev loss. Colour "
                     "runs from layer 0 (light) to the top layer (dark)."))
    lacking = [f"{o} seed {sd}: {NO_DEV_LOSS_PUBLISHED if o in exp.pretrained else NO_DEV_LOSS_LOG}"
               for o, sd in models if o in exp.pretrained or not any("dev_loss" in e for e in logs.get((o, sd), []))]
    if lacking:
        s.add(para("Dev loss not drawn: " + "; ".join(lacking) + "."))
    claims_over_training(s, rows, crit, exp.pretrained)
    return s


def claims_over_training(s: Section, rows: Rows, crit: Criteria, pretrained: Collection[str]) -> None:
    """“When each finding appears”: the per-step claims on the trained models' rows (`per_step_rows`)."""
    s.add("<h3>When each finding appears</h3>")
    rows, left = per_step_rows(rows, pretrained)
    if not rows:
        s.add(not_measured("the claims over training", f"only pretrained models ({', '.join(left)}) have rows "
                                                       "over training: the claims compare the objectives trained "
                                                       "here (mt, lm, mlm), which keep no snapshots in this run"))
        return
    points, verdicts, ended = verdicts_over_training(rows, crit)
    head = ("claim", "holds from", *(("final" if p == FINAL else str(p)) for p in points))
    body = []
    by_number = {c.number: c for c in claims.CLAIMS}
    for number, vs in verdicts.items():
        first = first_holding(points, vs)
        at = "never (not at the end)" if first is None else ("the end only" if first == FINAL else f"step {first}")
        if first is not None:
            at += f": {vs[points.index(first)].numbers}"
        body.append((f"{number}. {by_number[number].statement}", at, *(_MARK[v.verdict] for v in vs)))
    s.add(para("The claims of “The study and this run” that the per-step measures can check, at every kept step "
               "before the last model's best step, each decided by the same rules as the claim table (paired "
               "contrasts, Bonferroni-corrected; ✓ holds, ✗ does not hold, ? inconclusive, – not measured), and the "
               "first step from which a claim holds at every later step, with its numbers there. A model enters a "
               "step with its snapshot of that step while the step is before its best step, and with its finished "
               "model from its best step on. Claims 4 (task distances: two seeds of each objective) and 6 "
               "(influence) are not measured per step."))
    if left:
        s.add(note(f"The pretrained grid models ({', '.join(left)}) are left out of these claims: they read the "
                   "objectives trained here, and a published model's steps are another training's, so it neither "
                   "enters a step beside them nor adds its steps to the columns."))
    s.add(table(head, body))
    gone = {p: m for p, m in ended.items() if m and p != FINAL}
    if gone:
        s.add(para("Entering with their finished model, since their training had reached its best step by then: "
                   + "; ".join(f"step {p}: {', '.join(m)}" for p, m in gone.items()) + "."))


def readout_heatmap(s: Section, rows: Rows, models: Sequence[tuple[str, int]], style: Style,
                    names: Mapping[tuple[str, int], Mapping[Any, str]] | None = None) -> None:
    """The logit lens's loss (quantity readout, analysis.measures.readout) per layer and step, as the
    distance to final is drawn, for every model with such rows; nothing for the others (`names`: a
    pretrained grid's revision names by point)."""
    grids = [g for o, sd in models if (g := grid(rows, o, sd, "readout", "loss",
                                                  names=(names or {}).get((o, sd)))).values.size]
    made = evolution_heatmaps(grids, style, "readout loss (nats)", "readout loss", vmin=None)
    if made is None:
        return
    from analysis.report.html import figure
    n = sorted({r["n_tokens"] for r in rows if r["quantity"] == "readout"})
    s.add("<h3>What each layer predicts over training (logit lens)</h3>")
    s.add(figure(made[0], made[1], "readout loss per layer and step",
                 "Readout loss per layer and training step: the mean cross-entropy (nats) of the target (LM: the "
                 "next token; MLM: the original token at the first snapshots.mlm_maskings maskings' positions) "
                 "when the layer's states are read through that step's own final norm and output head; lower: the "
                 f"layer already predicts the target. {', '.join(map(str, n))} target rows."))
    for g in grids:
        s.add(details(f"{g.objective} seed {g.seed}: the heat map's numbers (readout loss, nats)",
                      table(("layer", *g.labels()), [(layer, *(_num(v) for v in g.values[i]))
                                                     for i, layer in enumerate(g.layers)])))


def _num(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.3f}"
