"""The claim checks of analysis.claims on synthetic tables built to make each claim hold, built to make
it fail, and with the data it needs missing."""
from __future__ import annotations

import math

import pytest

from analysis.claims import (CLAIMS, FAILS, HOLDS, INCONCLUSIVE, NOT_MEASURED, Criteria, Estimate, check_all,
                             claim_change, claim_influence, claim_lm_mi, claim_mlm_mi, claim_mt_identity,
                             claim_neighbours, claim_similarity, ordered)
from analysis.gather import load_table
from analysis.tables import INIT_PAIR, SAME_INIT, SEED_BASELINE, pair_kind, write_table
from pipeline.config import compose

CRIT = Criteria(n_clusters=500, k=50, metric="cosine")
SEEDS = (1, 2)


# ---------------------------------------------------------------- row builders

def mi_rows(curves: dict, k: int = 500, seeds=SEEDS, chance: float = 0.3) -> list[dict]:
    """curves: (objective, target) -> corrected MI per layer 0..L (seed s adds 0.001 * s)."""
    return [{"objective": o, "seed": s, "layer": layer, "target": t, "n_clusters": k, "mi": v + chance + 0.001 * s,
             "mi_shuffled": chance, "mi_corrected": v + 0.001 * s, "n_tokens": 1000}
            for (o, t), curve in curves.items() for s in seeds for layer, v in enumerate(curve)]


def change_rows(curves: dict, measure: str = "pwcca", seeds=SEEDS) -> list[dict]:
    """curves: objective -> all-token change of transitions 0->1, 1->2, ..."""
    return [{"measure": measure, "objective": o, "seed": s, "layer_from": i, "layer_to": i + 1, "bucket": "all",
             "distance": v, "n_tokens": 500} for o, curve in curves.items() for s in seeds for i, v in enumerate(curve)]


def similarity_rows(cross: dict, baseline: list[float] | None, swap: bool = False) -> list[dict]:
    """cross: (a, b) -> distance per layer 1..L for every seed pair; baseline: mt/lm/mlm seed 1 vs 2."""
    rows = []
    for (a, b), curve in cross.items():
        for sa in SEEDS:
            for sb in SEEDS:
                for layer, v in enumerate(curve, start=1):
                    first, second = ((b, sb), (a, sa)) if swap else ((a, sa), (b, sb))
                    rows.append({"measure": "pwcca", "objective_a": first[0], "seed_a": first[1],
                                 "objective_b": second[0], "seed_b": second[1], "pair": pair_kind(first, second),
                                 "layer": layer, "distance": v + 0.001 * (sa + sb), "n_tokens": 900})
    for o in ("mt", "lm", "mlm") if baseline is not None else ():
        for layer, v in enumerate(baseline, start=1):
            rows.append({"measure": "pwcca", "objective_a": o, "seed_a": 1, "objective_b": o, "seed_b": 2,
                         "pair": SEED_BASELINE, "layer": layer, "distance": v, "n_tokens": 900})
    return rows


def influence_rows(per_objective: dict, layer: int = 1) -> list[dict]:
    """per_objective: objective -> influence per bucket, frequent to rare."""
    buckets = ["1-10", "10-25", "25-50", "50-100", "100-250"]
    return [{"measure": "pwcca", "objective": o, "seed": s, "layer": layer, "bucket": buckets[i], "distance": v,
             "n_pairs": 300} for o, values in per_objective.items() for s in SEEDS for i, v in enumerate(values)]


def neighbour_rows(prop: str, curves: dict, k: int = 50, metric: str = "cosine") -> list[dict]:
    return [{"objective": o, "seed": s, "layer": layer, "property": prop, "k": k, "metric": metric, "value": v,
             "n_queries": 200} for o, curve in curves.items() for s in SEEDS for layer, v in enumerate(curve)]


GOOD_MI = {("lm", "input"): [5.3, 5.2, 4.7, 4.0], ("lm", "output"): [1.8, 2.0, 2.3, 2.35],
           ("mlm", "input"): [5.2, 4.9, 4.8, 5.0], ("mt", "input"): [5.2, 5.1, 5.0, 4.7]}
GOOD_CHANGE = {"mt": [0.064, 0.05, 0.039], "lm": [0.08, 0.09, 0.085], "mlm": [0.07, 0.06, 0.1]}
GOOD_CROSS = {("mt", "mlm"): [0.42, 0.44, 0.5], ("lm", "mt"): [0.45, 0.5, 0.6], ("lm", "mlm"): [0.43, 0.48, 0.6]}
GOOD_INFLUENCE = {"mt": [0.002, 0.0019, 0.0018, 0.0017, 0.006], "lm": [0.002, 0.0019, 0.0018, 0.0017, 0.005],
                  "mt_td": [0.002, 0.0019, 0.0018, 0.0017, 0.0021], "lm_td": [0.002, 0.0019, 0.0018, 0.0017, 0.002]}
GOOD_IDENTITY = {"mt": [0.99, 0.95, 0.915], "lm": [0.99, 0.88, 0.77], "mlm": [0.99, 0.98, 0.97]}
GOOD_POSITION = {"mt": [0.0, 1.3, 4.5], "lm": [0.0, 2.7, 7.8], "mlm": [0.0, 2.4, 8.0]}


# ---------------------------------------------------------------- 1. LM: forgets the past, forms the future

def test_lm_claim_holds_with_falling_input_and_rising_output():
    verdict = claim_lm_mi({"mi": mi_rows(GOOD_MI)}, CRIT)
    assert verdict.verdict == HOLDS
    assert "→ 5.202 → 4.702 → 4.002; next token 1.801 →" in verdict.numbers  # seed means of corrected MI


@pytest.mark.parametrize("inp,out,word", [
    ([5.3, 5.0, 5.2, 4.0], [1.8, 2.3], "rises from layer 1 to 2"),
    ([5.3, 5.3, 5.3, 5.3], [1.8, 2.3], "does not fall overall"),
    ([5.3, 5.0, 4.5, 4.0], [2.0, 2.0, 2.01], "next-token MI does not rise"),
])
def test_lm_claim_fails(inp, out, word):
    verdict = claim_lm_mi({"mi": mi_rows({("lm", "input"): inp, ("lm", "output"): out})}, CRIT)
    assert verdict.verdict == FAILS and word in verdict.reason


def test_lm_claim_tolerates_a_rise_below_the_tolerance_and_reads_corrected_mi():
    rows = mi_rows({("lm", "input"): [5.3, 5.0, 5.015, 4.0], ("lm", "output"): [1.8, 2.3]})
    assert claim_lm_mi({"mi": rows}, CRIT).verdict == HOLDS
    assert claim_lm_mi({"mi": rows}, Criteria(mi_tolerance=0.01)).verdict == FAILS
    for row in rows:  # the plug-in estimate rises with depth; the corrected one still falls
        row["mi"] = row["mi_corrected"] + row["layer"]
    verdict = claim_lm_mi({"mi": rows}, CRIT)  # a claim on MI holds only on both the plug-in and the corrected MI
    assert verdict.verdict == FAILS and "input MI does not fall (plug-in" in verdict.reason


def test_lm_claim_reads_the_main_number_of_clusters():
    rows = mi_rows(GOOD_MI) + mi_rows({("lm", "input"): [4.0, 4.5, 5.0, 5.3], ("lm", "output"): [1, 2]}, k=100)
    assert claim_lm_mi({"mi": rows}, CRIT).verdict == HOLDS
    assert claim_lm_mi({"mi": rows}, Criteria(n_clusters=100)).verdict == FAILS


def test_lm_claim_not_measured_without_the_next_token():
    verdict = claim_lm_mi({"mi": mi_rows({("lm", "input"): [5.3, 4.0]})}, CRIT)
    assert verdict.verdict == NOT_MEASURED and "next-token" in verdict.reason
    assert claim_lm_mi({"mi": None}, CRIT).verdict == NOT_MEASURED


# ---------------------------------------------------------------- 2. MLM: context encoding, then reconstruction

def test_mlm_claim_holds_with_a_dip_inside():
    verdict = claim_mlm_mi({"mi": mi_rows(GOOD_MI)}, CRIT)
    assert verdict.verdict == HOLDS and "layer 2" in verdict.reason


@pytest.mark.parametrize("curve,word", [([5.2, 5.0, 4.8, 4.6], "lowest at layer 3"),
                                        ([5.2, 5.19, 5.3], "within 0.02 of an end")])
def test_mlm_claim_fails(curve, word):
    verdict = claim_mlm_mi({"mi": mi_rows({("mlm", "input"): curve})}, CRIT)
    assert verdict.verdict == FAILS and word in verdict.reason


def test_mlm_claim_needs_the_dip_on_the_plug_in_mi_too():
    rows = mi_rows(GOOD_MI)
    for row in rows:  # the chance level grows with depth: the plug-in MI rises steadily, the corrected MI dips
        row["mi"] = row["mi_corrected"] + 0.3 + row["layer"]
    verdict = claim_mlm_mi({"mi": rows}, CRIT)
    assert verdict.verdict == FAILS and "(plug-in) is lowest at layer 0" in verdict.reason


def test_mlm_claim_not_measured():
    assert claim_mlm_mi({"mi": mi_rows({("lm", "input"): [1, 2, 3]})}, CRIT).verdict == NOT_MEASURED


# ---------------------------------------------------------------- 3. MT keeps identity, changes less

def test_mt_claim_holds():
    verdict = claim_mt_identity({"mi": mi_rows(GOOD_MI), "change": change_rows(GOOD_CHANGE)}, CRIT)
    assert verdict.verdict == HOLDS, verdict.reason
    assert "MT 90%, LM 75%" in verdict.numbers


def test_mt_claim_fails_when_mt_changes_most():
    change = change_rows({**GOOD_CHANGE, "mt": [0.2, 0.15, 0.1]})
    verdict = claim_mt_identity({"mi": mi_rows(GOOD_MI), "change": change}, CRIT)
    assert verdict.verdict == FAILS and "not below" in verdict.reason


def test_mt_claim_fails_when_mt_loses_more_identity_than_lm():
    mi = mi_rows({**GOOD_MI, ("mt", "input"): [5.2, 4.0, 3.0, 2.0]})
    verdict = claim_mt_identity({"mi": mi, "change": change_rows(GOOD_CHANGE)}, CRIT)
    assert verdict.verdict == FAILS and "keeps 38%" in verdict.reason


def test_mt_claim_needs_change_but_a_failure_outranks_a_gap():
    assert claim_mt_identity({"mi": mi_rows(GOOD_MI), "change": None}, CRIT).verdict == NOT_MEASURED
    flat = mi_rows({**GOOD_MI, ("mt", "input"): [5.2, 5.2, 5.2, 5.2]})
    assert claim_mt_identity({"mi": flat, "change": None}, CRIT).verdict == FAILS


# ---------------------------------------------------------------- 4. distances between tasks

def test_similarity_claim_holds_in_either_pair_order():
    for swap in (False, True):
        verdict = claim_similarity({"similarity": similarity_rows(GOOD_CROSS, [0.3, 0.32, 0.35], swap)}, CRIT)
        assert verdict.verdict == HOLDS, verdict.reason
        assert "seed baselines 0.300–0.350" in verdict.numbers


def test_similarity_claim_fails_when_one_distance_is_within_the_baseline():
    cross = {**GOOD_CROSS, ("lm", "mlm"): [0.43, 0.33, 0.6]}
    verdict = claim_similarity({"similarity": similarity_rows(cross, [0.3, 0.34, 0.35])}, CRIT)
    assert verdict.verdict == FAILS and "LM–MLM at layer 2 is not above the seed baseline" in verdict.reason


def test_similarity_claim_fails_when_mt_is_not_closest_to_mlm():
    cross = {**GOOD_CROSS, ("mt", "mlm"): [0.6, 0.65, 0.7]}
    verdict = claim_similarity({"similarity": similarity_rows(cross, [0.3, 0.32, 0.35])}, CRIT)
    assert verdict.verdict == FAILS and "is not below" in verdict.reason


def test_similarity_claim_without_seed_baselines():
    assert claim_similarity({"similarity": similarity_rows(GOOD_CROSS, None)}, CRIT).verdict == NOT_MEASURED
    cross = {**GOOD_CROSS, ("mt", "mlm"): [0.6, 0.65, 0.7]}
    assert claim_similarity({"similarity": similarity_rows(cross, None)}, CRIT).verdict == FAILS
    only_two = {("lm", "mt"): [0.4, 0.5, 0.6]}
    assert claim_similarity({"similarity": similarity_rows(only_two, [0.3] * 3)}, CRIT).verdict == NOT_MEASURED


# ---------------------------------------------------------------- 5. change

def test_change_claim_holds():
    verdict = claim_change({"change": change_rows(GOOD_CHANGE)}, CRIT)
    assert verdict.verdict == HOLDS and "2→3" in verdict.reason


@pytest.mark.parametrize("curves,word", [({"mt": [0.04, 0.05, 0.03], "mlm": [0.07, 0.06, 0.1]}, "rises"),
                                         ({"mt": [0.064, 0.05, 0.039], "mlm": [0.07, 0.12, 0.1]}, "not at the top")])
def test_change_claim_fails(curves, word):
    verdict = claim_change({"change": change_rows(curves)}, CRIT)
    assert verdict.verdict == FAILS and word in verdict.reason


def test_change_claim_reads_only_its_measure_and_the_all_bucket():
    rows = change_rows(GOOD_CHANGE) + change_rows({"mt": [0.01, 0.2, 0.3]}, measure="cka")
    rows += [{**r, "bucket": "1-10", "distance": 1 - r["distance"]} for r in change_rows(GOOD_CHANGE)]
    assert claim_change({"change": rows}, CRIT).verdict == HOLDS
    cka = claim_change({"change": rows}, Criteria(measure="cka"))  # MT rises in cka; no MLM rows there
    assert cka.verdict == FAILS and "MLM's all-token change not measured" not in cka.reason


# ---------------------------------------------------------------- 6. influence

def test_influence_claim_holds():
    verdict = claim_influence({"influence": influence_rows(GOOD_INFLUENCE)}, CRIT)
    assert verdict.verdict == HOLDS, verdict.reason
    assert "MT layer 1: rarest 100-250 0.006" in verdict.numbers


def test_influence_claim_fails_when_dropout_keeps_the_excess():
    rows = influence_rows({**GOOD_INFLUENCE, "lm_td": GOOD_INFLUENCE["lm"]})
    verdict = claim_influence({"influence": rows}, CRIT)
    assert verdict.verdict == FAILS and "lm_td rare-token excess" in verdict.reason


def test_token_dropout_is_judged_only_where_the_base_excess_is_beyond_its_interval():
    rows = influence_rows({**GOOD_INFLUENCE, "lm_td": GOOD_INFLUENCE["lm"]})  # lm_td keeps LM's excess
    narrow = claim_influence({"influence": _with_intervals(rows, 1e-5)}, CRIT)
    assert narrow.verdict == FAILS and "lm_td rare-token excess" in narrow.reason  # judged: the excess is clear
    wide = claim_influence({"influence": _with_intervals(rows, 0.01)}, CRIT)  # every bucket within the others'
    assert wide.verdict == INCONCLUSIVE, wide.reason
    assert "lm_td not judged" in wide.numbers and "mt_td not judged" in wide.numbers


def test_influence_claim_fails_when_frequent_tokens_influence_most():
    rows = influence_rows({**GOOD_INFLUENCE, "mt": [0.009, 0.0019, 0.0018, 0.0017, 0.006]})
    verdict = claim_influence({"influence": rows}, CRIT)
    assert verdict.verdict == FAILS and "bucket 1-10, not the rarest 100-250" in verdict.reason, verdict.reason


def test_influence_claim_reads_the_lowest_layer_and_needs_the_dropout_variants():
    rows = influence_rows(GOOD_INFLUENCE) + influence_rows({"mt": [0.01, 0.001, 0.001, 0.001, 0.001]}, layer=2)
    assert claim_influence({"influence": rows}, CRIT).verdict == HOLDS
    base_only = influence_rows({"mt": GOOD_INFLUENCE["mt"], "lm": GOOD_INFLUENCE["lm"]})
    verdict = claim_influence({"influence": base_only}, CRIT)
    assert verdict.verdict == NOT_MEASURED and "mt_td" in verdict.reason


# ---------------------------------------------------------------- 7. neighbours

def _neighbours(identity=GOOD_IDENTITY, position=GOOD_POSITION, **kw):
    return {"neighbours": neighbour_rows("identity", identity, **kw) + neighbour_rows("position", position, **kw)}


def test_neighbours_claim_holds():
    verdict = claim_neighbours(_neighbours(), CRIT)
    assert verdict.verdict == HOLDS and "MLM 0.970" in verdict.numbers


def test_neighbours_claim_fails():
    assert claim_neighbours(_neighbours(identity={**GOOD_IDENTITY, "mt": [1, 1, 0.99]}), CRIT).verdict == FAILS
    verdict = claim_neighbours(_neighbours(position={**GOOD_POSITION, "mt": [0, 9, 9]}), CRIT)
    assert verdict.verdict == FAILS and "MT does not keep position best" in verdict.reason


def test_neighbours_claim_reads_the_configured_k():
    tables = _neighbours()
    tables["neighbours"] += _neighbours(identity={**GOOD_IDENTITY, "mt": [1, 1, 0.99]}, k=10)["neighbours"]
    assert claim_neighbours(tables, CRIT).verdict == HOLDS
    assert claim_neighbours(tables, Criteria(k=10, metric="cosine")).verdict == FAILS
    assert claim_neighbours({"neighbours": None}, CRIT).verdict == NOT_MEASURED


# ---------------------------------------------------------------- all together

def test_check_all_on_nothing_and_on_broken_rows():
    verdicts = check_all({}, CRIT)
    assert [c.number for c, _ in verdicts] == list(range(1, 8)) == [c.number for c in CLAIMS]
    assert {v.verdict for _, v in verdicts} == {NOT_MEASURED}
    broken = check_all({"mi": [{"objective": "lm"}]}, CRIT)  # rows without the columns a check reads
    assert broken[0][1].verdict == NOT_MEASURED and "could not be checked" in broken[0][1].reason


def test_claims_from_written_tables_and_the_config(tmp_path):
    """Through the CSV files and the typed reader, with the criteria of the shipped config."""
    cfg = compose(["experiment=smoke", f"paths.results={tmp_path}"])
    crit = Criteria.from_cfg(cfg)
    assert crit.n_clusters == cfg.analysis.mi.n_clusters and crit.measure == "pwcca"
    write_table(tmp_path / "mi.csv", "mi", mi_rows(GOOD_MI, k=crit.n_clusters), {})
    rows = load_table(tmp_path / "mi.csv", "mi").rows
    assert isinstance(rows[0]["mi_corrected"], float) and isinstance(rows[0]["layer"], int)
    assert claim_lm_mi({"mi": rows}, crit).verdict == HOLDS


def test_cross_task_distances_compare_models_of_the_same_initialisation():
    """Claim 4 reads cross-task pairs of the same seed: a pair of different seeds differs by its
    initialisation too, and must not decide it."""

    rows = []
    for layer in (1, 2):
        for a, b in (("mt", "mlm"), ("lm", "mt"), ("lm", "mlm")):
            for sa, sb in ((1, 1), (2, 2), (1, 2)):
                far = 0.5 if (a, b) != ("mt", "mlm") else 0.45
                rows.append({"measure": "pwcca", "objective_a": a, "seed_a": sa, "objective_b": b, "seed_b": sb,
                             "pair": pair_kind((a, sa), (b, sb)), "layer": layer,
                             "distance": far if sa == sb else 0.05, "n_tokens": 1000})
        for o in ("mt", "lm", "mlm"):
            rows.append({"measure": "pwcca", "objective_a": o, "seed_a": 1, "objective_b": o, "seed_b": 2,
                         "pair": SEED_BASELINE, "layer": layer, "distance": 0.3, "n_tokens": 1000})
        for o in ("mt", "lm", "mlm"):  # the step-0 control: read by no claim
            rows.append({"measure": "pwcca", "objective_a": o, "seed_a": 1, "objective_b": "init", "seed_b": 1,
                         "pair": INIT_PAIR, "layer": layer, "distance": 0.01, "n_tokens": 1000})
    assert claim_similarity({"similarity": rows}, Criteria()).verdict == HOLDS
    # only different initialisations: the study's design is not measured, whatever those pairs say
    only_mixed = [r for r in rows if r["pair"] != SAME_INIT]
    verdict = claim_similarity({"similarity": only_mixed}, Criteria())
    assert verdict.verdict == NOT_MEASURED and "same initialisation" in verdict.reason


# ---------------------------------------------------------------- verdicts read with intervals

def _with_intervals(rows: list[dict], half_width: float, value: str = "distance") -> list[dict]:
    return [{**r, "ci_low": r[value] - half_width, "ci_high": r[value] + half_width} for r in rows]


@pytest.mark.parametrize("half_width,verdict", [(0.001, HOLDS), (0.05, INCONCLUSIVE)])
def test_change_verdict_is_inconclusive_when_the_curves_differ_by_less_than_their_intervals(half_width, verdict):
    # MLM's top transition (0.1) exceeds the others (0.07, 0.06) by 0.03: beyond intervals of +-0.001, within +-0.05
    got = claim_change({"change": _with_intervals(change_rows(GOOD_CHANGE), half_width)}, CRIT)
    assert got.verdict == verdict, got.reason
    assert "[" in got.reason  # the deciding numbers come with their intervals
    if verdict == INCONCLUSIVE:
        assert "within the intervals" in got.reason


def test_ordered_needs_every_seed_and_says_the_opposite_beyond_the_intervals():
    a = Estimate(0.5, 0.45, 0.55, {1: 0.5, 2: 0.5})
    b = Estimate(0.3, 0.25, 0.35, {1: 0.3, 2: 0.3})
    assert ordered(a, b, "a > b").ok is True
    assert ordered(b, a, "b > a").ok is False
    assert ordered(a, Estimate(0.3, 0.25, 0.35, {1: 0.3, 2: 0.6}), "a > b").inconclusive  # one seed disagrees
    fallback = ordered(Estimate(0.5, math.nan, math.nan, {}), b, "a > b")
    assert fallback.ok is True and "no intervals" in fallback.text  # older tables: the point estimates decide


def test_neighbours_verdict_with_intervals_holds_or_fails_beyond_them():
    tables = _neighbours()
    tables["neighbours"] = _with_intervals(tables["neighbours"], 0.001, "value")
    assert claim_neighbours(tables, CRIT).verdict == HOLDS
    tables = _neighbours(identity={**GOOD_IDENTITY, "mt": [1, 1, 0.99]})
    tables["neighbours"] = _with_intervals(tables["neighbours"], 0.001, "value")
    assert claim_neighbours(tables, CRIT).verdict == FAILS


@pytest.mark.parametrize("half_width,verdict", [(0.01, HOLDS), (0.1, INCONCLUSIVE)])
def test_similarity_verdict_reads_the_intervals_of_distances_and_baselines(half_width, verdict):
    rows = _with_intervals(similarity_rows(GOOD_CROSS, [0.3, 0.32, 0.35]), half_width)  # MT–MLM 0.42 vs 0.3 at layer 1
    got = claim_similarity({"similarity": rows}, CRIT)
    assert got.verdict == verdict, got.reason
