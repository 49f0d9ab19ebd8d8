"""The report's measurement sections (METHODS.md §3–§8): each reads its metric table from the
`Experiment`, draws its figures and tables, and says "not measured" (and why) for whatever is absent."""
from __future__ import annotations

import math

from typing import Sequence

from omegaconf import OmegaConf

from pipeline.config.grid import INIT

from analysis.report import reference
from analysis.report import figures
from analysis.report.claims import Criteria
from analysis.report.estimates import influence_by_bucket, main_clusters, mean_by, neighbour_rows
from analysis.report.gather import Experiment, _read_json
from analysis.report.html import Section, details, esc, figure, note, not_measured, para, pre, table
from analysis.io.tables import DIFFERENT_INIT, INIT_PAIR, PRETRAINED_PAIR, SAME_INIT, SEED_BASELINE

BASE = ("mt", "lm", "mlm")
TSNE_SETS = {"verbs": ("token", "occurrences of the four verbs, coloured by word (MLM input unmasked)"),
             "verbs_masked": ("token", "MLM with 15% of the input masked as in training: masked occurrences "
                                       "are black crosses"),
             "it": ("position", "occurrences of the position word, coloured by position in the sentence")}


def _rows(section: Section, exp: Experiment, name: str, what: str) -> list[dict] | None:
    """The rows of table `name` with the measurement's settings shown (analysis.<name>, as the
    resolved config has them); or None with a "not measured" note when the table is absent."""
    rows = exp.rows(name)
    if rows is None:
        section.add(not_measured(what, exp.tables[name].missing or ""))
    elif name in exp.cfg.analysis:
        yaml = OmegaConf.to_yaml(exp.cfg.analysis[name], resolve=True)
        section.add(details(f"Settings (analysis.{name})", pre(yaml)))
    return rows


def _fig(section: Section, made: tuple[bytes, str] | None, alt: str, caption: str) -> None:
    if made is not None:
        section.add(figure(made[0], made[1], alt, caption))


def _ordered(exp: Experiment, present) -> list[str]:
    present = set(present)
    return [o for o in exp.objectives if o in present] + sorted(present - set(exp.objectives))


def _depth_note(exp: Experiment) -> str:
    if exp.n_layers == reference.STUDY_LAYERS:
        return "Dashed: the study's values."
    return (f"Dashed: the study's values; its 6 layers are drawn at relative depth on this run's "
            f"{exp.n_layers} (study layer l at l × {exp.n_layers}/6).")


def _ends(curve: dict) -> str:
    values = list(curve.values())
    return f"{values[0]:.3f} → {values[-1]:.3f}" if values else "—"


# ---------------------------------------------------------------- §3 mutual information

# How every layer-wise figure draws its seeds and intervals (analysis.figures.spread).
BAND_NOTE = "band: the seeds' values and their 95% bootstrap intervals, thin lines: each seed"


def _restarts(rows) -> str:
    """How many k-means restarts the rows' means are over (from the spread column: nan for one)."""
    many = any(math.isfinite(float(r.get("mi_sd") if r.get("mi_sd") is not None else math.nan)) for r in rows)
    return "each value the mean of the k-means restarts, analysis.mi.restarts" if many else "one k-means clustering"


def mi_section(exp: Experiment, style: figures.Style, crit: Criteria) -> Section:
    s = Section("mi", "Mutual information with the input and the output")
    s.add(para("Plug-in MI (nats) between k-means clusters of a layer's states and a label; the chance level "
               "is the same estimate with the labels shuffled, and the corrected MI is their difference. "
               "Targets: input (the token itself), output (LM: the next token; MLM: the original "
               "token where the input was masked or replaced), input_masked (MLM's masked input)."))
    rows = _rows(s, exp, "mi", "mutual information")
    if rows is None:
        return s
    k = main_clusters(rows, crit)
    main = [r for r in rows if r["n_clusters"] == k]
    targets = {(r["objective"], r["target"]) for r in main}
    inputs = [(o, "input") for o in _ordered(exp, {o for o, t in targets if t == "input"})]
    outputs = [(o, t) for o in _ordered(exp, {o for o, _ in targets}) for t in ("input_masked", "output")
               if (o, t) in targets]
    if inputs:  # the untrained stack (init) is drawn in every trained objective's panel, not in its own
        drawn = [(o, t) for o, t in inputs if o != INIT] or inputs
        _fig(s, figures.mi_panels(main, drawn, k, exp.n_layers, style), "MI with the input per layer",
             f"MI with the input token, {k} clusters ({_restarts(main)}); {BAND_NOTE}. Grey dashed: the untrained stack of "
             f"the same seeds (init), what the architecture and the initialisation alone keep. {_depth_note(exp)} "
             "The study's values are plug-in estimates without a chance correction.")
    else:
        s.add(not_measured("MI with the input", f"no rows with target input and {k} clusters"))
    for objective, target in (("lm", "output"), ("mlm", "output"), ("mlm", "input_masked")):
        if objective in exp.objectives and (objective, target) not in targets:
            s.add(not_measured(f"{objective} {target} MI", f"no rows in metrics/mi.csv with {k} clusters"))
    if outputs:
        _fig(s, figures.mi_panels(main, outputs, k, exp.n_layers, style), "MI with the output per layer",
             f"MLM's masked input and the output label (LM: next token; MLM: the original token at masked "
             f"positions), {k} clusters. {_depth_note(exp)}")
    swept = [(o, t) for o, t in [*inputs, *outputs]
             if len({r["n_clusters"] for r in rows if r["objective"] == o and r["target"] == t}) > 1]
    if swept:
        _fig(s, figures.mi_sweep(rows, swept, style), "MI per number of clusters",
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
                     _ends(plug), _ends(chance), _ends(corr)))
    s.add(table(("objective", "target", "study (plug-in)", "this run: plug-in", "chance", "corrected"), body,
                caption="First → last layer, seed means"))
    return s


# ---------------------------------------------------------------- §4 distances between tasks

def similarity_section(exp: Experiment, style: figures.Style, crit: Criteria) -> Section:
    s = Section("similarity", "Distances between tasks")
    s.add(para("Layer l of one objective against layer l of another, on the same tokens: PWCCA distance "
               "(1 − projection-weighted mean canonical correlation), with SVCCA and linear CKA beside it. "
               "Cross-task pairs of the same seed share their initialisation, the study's design: only the "
               "objective differs (pair same_init; the claim reads these). Pairs of different seeds "
               "(different_init) differ by their initialisation too and are shown beside them. Same-objective "
               "pairs with different seeds are the seed baselines; the untrained stack of each seed (init) "
               "against a trained model of that seed is how far training moved it."))
    rows = _rows(s, exp, "similarity", "distances between tasks")
    if rows is None:
        return s
    measures = [m for m in ("pwcca", "svcca", "cka") if any(r["measure"] == m for r in rows)]
    measures += sorted({r["measure"] for r in rows} - set(measures))
    own = [r for r in rows if r["pair"] != PRETRAINED_PAIR]
    main = [r for r in rows if r["measure"] == (crit.measure if crit.measure in measures else measures[0])]
    if own:
        _own_pairs(s, exp, style, own, measures, [r for r in main if r["pair"] != PRETRAINED_PAIR])
    pretrained_pairs(s, exp, main)
    return s


def _own_pairs(s: Section, exp: Experiment, style: figures.Style, rows: Sequence[dict], measures: list[str],
               main: Sequence[dict]) -> None:
    present = {r["objective_a"] for r in rows} | {r["objective_b"] for r in rows}
    pairs = [(a, b) for a, b in (("mt", "mlm"), ("lm", "mt"), ("lm", "mlm")) if a in present and b in present]
    _fig(s, figures.similarity(rows, measures, pairs, exp.n_layers, style), "distance between tasks per layer",
         "Cross-task distances between models of the same seed, i.e. the same initialisation (solid; "
         f"{BAND_NOTE}), between models of different seeds (thin dash-dotted), seed baselines: one "
         "objective, two seeds (grey dotted), and the untrained stacks of two seeds (grey dashed). "
         f"{_depth_note(exp)} Grey area: the study's seed baselines (.26–.37).")
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

    objectives = _ordered(exp, {r[side] for r in rows for side in ("objective_a", "objective_b")} - {INIT})
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


# ---------------------------------------------------------------- §5 change, §6 influence

SHUFFLED_NOTE = ("Dotted, in the same colour: the no-correspondence level, the same distance at the same n with "
                 "one view's rows shuffled (one seeded permutation). CCA-family distances of unrelated "
                 "views read well below 1 at finite n; a distance means something only against this level.")


def _left_out(exp: Experiment, name: str, rows: Sequence[dict]) -> str | None:
    """Which buckets each model's `name` part left out, with their n and the floor (from the parts'
    records); buckets absent from the rows that no record names are listed as not recorded."""
    edges = [int(e) for e in exp.cfg.analysis.buckets]
    configured = [f"{lo}-{hi}" for lo, hi in zip(edges, edges[1:])]
    record = exp.tables[name].record or {}
    reasons: dict[tuple[str, str], list[str]] = {}
    for part in record.get("parts") or []:
        for gone in part.get("left_out") or []:
            reasons.setdefault((gone["bucket"], gone["reason"]), []).append(str(part.get("model", "?")))
    models = {f"{r['objective']}/seed{r['seed']}" for r in rows}
    named = {bucket for bucket, _ in reasons}
    parts = []
    for (bucket, why), who in sorted(reasons.items(), key=lambda kv: configured.index(kv[0][0])
                                     if kv[0][0] in configured else len(configured)):
        whom = "every model" if set(who) >= models else ", ".join(sorted(who))
        parts.append(f"{bucket}: {why} ({whom})")
    present = {r["bucket"] for r in rows}
    unrecorded = [b for b in configured if b not in present and b not in named]
    if unrecorded:
        parts.append(f"{', '.join(unrecorded)}: no tokens in the probe set, or not recorded")
    if not parts:
        return None
    need = f"at least analysis.min_samples_per_dim = {exp.cfg.analysis.min_samples_per_dim} samples per feature"
    if name == "influence":
        need += (f" from at least analysis.influence.min_influencers = {exp.cfg.analysis.influence.min_influencers} "
                 "influencing tokens")
    return f"Buckets left out (each estimate needs {need}): " + "; ".join(parts) + "."


def _sizes(rows: Sequence[dict], key: str) -> str:
    """'n = 5,564' or 'n = 1,300–5,564' over the rows' sample sizes `key`."""
    sizes = sorted({int(r[key]) for r in rows if r.get(key) is not None})
    if not sizes:
        return "n not recorded"
    return f"n = {sizes[0]:,}" if len(sizes) == 1 else f"n = {sizes[0]:,}–{sizes[-1]:,}"


def change_section(exp: Experiment, style: figures.Style, crit: Criteria) -> Section:
    s = Section("change", "Amount of change")
    s.add(para("PWCCA distance between the states of the same tokens at adjacent layers l−1 and l: how much "
               "information the tokens receive in layer l; all tokens, then per frequency bucket."))
    rows = _rows(s, exp, "change", "amount of change")
    if rows is None:
        return s
    measure = crit.measure if any(r["measure"] == crit.measure for r in rows) else rows[0]["measure"]
    objectives = _ordered(exp, {r["objective"] for r in rows})
    if any(r["bucket"] == "all" and r["measure"] == measure for r in rows):
        _fig(s, figures.change_all(rows, objectives, measure, exp.n_layers, style), "change of all tokens",
             f"All tokens, {_sizes([r for r in rows if r['bucket'] == 'all'], 'n_tokens')}; {BAND_NOTE}. "
             f"{_depth_note(exp)} (the study gives MT's first and last). {SHUFFLED_NOTE} Log scale.")
    else:
        s.add(not_measured("change of all tokens", "no rows with bucket 'all'"))
    if any(r["bucket"] != "all" for r in rows):
        _fig(s, figures.change_by_bucket(rows, objectives, measure, style), "change per frequency bucket",
             "Per frequency-rank bucket (dark: frequent, light: rare), every bucket of a model measured with the "
             f"same number of tokens ({_sizes([r for r in rows if r['bucket'] != 'all'], 'n_tokens')}). Study: in MT "
             f"and LM frequent tokens change more; at MLM's top layer rare tokens change most. {SHUFFLED_NOTE} "
             "Log scale.")
        if (gap := _left_out(exp, "change", [r for r in rows if r["bucket"] != "all"])) is not None:
            s.add(note(gap))
    else:
        s.add(not_measured("change per frequency bucket", "no rows with a rank bucket"))
    return s


def influence_section(exp: Experiment, style: figures.Style, crit: Criteria) -> Section:
    s = Section("influence", "Amount of influence")
    s.add(para("At layer n one token is removed from attention; the influence of a frequency bucket is the PWCCA "
               "distance between the other tokens' layer-n states with and without it, pooled over the bucket's "
               "tokens. Token-dropout variants are drawn beside their base objective. In a causal model the tokens "
               "before the removed one cannot change; counted as pairs they would only dilute the distance, so "
               "there only the later tokens form the pairs (analysis.influence.affected)."))
    rows = _rows(s, exp, "influence", "amount of influence")
    if rows is None:
        return s
    for label in exp.pretrained:
        part = exp.results / "metrics" / "influence" / label / "seed0.json"
        reason = (_read_json(part) or {}).get("not_measured")
        if reason:
            s.add(not_measured(f"influence for {label}", reason))
    if not rows:
        return s
    affected = {}
    for r in rows:
        affected.setdefault(str(r.get("affected", "not recorded")), set()).add(r["objective"])
    s.add(note("Tokens affected: " + "; ".join(f"{kind} ({', '.join(_ordered(exp, objectives))})"
                                               for kind, objectives in sorted(affected.items())) + "."))
    measure = crit.measure if any(r["measure"] == crit.measure for r in rows) else rows[0]["measure"]
    present = {r["objective"] for r in rows}
    layout = [[o for o in (kind, f"{kind}_td") if o in present] for kind in BASE]
    layout = [row for row in layout if row]
    layout += [[o] for o in _ordered(exp, present) if not any(o in row for row in layout)]
    _fig(s, figures.influence(rows, layout, measure, style), "influence per frequency bucket",
         f"Influence per rank bucket (frequent → rare), one line per layer; {BAND_NOTE}; every bucket of a "
         f"model measured with the same number of pairs ({_sizes(rows, 'n_pairs')}). Study: at layer 1 MT's "
         f"rarest bucket ≈ .006 against ≤ .002 for the others; with token dropout the excess disappears. "
         f"{SHUFFLED_NOTE} Log scale.")
    if (gap := _left_out(exp, "influence", rows)) is not None:
        s.add(note(gap))
    body = []
    for objective in [o for row in layout for o in row]:
        layer, means = influence_by_bucket(rows, objective, crit)
        if means:
            values = list(means.values())
            body.append((objective, layer, list(means)[-1], values[-1], max(values[:-1], default=None)))
    body.append(("mt (study)", 1, "rarest", reference.INFLUENCE_MT_LAYER1["rarest"],
                 reference.INFLUENCE_MT_LAYER1["others_at_most"]))
    s.add(table(("objective", "layer", "rarest bucket", "its influence", "largest other bucket"), body,
                caption="The lowest measured layer, seed means"))
    return s


# ---------------------------------------------------------------- §7 neighbours, §8 t-SNE

def neighbours_section(exp: Experiment, style: figures.Style, crit: Criteria) -> Section:
    s = Section("neighbours", "What a layer keeps: nearest neighbours")
    s.add(para("For each query occurrence, its k nearest neighbours among a layer's states: the share with the "
               "same token (identity), the mean position distance among neighbours of the same type (lower: "
               "position kept), and the share whose left / right token equals the query's."))
    rows = _rows(s, exp, "neighbours", "nearest neighbours")
    if rows is None:
        return s
    rows = neighbour_rows(rows, crit)
    k, metric = rows[0]["k"], rows[0]["metric"]
    objectives = _ordered(exp, {r["objective"] for r in rows})
    _fig(s, figures.neighbours(rows, objectives, exp.n_layers, style), "nearest-neighbour properties per layer",
         f"k = {k}, {metric} distance; {BAND_NOTE}. {_depth_note(exp)} (the study gives layers 1 and 6).")
    missing = [p for p in figures.PROPERTIES if not any(r["property"] == p for r in rows)]
    if missing:
        s.add(not_measured(", ".join(missing), "no rows for these properties"))
    body = []
    for objective in objectives:
        for prop in figures.PROPERTIES:
            curve = mean_by(rows, "layer", "value", objective=objective, property=prop)
            study = reference.NEIGHBOURS.get((objective, prop))
            if curve:
                ref = f"{study.values[0]} → {study.values[-1]}" if study else "—"
                body.append((objective, prop, _ends(curve), ref))
    s.add(table(("objective", "property", "this run (first → last layer)", "study (1 → 6)"), body))
    return s


def tsne_section(exp: Experiment, style: figures.Style) -> Section:
    s = Section("tsne", "Pictures: t-SNE")
    s.add(para("Two-dimensional t-SNE maps of a few words' occurrences, a row per objective and a column per "
               "layer; the first seed of each objective (maps of different runs are not aligned)."))
    rows = _rows(s, exp, "tsne", "t-SNE pictures")
    if rows is None:
        return s
    settings = exp.cfg.analysis.report
    for name, (colour_by, what) in [*TSNE_SETS.items(), *[(n, ("token", n)) for n in
                                                          sorted({r["set"] for r in rows} - set(TSNE_SETS))]]:
        mine = [r for r in rows if r["set"] == name]
        if not mine:
            s.add(not_measured(f"t-SNE set {name}", "no rows in metrics/tsne.csv"))
            continue
        first_seed = {o: min(r["seed"] for r in mine if r["objective"] == o) for o in {r["objective"] for r in mine}}
        mine = [r for r in mine if r["seed"] == first_seed[r["objective"]]]
        present = sorted({r["layer"] for r in mine})
        layers = [int(x) for x in settings.tsne_layers] if settings.tsne_layers is not None else present
        objectives = _ordered(exp, first_seed)
        s.add(f"<h3>{esc(name)}</h3>")
        _fig(s, figures.tsne_grid(mine, objectives, layers, colour_by, int(settings.tsne_max_points), style),
             f"t-SNE of {name}", f"{what}. Seeds: " + ", ".join(f"{o} {first_seed[o]}" for o in objectives) + ".")
    return s


def measurement_sections(exp: Experiment, style: figures.Style, crit: Criteria) -> list[Section]:
    return [mi_section(exp, style, crit), similarity_section(exp, style, crit), change_section(exp, style, crit),
            influence_section(exp, style, crit), neighbours_section(exp, style, crit), tsne_section(exp, style)]

