"""The report's measurement sections (METHODS.md §3–§8): each reads its metric table from the
`Experiment`, draws its figures and tables, and says "not measured" (and why) for whatever is absent."""
from __future__ import annotations

import math
from typing import Sequence

from omegaconf import OmegaConf

from analysis.io.tables import DIFFERENT_INIT, INIT_PAIR, PRETRAINED_PAIR, SAME_INIT, SEED_BASELINE
from analysis.report import figures, plotting, reference
from analysis.report.criteria import Criteria
from analysis.report.estimates import main_clusters, mean_by
from analysis.report.gather import Experiment
from analysis.report.html import Section, details, figure, not_measured, note, para, pre, table
from analysis.report.interactive import matrix_data, view
from pipeline.config.grid import INIT

BASE = ("mt", "lm", "mlm")


def table_rows(section: Section, exp: Experiment, name: str, what: str) -> list[dict] | None:
    """The rows of table `name` with the measurement's settings shown (analysis.<name>, as the
    resolved config has them); or None with a "not measured" note when the table is absent."""
    rows = exp.rows(name)
    if rows is None:
        section.add(not_measured(what, exp.tables[name].missing or ""))
    elif name in exp.cfg.analysis:
        yaml = OmegaConf.to_yaml(exp.cfg.analysis[name], resolve=True)
        section.add(details(f"Settings (analysis.{name})", pre(yaml)))
    return rows


def add_figure(section: Section, made: tuple[bytes, str] | None, alt: str, caption: str) -> None:
    """The figure `made` (plotting.render), with its curves' live view when it recorded any: hover for each
    value, its interval, seed and n; seeds toggled."""
    if made is not None:
        spec = getattr(made, "live", None)
        live = view("curves", spec, f"{alt} (interactive)") if spec else ""
        section.add(figure(made[0], made[1], alt, caption, live))


def ordered_models(exp: Experiment, present) -> list[str]:
    present = set(present)
    return [o for o in exp.objectives if o in present] + sorted(present - set(exp.objectives))


def depth_note(exp: Experiment) -> str:
    if exp.n_layers == reference.STUDY_LAYERS:
        return "Dashed: the study's values."
    return (f"Dashed: the study's values; its 6 layers are drawn at relative depth on this run's "
            f"{exp.n_layers} (study layer l at l × {exp.n_layers}/6).")


def curve_ends(curve: dict) -> str:
    values = list(curve.values())
    return f"{values[0]:.3f} → {values[-1]:.3f}" if values else "—"


# ---------------------------------------------------------------- §3 mutual information

# How every layer-wise figure draws its seeds and intervals (analysis.plotting.spread).
BAND_NOTE = "band: the seeds' values and their 95% bootstrap intervals, thin lines: each seed"


def _restarts(rows) -> str:
    """How many k-means restarts the rows' means are over (from the spread column: nan for one)."""
    many = any(math.isfinite(float(r.get("mi_sd") if r.get("mi_sd") is not None else math.nan)) for r in rows)
    return "each value the mean of the k-means restarts, analysis.mi.restarts" if many else "one k-means clustering"


def mi_section(exp: Experiment, style: plotting.Style, crit: Criteria) -> Section:
    s = Section("mi", "Mutual information with the input and the output")
    s.add(para("Plug-in MI (nats) between k-means clusters of a layer's states and a label; the chance level "
               "is the same estimate with the labels shuffled, and the corrected MI is their difference. "
               "Targets: input (the token itself), output (LM: the next token; MLM: the original "
               "token where the input was masked or replaced), input_masked (MLM's masked input)."))
    rows = table_rows(s, exp, "mi", "mutual information")
    if rows is None:
        return s
    k = main_clusters(rows, crit)
    main = [r for r in rows if r["n_clusters"] == k]
    targets = {(r["objective"], r["target"]) for r in main}
    inputs = [(o, "input") for o in ordered_models(exp, {o for o, t in targets if t == "input"})]
    outputs = [(o, t) for o in ordered_models(exp, {o for o, _ in targets}) for t in ("input_masked", "output")
               if (o, t) in targets]
    if inputs:  # the untrained stack (init) is drawn in every trained objective's panel, not in its own
        drawn = [(o, t) for o, t in inputs if o != INIT] or inputs
        add_figure(s, figures.mi_panels(main, drawn, k, exp.n_layers, style), "MI with the input per layer",
             f"MI with the input token, {k} clusters ({_restarts(main)}); {BAND_NOTE}. Grey dashed: the untrained stack of "
             f"the same seeds (init), what the architecture and the initialisation alone keep. {depth_note(exp)} "
             "The study's values are plug-in estimates without a chance correction.")
    else:
        s.add(not_measured("MI with the input", f"no rows with target input and {k} clusters"))
    for objective, target in (("lm", "output"), ("mlm", "output"), ("mlm", "input_masked")):
        if objective in exp.objectives and (objective, target) not in targets:
            s.add(not_measured(f"{objective} {target} MI", f"no rows in metrics/mi.csv with {k} clusters"))
    if outputs:
        add_figure(s, figures.mi_panels(main, outputs, k, exp.n_layers, style), "MI with the output per layer",
             f"MLM's masked input and the output label (LM: next token; MLM: the original token at masked "
             f"positions), {k} clusters. {depth_note(exp)}")
    swept = [(o, t) for o, t in [*inputs, *outputs]
             if len({r["n_clusters"] for r in rows if r["objective"] == o and r["target"] == t}) > 1]
    if swept:
        add_figure(s, figures.mi_sweep(rows, swept, style), "MI per number of clusters",
             "The cluster sweep: corrected MI (solid) and chance level (dotted) for each number of clusters. "
             "The plug-in estimate grows with the clusters; the corrected one should move much less. With the "
             "input, the largest count is at least the number of token types measured (analysis.mi.top_types): "
             "how far the curve moves up to it shows what too few clusters cost.")
    else:
        s.add(note("No cluster sweep: every row has the same number of clusters."))
    body = []
    for objective, target in [*inputs, *outputs]:
        plug = mean_by(main, "layer", "mi", objective=objective, target=target)
        corr = mean_by(main, "layer", "mi_corrected", objective=objective, target=target)
        chance = mean_by(main, "layer", "mi_shuffled", objective=objective, target=target)
        study = reference.MI.get((objective, target))
        body.append((objective, target, f"{study.values[0]:.2f} → {study.values[-1]:.2f}" if study else "—",
                     curve_ends(plug), curve_ends(chance), curve_ends(corr)))
    s.add(table(("objective", "target", "study (plug-in)", "this run: plug-in", "chance", "corrected"), body,
                caption="First → last layer, seed means"))
    return s


# ---------------------------------------------------------------- §4 distances between tasks

def similarity_section(exp: Experiment, style: plotting.Style, crit: Criteria) -> Section:
    s = Section("similarity", "Distances between tasks")
    s.add(para("Layer l of one objective against layer l of another, on the same tokens: PWCCA distance "
               "(1 − projection-weighted mean canonical correlation), with SVCCA and linear CKA beside it. "
               "Cross-task pairs of the same seed share their initialisation, the study's design: only the "
               "objective differs (pair same_init; the claim reads these). Pairs of different seeds "
               "(different_init) differ by their initialisation too and are shown beside them. Same-objective "
               "pairs with different seeds are the seed baselines; the untrained stack of each seed (init) "
               "against a trained model of that seed is how far training moved it."))
    rows = table_rows(s, exp, "similarity", "distances between tasks")
    if rows is None:
        return s
    measures = [m for m in ("pwcca", "svcca", "cka") if any(r["measure"] == m for r in rows)]
    measures += sorted({r["measure"] for r in rows} - set(measures))
    own = [r for r in rows if r["pair"] != PRETRAINED_PAIR]
    main = [r for r in rows if r["measure"] == (crit.measure if crit.measure in measures else measures[0])]
    if own:
        _own_pairs(s, exp, style, own, measures, [r for r in main if r["pair"] != PRETRAINED_PAIR])
    pretrained_pairs(s, exp, main)
    model_matrix(s, exp, main)
    return s


def model_matrix(s: Section, exp: Experiment, rows: Sequence[dict]) -> None:
    """Every pair of models at one layer (step), with an MDS map beside it: interactive, and the last layer's
    matrix as a table for print and for a reader without scripts."""
    models = sorted({(r[f"objective_{x}"], int(r[f"seed_{x}"])) for r in rows for x in "ab"},
                    key=lambda m: (exp.objectives.index(m[0]) if m[0] in exp.objectives else len(exp.objectives),
                                   m[0], m[1]))
    if len(models) < 2:
        return
    label = {m: m[0] if m[0] in exp.pretrained else f"{m[0]} {m[1]}" for m in models}
    floor = {m: int(exp.cfg.analysis.min_samples_per_dim) * int((exp.dumps.get(m) or {}).get("d_model") or 0)
             for m in models}
    unit = "probe token or word" if exp.pretrained else "probe token"
    data = matrix_data(rows, rows[0]["measure"], models, label, floor, plotting.COLOURS,
                       "relative depth step" if exp.pretrained else "layer", unit)
    s.add("<h3>Every pair of models</h3>")
    s.add(para(f"The {data['measure']} distance between every two models of the experiment at one "
               f"{data['depth']}, trained, control and pretrained alike, and a classical MDS map of them (models "
               "close on the map have close representations at that layer). A pair with no row, a distance that is "
               "not a number, or fewer shared rows than analysis.min_samples_per_dim asks of the two widths is "
               "missing (×), never a number; hover on a cell for its interval and n."))
    last = str(data["layers"][-1])
    static = table([""] + data["models"], [[name] + [("—" if c[0] is None else f"{c[0]:.3f}") if i != j else ""
                                                      for j, c in enumerate(data["cells"][last][i])]
                                           for i, name in enumerate(data["models"])],
                   caption=f"{data['measure']} distance at {data['depth']} {last} (—: missing)")
    s.add(f'<figure><div class="static">{static}</div>{view("matrix", data, "model by model distances")}'
          "<figcaption>Pick the layer; the map leaves out the models with missing pairs and gives its stress "
          "(Kruskal's stress-1: how far the map's distances are from the table's).</figcaption></figure>")


def _own_pairs(s: Section, exp: Experiment, style: plotting.Style, rows: Sequence[dict], measures: list[str],
               main: Sequence[dict]) -> None:
    present = {r["objective_a"] for r in rows} | {r["objective_b"] for r in rows}
    pairs = [(a, b) for a, b in (("mt", "mlm"), ("lm", "mt"), ("lm", "mlm")) if a in present and b in present]
    add_figure(s, figures.similarity(rows, measures, pairs, exp.n_layers, style), "distance between tasks per layer",
         "Cross-task distances between models of the same seed, i.e. the same initialisation (solid; "
         f"{BAND_NOTE}), between models of different seeds (thin dash-dotted), seed baselines: one "
         "objective, two seeds (grey dotted), and the untrained stacks of two seeds (grey dashed). "
         f"{depth_note(exp)} Grey area: the study's seed baselines (.26–.37).")
    if not any(r["pair"] == SEED_BASELINE for r in rows):
        s.add(not_measured("seed baselines", "no same-objective pair: the grid needs two seeds of an objective"))
    if not any(r["pair"] == SAME_INIT for r in rows):
        s.add(not_measured("cross-task distances of the same initialisation",
                           "no two objectives share a seed in workflow.seeds"))
    layers = sorted({r["layer"] for r in main})
    body = [[kind, label] + [means.get(layer) for layer in layers]
            for kind, label, means in _pair_means(exp, main)]
    if body:
        s.add(table(["pair", "models"] + [f"layer {layer}" for layer in layers], body,
                    caption=f"{main[0]['measure'].upper()} per layer, means over seeds (init–X: the untrained stack "
                            "against X of the same seed)"))


def pretrained_pairs(s: Section, exp: Experiment, rows: Sequence[dict]) -> None:
    """The distances of every pair with a pretrained model: per layer step, each model's own layer, the
    distance with its interval and the no-correspondence level; how the rows were matched."""
    pairs = [r for r in rows if r["pair"] == PRETRAINED_PAIR]
    if not pairs:
        return
    record = exp.tables["similarity"].record or {}
    part = (record.get("levels") or {}).get("pretrained") or {  # older records: one level for every pair
        "level": record.get("level", "token"), "word_state": record.get("word_state"), "rows": record.get("n_common")}
    level, how, n = part.get("level", "token"), part.get("word_state"), part.get("rows")
    depths = record.get("depths") or {}
    s.add(para(
        "Pairs with a pretrained model (pair pretrained). Its tokenizer is not ours, so the rows are words, not "
        f"tokens: the {n if n is not None else '?':,} probe words every model holds (whitespace-separated words "
        f"of the probe sentences), each word's state {'its first subword' if how == 'first' else 'the mean of its subwords'}"
        " (pretrained.word_state), every distance over the same seeded subset of them. These models differ in "
        "data, size and architecture as well as in objective: a distance between them is not the objective's "
        "effect alone. The pairs of two models trained here compare their token occurrences, layer by layer, as "
        "they would without a pretrained model." if level == "word" else "Pairs with a pretrained model (pair "
        "pretrained)."))
    if len(set(depths.values())) > 1:
        s.add(note("Models of different depths (" + ", ".join(f"{m} {d}" for m, d in depths.items()) + ") are "
                   "compared at the same relative depth: step l of the shallowest model's L_min layers is layer "
                   "round(l × L / L_min) of a model of L layers; each cell gives both layers."))
    steps = sorted({r["layer"] for r in pairs})
    body = []
    for (a, sa, b, sb) in dict.fromkeys((r["objective_a"], r["seed_a"], r["objective_b"], r["seed_b"]) for r in pairs):
        cells = {r["layer"]: r for r in pairs if (r["objective_a"], r["seed_a"], r["objective_b"], r["seed_b"]) == (a, sa, b, sb)}
        body.append([f"{a}–{b}" + ("" if a in exp.pretrained and b in exp.pretrained else f" (seed {sa if b in exp.pretrained else sb})")]
                    + [_pair_cell(cells[step]) if step in cells else "—" for step in steps])
    s.add(table(["pair"] + [f"step {step}" for step in steps], body,
                caption=f"{rows[0]['measure'].upper()} distance [95% interval] (layer of a / layer of b; shuffled: the "
                        f"no-correspondence level at the same n = {pairs[0]['n_tokens']:,} {level}s)"))


def _pair_cell(r: dict) -> str:
    interval = "" if math.isnan(r.get("ci_low", math.nan)) else f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
    return (f"{r['distance']:.3f}{interval} ({r.get('layer_a', r['layer'])}/{r.get('layer_b', r['layer'])}; "
            f"shuffled {r['shuffled']:.3f})")


def _pair_means(exp: Experiment, rows: Sequence[dict]) -> list[tuple[str, str, dict]]:
    """(pair kind, which models, mean distance per layer) of every group of similarity rows the report
    shows: each cross-task pair of the same, then of different initialisations (the study's values
    after the first when the rows are PWCCA), the seed baselines, the untrained stack against each
    trained objective of its seed and the untrained stacks of two seeds."""
    def means(kind: str, a: str, b: str, same_seed: bool = False) -> dict:
        pool = [r for r in rows if r["pair"] == kind and sorted((r["objective_a"], r["objective_b"])) == sorted((a, b))
                and (not same_seed or r["seed_a"] == r["seed_b"])]
        return mean_by(pool, "layer", "distance")

    objectives = ordered_models(exp, {r[side] for r in rows for side in ("objective_a", "objective_b")} - {INIT})
    out = []
    for i, a in enumerate(objectives):
        for b in objectives[i + 1:]:
            for kind in (SAME_INIT, DIFFERENT_INIT):
                if curve := means(kind, a, b):
                    out.append((kind, f"{a}–{b}", curve))
                study = reference.PWCCA.get(reference.pair_key(a, b))
                if kind == SAME_INIT and curve and study is not None and rows[0]["measure"] == "pwcca":
                    ref = dict(zip(study.layers, study.values)) if exp.n_layers == reference.STUDY_LAYERS else {}
                    out.append(("study", f"{a}–{b}", ref))
    out += [(SEED_BASELINE, f"{o} seeds", curve) for o in objectives if (curve := means(SEED_BASELINE, o, o))]
    out += [(INIT_PAIR, f"init–{o}", curve) for o in objectives if (curve := means(INIT_PAIR, INIT, o, True))]
    if curve := means(INIT_PAIR, INIT, INIT):
        out.append((INIT_PAIR, "init seeds", curve))
    return out
