"""The study's seven conclusions (METHODS.md §9) checked against this run's metric tables.

Each check reads the tables (name -> typed rows as `analysis.report.gather.load_table` reads them, each row with
its bootstrap replicates; None when a table is missing) and the `Criteria`, and states every part of its
claim as contrasts: differences of estimates made on the same probe sentences, whose intervals come from
their paired replicates (analysis.stats.verdicts). A part holds when the claimed direction holds beyond its
contrasts' intervals in every seed, does not hold when the opposite does in every seed, and is
inconclusive otherwise (the seeds disagree, or a contrast is within its interval or has none); the
intervals of one claim are Bonferroni-corrected over the contrasts it reads in one seed (level
1 - 0.05 / m). A claim holds when every part holds, does not hold when one part does not, is not measured
when a part lacks its data. Seed by seed: a contrast between two objectives pairs the models of one seed
(the same initialisation); a table made with resamples switched off is read on its point estimates, and
the verdict says so. The "this run" numbers are seed means, for reading only: no verdict rests on them.
MI is the corrected MI (and, where said, the plug-in MI) at `analysis.mi.n_clusters` clusters when
measured, else at the most used count. The parts, one list per claim:

1. LM, every seed: input MI falls with depth (corrected, and plug-in): no step from a layer to the next
   rises by more than `mi_tolerance` beyond its interval, and the first layer lies above the last beyond
   its interval; next-token MI rises: the last layer above the first by more than `mi_tolerance`
   (corrected, and plug-in).
2. MLM, every seed: input MI falls, then rises (corrected, and plug-in): some inner layer lies below both
   the first and the last layer by more than `mi_tolerance` beyond the intervals (does not hold when every
   inner layer lies above an end, within the tolerance, beyond its interval).
3. MT, every seed: input MI falls from the first to the last layer by more than `mi_tolerance` (corrected,
   and plug-in); the last layer keeps more than `mt_keep_share` of the first layer's corrected MI, and a
   larger share than LM's of the same seed; MT's all-token change, averaged over the transitions, is below
   LM's and below MLM's.
4. Similarity (`measure`, PWCCA by default), layers >= 1, pairs of two objectives among mt, lm, mlm of the
   same seed (the same initialisation: rows of pair same_init; the different-initialisation pairs are
   shown beside them, not read): every cross-task distance exceeds every same-objective seed baseline
   (pair seed_baseline) at its layer; MT–MLM, averaged over the layers, is below LM–MT and below LM–MLM.
5. Change (`measure`, all tokens), every seed: MT's change falls with depth (no step rises by more than
   `change_tolerance` beyond its interval; the first transition above the last beyond its interval);
   MLM's change at the top transition (L-1 -> L) exceeds every other transition's.
6. Influence at the lowest measured layer, every seed: in mt and in lm the rarest measured bucket
   influences more than every other bucket; the token-dropout variant's excess (rarest / median of the
   other buckets - 1) is below `dropout_excess_factor` times its base objective's, judged only where the
   base objective's rare-token excess holds.
7. Neighbours (`k`, `metric` as set, else the most common), every seed: at the top layer MLM's identity
   share exceeds MT's and LM's; MT's position distance, averaged over layers >= 1, is below LM's and
   MLM's.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from analysis.io.tables import SAME_INIT, SEED_BASELINE
from analysis.report.criteria import Criteria, Verdict, ends, every, falls, finish, ordered, transition
from analysis.report.estimates import (
    Curves,
    Rows,
    by_seed,
    common,
    fmt,
    influence_by_bucket,
    mi_curve,
    mi_stats,
    neighbour_rows,
    path,
    seed_means,
)
from analysis.stats import verdicts as rules
from analysis.stats.verdicts import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NOT_MEASURED,
    Contrast,
    Part,
    Rule,
    combine,
    mean_of,
    stat_of,
)

Tables = Mapping[str, "Rows | None"]
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED)


# ---------------------------------------------------------------- the claims

MI_KINDS = (("corrected", "mi_corrected"), ("plug-in", "mi"))


def claim_lm_mi(tables: Tables, crit: Criteria) -> Verdict:
    mi = tables.get("mi")
    parts = []
    for kind, column in MI_KINDS:
        parts.append(falls(f"LM input MI falls with depth ({kind})", mi_stats(mi, "lm", "input", crit, column),
                           crit.mi_tolerance, "mi"))
    for kind, column in MI_KINDS:
        out = mi_stats(mi, "lm", "output", crit, column)
        parts.append(ordered(f"LM next-token MI rises ({kind})", ends(out, crit.mi_tolerance, True),
                             "LM next-token MI not measured (metrics/mi.csv)"))
    inp, out = mi_curve(mi, "lm", "input", crit), mi_curve(mi, "lm", "output", crit)
    return finish(parts, [inp and f"input {path(inp)}", out and f"next token {path(out)}"], crit)


def claim_mlm_mi(tables: Tables, crit: Criteria) -> Verdict:
    mi = tables.get("mi")
    parts = []
    for kind, column in MI_KINDS:
        name = f"MLM input MI falls, then rises ({kind})"
        curves = mi_stats(mi, "mlm", "input", crit, column)
        if not curves or any(len(c) < 3 for c in curves.values()):
            parts.append(Part(name, missing=f"{name}: not measured at 3 or more layers (metrics/mi.csv)"))
            continue
        seeds = {}
        for seed, c in curves.items():
            keys = list(c)
            first, last = keys[0], keys[-1]
            seeds[seed] = Rule("dip", tuple(x for inner in keys[1:-1] for x in (
                Contrast(f"layer {first} − layer {inner}", c[first] - c[inner], crit.mi_tolerance),
                Contrast(f"layer {last} − layer {inner}", c[last] - c[inner], crit.mi_tolerance))))
        parts.append(Part(name, seeds))
    inp = mi_curve(mi, "mlm", "input", crit)
    extra = [mi_curve(mi, "mlm", t, crit) for t in ("input_masked", "output")]
    numbers = [inp and f"input {path(inp)}",
               *(c and f"{t} (masked) {fmt(list(c.values())[0])} → {fmt(list(c.values())[-1])}"
                 for t, c in zip(("input", "output"), extra))]
    return finish(parts, numbers, crit)


def _change_stats(change: Rows | None, objective: str, crit: Criteria) -> Curves:
    return by_seed(change or (), "layer_to", "distance", objective=objective, bucket="all", measure=crit.measure)


def claim_mt_identity(tables: Tables, crit: Criteria) -> Verdict:
    mi = tables.get("mi")
    parts = [ordered(f"MT input MI falls from the first layer to the last ({kind})",
                     ends(mi_stats(mi, "mt", "input", crit, column), crit.mi_tolerance, False),
                     "MT input MI not measured (metrics/mi.csv)") for kind, column in MI_KINDS]
    mt, lm = mi_stats(mi, "mt", "input", crit), mi_stats(mi, "lm", "input", crit)
    share = lambda c: c[list(c)[-1]] / c[list(c)[0]]  # noqa: E731  the top layer's share of the first layer's MI
    kept = {s: Contrast("MT top / first layer", share(mt[s]), crit.mt_keep_share) for s in mt if len(mt[s]) > 1}
    parts.append(ordered(f"MT keeps more than {crit.mt_keep_share:.0%} of its input MI", kept,
                         "MT input MI not measured (metrics/mi.csv)"))
    parts.append(ordered("MT keeps a larger share of its input MI than LM",
                         {s: Contrast("MT share − LM share", share(mt[s]) - share(lm[s])) for s in common(mt, lm)
                          if len(mt[s]) > 1 and len(lm[s]) > 1},
                         "MT and LM input MI of one seed not measured (metrics/mi.csv)"))
    change = {o: _change_stats(tables.get("change"), o, crit) for o in ("mt", "lm", "mlm")}
    means = {o: {s: mean_of(list(c.values())) for s, c in curves.items()} for o, curves in change.items()}
    parts.append(every("MT's mean change over layers is below LM's and MLM's",
                       {s: [Contrast(f"{o.upper()} − MT mean change", means[o][s] - means["mt"][s]) for o in ("lm", "mlm")]
                        for s in common(*change.values())},
                       "all-token change of MT, LM and MLM of one seed not measured (metrics/change.csv)"))
    numbers = []
    mt_c, lm_c = mi_curve(mi, "mt", "input", crit), mi_curve(mi, "lm", "input", crit)
    if len(mt_c) > 1 and len(lm_c) > 1 and list(mt_c.values())[0] > 0 and list(lm_c.values())[0] > 0:
        keep = {o: list(c.values())[-1] / list(c.values())[0] for o, c in (("MT", mt_c), ("LM", lm_c))}
        numbers.append(f"input MI kept at the top: MT {keep['MT']:.0%}, LM {keep['LM']:.0%}")
    avg = {o: statistics.fmean(seed_means(c).values()) for o, c in change.items() if c}
    if len(avg) == 3:
        numbers.append("mean change " + ", ".join(f"{o.upper()} {fmt(v)}" for o, v in avg.items()))
    return finish(parts, numbers, crit)


def cross_task(rows: Rows) -> list[Mapping[str, Any]]:
    """The rows comparing two different objectives of the same seed, i.e. the same initialisation
    (pair same_init: only the objective differs, METHODS §1). Rows of different seeds
    (different_init) add the difference the initialisation makes: they are shown, never read."""
    return [r for r in rows if r["pair"] == SAME_INIT]


PAIRS = (("mlm", "mt"), ("lm", "mt"), ("lm", "mlm"))  # sorted objective names of the study's three pairs


def claim_similarity(tables: Tables, crit: Criteria) -> Verdict:
    base = {"mt", "lm", "mlm"}
    rows = [r for r in tables.get("similarity") or () if r["measure"] == crit.measure and r["layer"] >= 1
            and r["objective_a"] in base and r["objective_b"] in base]
    pair_of = lambda r: tuple(sorted((r["objective_a"], r["objective_b"])))  # noqa: E731
    cross = {p: by_seed([r for r in cross_task(rows) if pair_of(r) == p], "layer", "distance", seed="seed_a")
             for p in PAIRS}
    seeds = common(*cross.values())
    if not seeds:
        return finish([Part("cross-task distances", missing=f"{crit.measure} between all of MT, LM and MLM of one "
                                                             "seed (the same initialisation) not measured")], [], crit)
    baselines = defaultdict(dict)  # layer -> (objective, seed pair) -> Stat
    for r in rows:
        if r["pair"] == SEED_BASELINE:
            baselines[r["layer"]][(r["objective_a"], r["seed_a"], r["seed_b"])] = stat_of(r, "distance",
                                                                                      str(r["n_tokens"]))
    layers = sorted({layer for p in PAIRS for s in seeds for layer in cross[p][s]})
    name = "every cross-task distance exceeds every seed baseline at its layer"
    if not baselines:
        part = Part(name, missing="no seed baseline (a second seed of mt, lm or mlm)")
    elif unbased := [layer for layer in layers if layer not in baselines]:
        part = Part(name, missing=f"no seed baseline at layers {unbased}")
    else:
        part = every(name, {s: [Contrast(f"{a.upper()}–{b.upper()} − {o} seeds {s1},{s2} at layer {layer}",
                                         cross[(a, b)][s][layer] - stat)
                                for layer in layers for a, b in PAIRS if layer in cross[(a, b)][s]
                                for (o, s1, s2), stat in baselines[layer].items()] for s in seeds}, name)
    means = {p: {s: mean_of(list(cross[p][s].values())) for s in seeds} for p in PAIRS}
    closest = every("MT–MLM is closer than LM–MT and LM–MLM (mean over layers)",
                    {s: [Contrast(f"{p[0].upper()}–{p[1].upper()} − MT–MLM", means[p][s] - means[("mlm", "mt")][s])
                         for p in PAIRS[1:]] for s in seeds}, "")
    numbers = [f"{a.upper()}–{b.upper()} {path(seed_means(cross[tuple(sorted((a, b)))]))}"
               for a, b in (("mt", "mlm"), ("lm", "mt"), ("lm", "mlm"))]
    if baselines:
        values = [s.value for layer in baselines.values() for s in layer.values()]
        numbers.append(f"seed baselines {fmt(min(values))}–{fmt(max(values))}")
    return finish([part, closest], numbers, crit)


def claim_change(tables: Tables, crit: Criteria) -> Verdict:
    change = tables.get("change")
    mt, mlm = _change_stats(change, "mt", crit), _change_stats(change, "mlm", crit)
    parts = [falls("MT's change falls with depth", mt, crit.change_tolerance, "change", transition)]
    top = {}
    for seed, c in mlm.items():
        if len(c) > 1:
            last = list(c)[-1]
            top[seed] = [Contrast(f"{transition(last)} − {transition(t)}", c[last] - c[t]) for t in list(c)[:-1]]
    parts.append(every("MLM's largest change is at the top transition", top,
                       "MLM's all-token change not measured (metrics/change.csv)"))
    return finish(parts, [mt and f"MT {path(seed_means(mt))}", mlm and f"MLM {path(seed_means(mlm))}"], crit)


def _excess(*values):
    """rarest / median of the others - 1 (the last is the rarest), value by value."""
    others = np.median(np.stack(np.broadcast_arrays(*values[:-1])), axis=0)
    return rules.divide(values[-1], others) - 1


def claim_influence(tables: Tables, crit: Criteria) -> Verdict:
    rows = tables.get("influence")
    parts, numbers, requires, stats = [], [], {}, {}
    for objective in ("mt", "lm", "mt_td", "lm_td"):
        layer, means = influence_by_bucket(rows, objective, crit)
        if len(means) < 2:
            continue
        stats[objective] = by_seed([r for r in rows if r["objective"] == objective and r["measure"] == crit.measure
                                    and r["bucket"] != "all"], "bucket", "distance", n="n_pairs", layer=layer)
        rarest = list(means)[-1]
        name = objective if "_" in objective else objective.upper()
        numbers.append(f"{name} layer {layer}: rarest {rarest} {fmt(means[rarest])} vs others "
                       f"≤ {fmt(max(list(means.values())[:-1]))}")
    for objective in ("mt", "lm"):
        name = f"in {objective.upper()} the rarest bucket influences most"
        seeds = {}
        for seed, c in stats.get(objective, {}).items():
            keys = list(c)
            seeds[seed] = [Contrast(f"{keys[-1]} − {b}", c[keys[-1]] - c[b]) for b in keys[:-1]]
        parts.append(every(name, seeds, f"{objective.upper()} influence in 2 or more buckets not measured "
                                        "(metrics/influence.csv)"))
        td = f"{objective}_td"
        td_name = f"{td} (token dropout) removes the rare-token excess"
        both = common(stats.get(objective, {}), stats.get(td, {}))
        excess = {o: {s: combine(_excess, *stats[o][s].values()) for s in both} for o in (objective, td) if both}
        parts.append(ordered(td_name, {s: Contrast(f"{crit.dropout_excess_factor:g} × {objective.upper()} excess − "
                                                   f"{td} excess", excess[objective][s].scaled(crit.dropout_excess_factor)
                                                   - excess[td][s]) for s in both},
                             f"{td} (token dropout) influence of the same seed as {objective} not measured"))
        requires[td_name] = name
    return finish(parts, numbers, crit, requires)


def claim_neighbours(tables: Tables, crit: Criteria) -> Verdict:
    rows = neighbour_rows(list(tables.get("neighbours") or ()), crit)
    objectives = ("mt", "lm", "mlm")
    ident = {o: by_seed(rows, "layer", "value", n="n_queries", objective=o, property="identity") for o in objectives}
    pos = {o: by_seed([r for r in rows if r["layer"] >= 1], "layer", "value", n="n_queries", objective=o,
                      property="position") for o in objectives}
    top = lambda c: c[max(c)]  # noqa: E731
    parts = [every("MLM keeps identity best at the top layer",
                   {s: [Contrast(f"MLM − {o.upper()} identity at layer {max(ident['mlm'][s])}",
                                 top(ident["mlm"][s]) - top(ident[o][s])) for o in ("mt", "lm")]
                    for s in common(*ident.values())}, "identity of MT, LM and MLM of one seed not measured"),
             every("MT keeps position best (mean distance over layers >= 1)",
                   {s: [Contrast(f"{o.upper()} − MT mean position distance",
                                 mean_of(list(pos[o][s].values())) - mean_of(list(pos["mt"][s].values())))
                        for o in ("lm", "mlm")] for s in common(*pos.values())},
                   "position of MT, LM and MLM of one seed not measured")]
    numbers = []
    if all(ident.values()):
        numbers.append("identity at the top " + ", ".join(
            f"{o.upper()} {fmt(list(seed_means(c).values())[-1])}" for o, c in ident.items()))
    if all(pos.values()):
        numbers.append("mean position distance " + ", ".join(
            f"{o.upper()} {fmt(statistics.fmean(seed_means(c).values()))}" for o, c in pos.items()))
    return finish(parts, numbers, crit)


# ---------------------------------------------------------------- the claim table

@dataclass(frozen=True)
class Claim:
    number: int
    statement: str
    study: str  # the study's numbers (METHODS.md)
    check: Callable[[Tables, Criteria], Verdict]
    reads: tuple[str, ...] = ()  # the objectives whose models (every seed) the check reads


CLAIMS: tuple[Claim, ...] = (
    Claim(1, "LM: MI with the input falls monotonically with depth while MI with the next token rises",
          "input 5.30 → 3.97 nats (layers 0→6); next token 1.82 → 2.35", claim_lm_mi, ("lm",)),
    Claim(2, "MLM: MI with the input falls, then rises at the top layers",
          "input 5.21 → 4.93 (layer 4) → 5.10; masked: input 6.90 → 0.93, output 0.72 → 2.38", claim_mlm_mi,
          ("mlm",)),
    Claim(3, "MT: refined with context but keeps most token identity; less change",
          "input 5.21 → 4.47 (86% kept; LM 75%); change .064 → .039", claim_mt_identity, ("mt", "lm", "mlm")),
    Claim(4, "PWCCA: cross-task distances > seed baselines; MT–MLM < LM–MT and LM–MLM",
          "MT–MLM .42→.54, LM–MT .45→.60, LM–MLM .41→.60; seeds .26–.37", claim_similarity,
          ("mt", "lm", "mlm")),
    Claim(5, "Change: MT decreases with depth; MLM largest at the top",
          "MT .064 → .039; MLM U-shaped, largest at 5→6", claim_change, ("mt", "mlm")),
    Claim(6, "Influence: rare tokens influence most in MT and LM; token dropout removes the excess",
          "MT layer 1: rarest ≈ .006 vs ≤ .002 for the other buckets", claim_influence,
          ("mt", "lm", "mt_td", "lm_td")),
    Claim(7, "Neighbours: MLM keeps identity best at the top; MT keeps position best",
          "identity at layer 6: MT .915, LM .77, MLM .97; position 6: MT 4.5, LM 7.8, MLM 8.0",
          claim_neighbours, ("mt", "lm", "mlm")),
)


def check_all(tables: Tables, crit: Criteria) -> list[tuple[Claim, Verdict]]:
    """Every claim's verdict; a check that fails on malformed rows is reported, not raised."""
    out = []
    for claim in CLAIMS:
        try:
            verdict = claim.check(tables, crit)
        except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError) as e:
            verdict = Verdict(NOT_MEASURED, "—", f"the tables could not be checked: {type(e).__name__}: {e}")
        out.append((claim, verdict))
    return out


def claim_rows(verdicts: Sequence[tuple[Claim, Verdict]]) -> list[dict[str, Any]]:
    """The rows of metrics/claims.csv (analysis.tables.COLUMNS["claims"]): every judged contrast of every
    claim, with its seed's, its part's and its claim's verdicts; one row for a claim without contrasts."""
    rows = []
    for claim, v in verdicts:
        head = {"claim": claim.number, "statement": claim.statement, "verdict": v.verdict, "numbers": v.numbers,
                "reason": v.reason}
        parts = {p.name: p.verdict for p in v.parts}
        if not v.lines:
            rows.append({**head, **{key: "" for key in ("part", "part_verdict", "seed", "seed_verdict", "contrast",
                                                        "outcome", "n", "basis")},
                         **{key: math.nan for key in ("estimate", "ci_low", "ci_high", "level", "margin")}})
        for line in v.lines:
            j = line.judged
            rows.append({**head, "part": line.part, "part_verdict": parts.get(line.part, ""),
                         "seed": line.seed, "seed_verdict": line.seed_verdict, "contrast": j.contrast.what,
                         "estimate": j.contrast.stat.value, "ci_low": j.low, "ci_high": j.high, "level": j.level,
                         "margin": j.contrast.margin, "outcome": j.outcome, "n": j.contrast.stat.n,
                         "basis": "point estimate (no resamples)" if j.points else "paired bootstrap replicates"})
    return rows
