"""The report's sections on single tokens: §5 the change between layers, §6 the influence of one token on the others, §7 which properties a layer keeps, §8 t-SNE pictures."""
from __future__ import annotations

from typing import Sequence

from analysis.report import figures, plotting, reference
from analysis.report.criteria import Criteria
from analysis.report.estimates import influence_by_bucket, mean_by, neighbour_rows
from analysis.report.gather import Experiment, _read_json
from analysis.report.html import Section, esc, figure, not_measured, note, para, table
from analysis.report.interactive import LIVE, examples_data, needs_script, tsne_data, view
from analysis.report.sections import BAND_NOTE, BASE, add_figure, curve_ends, depth_note, ordered_models, table_rows
from pipeline.config.layout import part_path
from pipeline.config.pretrained import SEED as PRETRAINED_SEED

TSNE_SETS = {"verbs": ("token", "occurrences of the four verbs, coloured by word (MLM input unmasked)"),
             "verbs_masked": ("token", "MLM with 15% of the input masked as in training: masked occurrences "
                                       "are black crosses"),
             "it": ("position", "occurrences of the position word, coloured by position in the sentence")}


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


def change_section(exp: Experiment, style: plotting.Style, crit: Criteria) -> Section:
    s = Section("change", "Amount of change")
    s.add(para("PWCCA distance between the states of the same tokens at adjacent layers l−1 and l: how much "
               "information the tokens receive in layer l; all tokens, then per frequency bucket."))
    rows = table_rows(s, exp, "change", "amount of change")
    if rows is None:
        return s
    measure = crit.measure if any(r["measure"] == crit.measure for r in rows) else rows[0]["measure"]
    objectives = ordered_models(exp, {r["objective"] for r in rows})
    if any(r["bucket"] == "all" and r["measure"] == measure for r in rows):
        add_figure(s, figures.change_all(rows, objectives, measure, exp.n_layers, style), "change of all tokens",
             f"All tokens, {_sizes([r for r in rows if r['bucket'] == 'all'], 'n_tokens')}; {BAND_NOTE}. "
             f"{depth_note(exp)} (the study gives MT's first and last). {SHUFFLED_NOTE} Log scale.")
    else:
        s.add(not_measured("change of all tokens", "no rows with bucket 'all'"))
    if any(r["bucket"] != "all" for r in rows):
        add_figure(s, figures.change_by_bucket(rows, objectives, measure, style), "change per frequency bucket",
             "Per frequency-rank bucket (dark: frequent, light: rare), every bucket of a model measured with the "
             f"same number of tokens ({_sizes([r for r in rows if r['bucket'] != 'all'], 'n_tokens')}). Study: in MT "
             f"and LM frequent tokens change more; at MLM's top layer rare tokens change most. {SHUFFLED_NOTE} "
             "Log scale.")
        if (gap := _left_out(exp, "change", [r for r in rows if r["bucket"] != "all"])) is not None:
            s.add(note(gap))
    else:
        s.add(not_measured("change per frequency bucket", "no rows with a rank bucket"))
    return s


def influence_section(exp: Experiment, style: plotting.Style, crit: Criteria) -> Section:
    s = Section("influence", "Amount of influence")
    s.add(para("At layer n one token is removed from attention; the influence of a frequency bucket is the PWCCA "
               "distance between the other tokens' layer-n states with and without it, pooled over the bucket's "
               "tokens. Token-dropout variants are drawn beside their base objective. In a causal model the tokens "
               "before the removed one cannot change; counted as pairs they would only dilute the distance, so "
               "there only the later tokens form the pairs (analysis.influence.affected)."))
    rows = table_rows(s, exp, "influence", "amount of influence")
    if rows is None:
        return s
    for label in exp.pretrained:
        part = part_path(exp.cfg, "influence", label, PRETRAINED_SEED).with_suffix(".json")
        reason = (_read_json(part) or {}).get("not_measured")
        if reason:
            s.add(not_measured(f"influence for {label}", reason))
    if not rows:
        return s
    affected = {}
    for r in rows:
        affected.setdefault(str(r.get("affected", "not recorded")), set()).add(r["objective"])
    s.add(note("Tokens affected: " + "; ".join(f"{kind} ({', '.join(ordered_models(exp, objectives))})"
                                               for kind, objectives in sorted(affected.items())) + "."))
    measure = crit.measure if any(r["measure"] == crit.measure for r in rows) else rows[0]["measure"]
    present = {r["objective"] for r in rows}
    layout = [[o for o in (kind, f"{kind}_td") if o in present] for kind in BASE]
    layout = [row for row in layout if row]
    layout += [[o] for o in ordered_models(exp, present) if not any(o in row for row in layout)]
    add_figure(s, figures.influence(rows, layout, measure, style), "influence per frequency bucket",
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


def neighbours_section(exp: Experiment, style: plotting.Style, crit: Criteria) -> Section:
    s = Section("neighbours", "What a layer keeps: nearest neighbours")
    s.add(para("For each query occurrence, its k nearest neighbours among a layer's states: the share with the "
               "same token (identity), the mean position distance among neighbours of the same type (lower: "
               "position kept), and the share whose left / right token equals the query's."))
    rows = table_rows(s, exp, "neighbours", "nearest neighbours")
    if rows is None:
        return s
    rows = neighbour_rows(rows, crit)
    k, metric = rows[0]["k"], rows[0]["metric"]
    objectives = ordered_models(exp, {r["objective"] for r in rows})
    add_figure(s, figures.neighbours(rows, objectives, exp.n_layers, style), "nearest-neighbour properties per layer",
         f"k = {k}, {metric} distance; {BAND_NOTE}. {depth_note(exp)} (the study gives layers 1 and 6).")
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
                body.append((objective, prop, curve_ends(curve), ref))
    s.add(table(("objective", "property", "this run (first → last layer)", "study (1 → 6)"), body))
    explorer(s, exp)
    return s


def explorer(s: Section, exp: Experiment) -> None:
    """The neighbours of single probe occurrences, browsable (table `examples`)."""
    s.add("<h3>Explore: the neighbours of one occurrence</h3>")
    if not LIVE.get():
        s.add(note("Interactive views are off (analysis.report.interactive=false); the examples are in "
                   "metrics/examples.csv."))
        return
    rows = exp.rows("examples") if "examples" in exp.tables else None
    if rows is None:
        why = exp.tables["examples"].missing if "examples" in exp.tables else "the report has no examples table"
        s.add(not_measured("the neighbours explorer", why or ""))
        return
    if not rows:
        s.add(not_measured("the neighbours explorer", "metrics/examples.csv holds no rows"))
        return
    data = examples_data(rows, ordered_models(exp, {r["objective"] for r in rows}))
    s.add(para(f"The study's examples, browsable: pick one of {len(data['queries']):,} occurrences of the probe set's "
               f"most frequent words (a fixed seeded sample, analysis.examples; the same occurrences in every model "
               f"that shares the tokenizer) and a model: its {data['k']} nearest neighbours ({data['metric']}) among "
               "all probe tokens at each layer, each in its sentence, lit where it shares the query's token (T), "
               "position (P), left (L) or right (R) token. The first seed of each model; metrics/examples.csv."))
    s.add(view("neighbours", data, "neighbours explorer"), needs_script("The neighbours explorer"))


def tsne_section(exp: Experiment, style: plotting.Style) -> Section:
    s = Section("tsne", "Pictures: t-SNE")
    s.add(para("Two-dimensional t-SNE maps of a few words' occurrences, a row per objective and a column per "
               "layer; the first seed of each objective (maps of different runs are not aligned)."))
    rows = table_rows(s, exp, "tsne", "t-SNE pictures")
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
        objectives = ordered_models(exp, first_seed)
        s.add(f"<h3>{esc(name)}</h3>")
        made = figures.tsne_grid(mine, objectives, layers, colour_by, int(settings.tsne_max_points), style)
        data = tsne_data(name, [r for r in mine if r["layer"] in layers], objectives, colour_by,
                         int(settings.tsne_max_points))
        s.add(figure(made[0], made[1], f"t-SNE of {name}",
                     f"{what}. Seeds: " + ", ".join(f"{o} {first_seed[o]}" for o in objectives) + ". Interactive: "
                     "pick the model and the layer; hover on a point for its token, position, masking and sentence.",
                     view("tsne", data, f"t-SNE of {name}, interactive")))
    return s
