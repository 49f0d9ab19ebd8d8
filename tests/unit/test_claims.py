"""The claim checks of analysis.report.claims on synthetic tables whose rows carry bootstrap replicates: for every
claim, a clear effect in every seed holds, the clear opposite does not hold, seeds in opposite directions,
one seed without intervals and intervals of +-100 decide nothing; and the particulars of each claim."""
from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.report import claims
from analysis.report.claims import (CLAIMS, FAILS, HOLDS, INCONCLUSIVE, NOT_MEASURED, check_all,
                                    claim_change, claim_influence, claim_lm_mi, claim_mlm_mi,
                                    claim_mt_identity, claim_neighbours, claim_rows, claim_similarity)
from analysis.report.criteria import Criteria
from analysis.report.gather import load_table
from analysis.io.tables import COLUMNS, INIT_PAIR, REPLICATES, SAME_INIT, SEED_BASELINE, pair_kind, write_table
from pipeline.config.compose import compose

CRIT = Criteria(n_clusters=500, k=50, metric="cosine")
SEEDS = (1, 2)
B = 200
CLEAR = 1e-6  # the replicates' spread of a clear effect
WIDE = 100 / 1.96  # a marginal interval of +-100


class Noise:
    """Replicates for every row: the estimate plus independent normal noise of sd `sd` (a seed's rows nan
    in `nan_seed`, none at all with `resamples` 0)."""

    def __init__(self, sd: float = CLEAR, nan_seed: int | None = None, resamples: int = B, seed: int = 0):
        self.sd, self.nan_seed, self.resamples = sd, nan_seed, resamples
        self.rng = np.random.default_rng(seed)

    def __call__(self, row: dict, column: str, seed: int) -> dict:
        value = row[column]
        reps = value + self.sd * self.rng.normal(size=self.resamples)
        if seed == self.nan_seed:
            reps = np.full(self.resamples, np.nan)
        prefix = "corrected_" if column == "mi_corrected" else ""
        half = 1.96 * self.sd if seed != self.nan_seed and self.resamples else math.nan
        row.update({f"{prefix}ci_low": value - half, f"{prefix}ci_high": value + half})
        row.setdefault(REPLICATES, {})[column] = reps
        return row


def mi_rows(curves: dict, noise: Noise, k: int = 500, chance: float = 0.3) -> list[dict]:
    """curves: (objective, target, seed) -> corrected MI per layer 0..L."""
    rows = []
    for (o, t, s), curve in curves.items():
        for layer, v in enumerate(curve):
            row = {"objective": o, "seed": s, "layer": layer, "target": t, "n_clusters": k, "mi": v + chance,
                   "mi_shuffled": chance, "mi_corrected": v, "n_tokens": 1000}
            rows.append(noise(noise(row, "mi", s), "mi_corrected", s))
    return rows


def change_rows(curves: dict, noise: Noise, measure: str = "pwcca") -> list[dict]:
    """curves: (objective, seed) -> all-token change of transitions 0->1, 1->2, ..."""
    return [noise({"measure": measure, "objective": o, "seed": s, "layer_from": i, "layer_to": i + 1, "bucket": "all",
                   "distance": v, "n_tokens": 500}, "distance", s)
            for (o, s), curve in curves.items() for i, v in enumerate(curve)]


def similarity_rows(cross: dict, baseline: list[float] | None, noise: Noise) -> list[dict]:
    """cross: (a, b, seed) -> same-init distance per layer 1..L; baseline: each objective's seeds 1 vs 2."""
    rows = []
    for (a, b, s), curve in cross.items():
        for layer, v in enumerate(curve, start=1):
            rows.append(noise({"measure": "pwcca", "objective_a": a, "seed_a": s, "objective_b": b, "seed_b": s,
                               "pair": pair_kind((a, s), (b, s)), "layer": layer, "distance": v, "n_tokens": 900},
                              "distance", s))
    for o in ("mt", "lm", "mlm") if baseline is not None else ():
        for layer, v in enumerate(baseline, start=1):
            rows.append(noise({"measure": "pwcca", "objective_a": o, "seed_a": 1, "objective_b": o, "seed_b": 2,
                               "pair": SEED_BASELINE, "layer": layer, "distance": v, "n_tokens": 900}, "distance", 0))
    return rows


BUCKETS = ["1-10", "10-25", "25-50", "50-100", "100-250"]


def influence_rows(curves: dict, noise: Noise, layer: int = 1) -> list[dict]:
    """curves: (objective, seed) -> influence per bucket, frequent to rare."""
    return [noise({"measure": "pwcca", "objective": o, "seed": s, "layer": layer, "bucket": BUCKETS[i], "distance": v,
                   "n_pairs": 300}, "distance", s) for (o, s), values in curves.items() for i, v in enumerate(values)]


def neighbour_rows(prop: str, curves: dict, noise: Noise, k: int = 50) -> list[dict]:
    return [noise({"objective": o, "seed": s, "layer": layer, "property": prop, "k": k, "metric": "cosine",
                   "value": v, "n_queries": 200}, "value", s)
            for (o, s), curve in curves.items() for layer, v in enumerate(curve)]


# ---------------------------------------------------------------- each claim's effect and its opposite

GOOD = {
    "mi": {("lm", "input"): [5.3, 5.2, 4.7, 4.0], ("lm", "output"): [1.8, 2.0, 2.3, 2.35],
           ("mlm", "input"): [5.2, 4.9, 4.8, 5.0], ("mt", "input"): [5.2, 5.1, 5.0, 4.7]},
    "change": {"mt": [0.064, 0.05, 0.039], "lm": [0.08, 0.09, 0.085], "mlm": [0.07, 0.06, 0.1]},
    "cross": {("mt", "mlm"): [0.42, 0.44, 0.5], ("lm", "mt"): [0.45, 0.5, 0.6], ("lm", "mlm"): [0.43, 0.48, 0.6]},
    "influence": {"mt": [0.002, 0.0019, 0.0018, 0.0017, 0.006], "lm": [0.002, 0.0019, 0.0018, 0.0017, 0.005],
                  "mt_td": [0.002, 0.0019, 0.0018, 0.0017, 0.0021], "lm_td": [0.002, 0.0019, 0.0018, 0.0017, 0.002]},
    "identity": {"mt": [0.99, 0.95, 0.915], "lm": [0.99, 0.88, 0.77], "mlm": [0.99, 0.98, 0.97]},
    "position": {"mt": [0.0, 1.3, 4.5], "lm": [0.0, 2.7, 7.8], "mlm": [0.0, 2.4, 8.0]},
}
OPPOSITE = {
    "mi": {("lm", "input"): [4.0, 4.7, 5.2, 5.3], ("lm", "output"): [2.35, 2.3, 2.0, 1.8],
           ("mlm", "input"): [4.8, 5.1, 5.2, 4.9], ("mt", "input"): [4.0, 4.5, 5.0, 5.2]},
    "change": {"mt": [0.039, 0.05, 0.064], "lm": [0.01, 0.01, 0.01], "mlm": [0.1, 0.08, 0.05]},
    "cross": {("mt", "mlm"): [0.2, 0.2, 0.2], ("lm", "mt"): [0.1, 0.1, 0.1], ("lm", "mlm"): [0.12, 0.12, 0.12]},
    "influence": {"mt": [0.006, 0.0019, 0.0018, 0.0017, 0.001], "lm": [0.005, 0.0019, 0.0018, 0.0017, 0.001],
                  "mt_td": [0.002, 0.0019, 0.0018, 0.0017, 0.0021], "lm_td": [0.002, 0.0019, 0.0018, 0.0017, 0.002]},
    "identity": {"mt": [0.99, 0.98, 0.97], "lm": [0.99, 0.88, 0.95], "mlm": [0.99, 0.8, 0.7]},
    "position": {"mt": [0.0, 9.0, 9.0], "lm": [0.0, 2.7, 7.8], "mlm": [0.0, 2.4, 8.0]},
}
BASELINE = [0.3, 0.32, 0.35]


def tables(direction: dict[int, dict], noise: Noise) -> dict[str, list[dict]]:
    """Every table, seed s following direction[s] (GOOD or OPPOSITE)."""
    mi = {(o, t, s): curve for s, d in direction.items() for (o, t), curve in d["mi"].items()}
    return {"mi": mi_rows(mi, noise),
            "change": change_rows({(o, s): c for s, d in direction.items() for o, c in d["change"].items()}, noise),
            "similarity": similarity_rows({(a, b, s): c for s, d in direction.items() for (a, b), c in d["cross"].items()},
                                          BASELINE, noise),
            "influence": influence_rows({(o, s): c for s, d in direction.items() for o, c in d["influence"].items()},
                                        noise),
            "neighbours": (neighbour_rows("identity", {(o, s): c for s, d in direction.items()
                                                       for o, c in d["identity"].items()}, noise)
                           + neighbour_rows("position", {(o, s): c for s, d in direction.items()
                                                         for o, c in d["position"].items()}, noise))}


CHECKS = [c.check for c in CLAIMS]


@pytest.mark.parametrize("check", CHECKS, ids=[f"claim{c.number}" for c in CLAIMS])
def test_a_clear_effect_in_every_seed_holds(check):
    verdict = check(tables({1: GOOD, 2: GOOD}, Noise()), CRIT)
    assert verdict.verdict == HOLDS, verdict.reason
    assert verdict.lines and all(line.judged.outcome != "no interval" for line in verdict.lines)


@pytest.mark.parametrize("check", CHECKS, ids=[f"claim{c.number}" for c in CLAIMS])
def test_the_clear_opposite_in_every_seed_does_not_hold(check):
    verdict = check(tables({1: OPPOSITE, 2: OPPOSITE}, Noise()), CRIT)
    assert verdict.verdict == FAILS, verdict.reason


@pytest.mark.parametrize("check", CHECKS, ids=[f"claim{c.number}" for c in CLAIMS])
def test_seeds_in_opposite_directions_are_inconclusive(check):
    verdict = check(tables({1: GOOD, 2: OPPOSITE}, Noise()), CRIT)
    assert verdict.verdict == INCONCLUSIVE, verdict.reason
    assert "the seeds disagree" in verdict.reason


@pytest.mark.parametrize("check", CHECKS, ids=[f"claim{c.number}" for c in CLAIMS])
def test_one_seed_without_intervals_is_inconclusive(check):
    verdict = check(tables({1: GOOD, 2: GOOD}, Noise(nan_seed=2)), CRIT)
    assert verdict.verdict == INCONCLUSIVE, verdict.reason
    assert any(line.seed == 2 and line.judged.outcome == "no interval" for line in verdict.lines)


@pytest.mark.parametrize("direction", [GOOD, OPPOSITE], ids=["effect", "opposite"])
@pytest.mark.parametrize("check", CHECKS, ids=[f"claim{c.number}" for c in CLAIMS])
def test_intervals_of_100_decide_nothing(check, direction):
    verdict = check(tables({1: direction, 2: direction}, Noise(sd=WIDE)), CRIT)
    assert verdict.verdict == INCONCLUSIVE, verdict.reason
    assert all(line.judged.outcome == "within" for line in verdict.lines)


@pytest.mark.parametrize("check", CHECKS, ids=[f"claim{c.number}" for c in CLAIMS])
def test_a_table_without_resamples_is_read_on_points_and_says_so(check):
    good = check(tables({1: GOOD, 2: GOOD}, Noise(resamples=0)), CRIT)
    assert good.verdict == HOLDS and "point estimates" in good.reason, good.reason
    assert check(tables({1: OPPOSITE, 2: OPPOSITE}, Noise(resamples=0)), CRIT).verdict == FAILS
    # no replicates kept at all (a table made before they were): no interval, no point rule either
    rows = tables({1: GOOD, 2: GOOD}, Noise())
    for table in rows.values():
        for row in table:
            row.pop(REPLICATES)
    assert check(rows, CRIT).verdict == INCONCLUSIVE


# ---------------------------------------------------------------- paired, not marginal

def test_a_dip_within_wide_marginal_intervals_is_decided_by_its_paired_interval():
    """The issue's case: MLM input MI dips by 0.05 nats at an inner layer with +-5 nats marginal intervals.
    Replicates that move together (the same sentences resampled) decide it; independent ones do not."""
    rng = np.random.default_rng(1)
    shared = rng.normal(size=(2, B)) * 5 / 1.96  # per seed: what every layer of it sees under resample r
    rows = mi_rows({("mlm", "input", s): [5.2, 5.1, 5.15, 5.2] for s in SEEDS}, Noise(sd=0), chance=0.0)
    for row in rows:
        for column in ("mi", "mi_corrected"):
            row[REPLICATES][column] = row[column] + shared[row["seed"] - 1] + 1e-4 * rng.normal(size=B)
    verdict = claim_mlm_mi({"mi": rows}, Criteria(n_clusters=500, mi_tolerance=0.02))
    assert verdict.verdict == HOLDS, verdict.reason
    for row in rows:  # the same marginal spread, but independent between layers
        for column in ("mi", "mi_corrected"):
            row[REPLICATES][column] = row[column] + 5 / 1.96 * rng.normal(size=B)
    assert claim_mlm_mi({"mi": rows}, Criteria(n_clusters=500)).verdict == INCONCLUSIVE


@pytest.mark.parametrize("shared,expected", [(False, {0.600: INCONCLUSIVE, 0.599: INCONCLUSIVE, 0.601: INCONCLUSIVE}),
                                             (True, {0.600: HOLDS, 0.599: INCONCLUSIVE, 0.601: HOLDS})])
def test_mt_mlm_closest_is_decided_by_its_contrast_not_the_third_decimal(shared, expected):
    """MT–MLM 0.599 against LM–MT 0.600 or 0.601, each with +-0.1 marginal intervals (the rule on point
    estimates said holds, then does not hold). Independent replicates: the difference's interval is wider
    still, nothing is decided. Replicates that move together (the same resampled sentences): the
    difference is decided by its own, narrow interval."""
    for lm_mt, verdict in expected.items():
        rng = np.random.default_rng(2)
        common = rng.normal(size=B) * 0.1 / 1.96
        cross = {("mt", "mlm", s): [0.599] * 3 for s in SEEDS}
        cross.update({("lm", "mt", s): [lm_mt] * 3 for s in SEEDS})
        cross.update({("lm", "mlm", s): [0.7] * 3 for s in SEEDS})
        rows = similarity_rows(cross, BASELINE, Noise(sd=0))
        for row in rows:
            noise = common if shared else rng.normal(size=B) * 0.1 / 1.96
            row[REPLICATES]["distance"] = row["distance"] + noise + 1e-5 * rng.normal(size=B)
        got = claim_similarity({"similarity": rows}, CRIT)
        part = next(p for p in got.parts if p.name.startswith("MT–MLM is closer"))
        assert part.verdict == verdict, (lm_mt, part.reason)


# ---------------------------------------------------------------- the particulars

def test_the_claims_read_the_main_clusters_the_measure_and_the_all_bucket():
    rows = tables({1: GOOD, 2: GOOD}, Noise())
    rows["mi"] += mi_rows({("lm", "input", s): [4.0, 4.5, 5.0, 5.3] for s in SEEDS}, Noise(), k=100)
    assert claim_lm_mi(rows, CRIT).verdict == HOLDS
    assert claim_lm_mi(rows, Criteria(n_clusters=100)).verdict == FAILS
    rows["change"] += change_rows({("mt", s): [0.01, 0.2, 0.3] for s in SEEDS}, Noise(), measure="cka")
    rows["change"] += [{**r, "bucket": "1-10", "distance": 1 - r["distance"]} for r in rows["change"]
                       if r["measure"] == "pwcca"]
    assert claim_change(rows, CRIT).verdict == HOLDS
    cka = claim_change(rows, Criteria(measure="cka"))  # MT rises in cka; no MLM rows there
    assert cka.verdict == FAILS


def test_a_claim_on_mi_needs_the_plug_in_mi_too():
    rows = tables({1: GOOD, 2: GOOD}, Noise())
    for row in rows["mi"]:  # the chance level grows with depth: the plug-in MI rises, the corrected one falls
        row["mi"] = row["mi_corrected"] + row["layer"]
        row[REPLICATES]["mi"] = row["mi"] + CLEAR * np.random.default_rng(0).normal(size=B)
    verdict = claim_lm_mi(rows, CRIT)
    assert verdict.verdict == FAILS and "(plug-in)" in verdict.reason


def test_a_rise_within_the_tolerance_does_not_break_a_fall():
    rows = mi_rows({("lm", t, s): c for s in SEEDS for t, c in (("input", [5.3, 5.0, 5.015, 4.0]),
                                                                  ("output", [1.8, 2.3]))}, Noise())
    assert claim_lm_mi({"mi": rows}, CRIT).verdict == HOLDS
    verdict = claim_lm_mi({"mi": rows}, Criteria(mi_tolerance=0.01))
    assert verdict.verdict == FAILS and "rise from layer 1 to layer 2" in verdict.reason


def test_not_measured_without_the_data():
    assert claim_lm_mi({"mi": None}, CRIT).verdict == NOT_MEASURED
    only_input = mi_rows({("lm", "input", s): [5.3, 4.0] for s in SEEDS}, Noise())
    verdict = claim_lm_mi({"mi": only_input}, CRIT)
    assert verdict.verdict == NOT_MEASURED and "next-token" in verdict.reason
    rows = tables({1: GOOD, 2: GOOD}, Noise())
    assert claim_mt_identity({"mi": rows["mi"], "change": None}, CRIT).verdict == NOT_MEASURED
    no_baseline = similarity_rows({(a, b, s): c for s in SEEDS for (a, b), c in GOOD["cross"].items()}, None, Noise())
    assert claim_similarity({"similarity": no_baseline}, CRIT).verdict == NOT_MEASURED
    base_only = [r for r in rows["influence"] if not r["objective"].endswith("_td")]
    verdict = claim_influence({"influence": base_only}, CRIT)
    assert verdict.verdict == NOT_MEASURED and "mt_td" in verdict.reason


def test_cross_task_distances_compare_models_of_the_same_initialisation():
    """Claim 4 reads cross-task pairs of the same seed: pairs of different seeds differ by their
    initialisation too, and the step-0 control's pairs are read by no claim."""
    rows = tables({1: GOOD, 2: GOOD}, Noise())["similarity"]
    noise = Noise()
    for layer in (1, 2, 3):
        for a, b in (("mt", "mlm"), ("lm", "mt"), ("lm", "mlm")):
            rows.append(noise({"measure": "pwcca", "objective_a": a, "seed_a": 1, "objective_b": b, "seed_b": 2,
                               "pair": pair_kind((a, 1), (b, 2)), "layer": layer, "distance": 0.05, "n_tokens": 900},
                              "distance", 1))
        rows.append(noise({"measure": "pwcca", "objective_a": "mt", "seed_a": 1, "objective_b": "init", "seed_b": 1,
                           "pair": INIT_PAIR, "layer": layer, "distance": 0.01, "n_tokens": 900}, "distance", 1))
    assert claim_similarity({"similarity": rows}, CRIT).verdict == HOLDS
    only_mixed = [r for r in rows if r["pair"] != SAME_INIT]
    verdict = claim_similarity({"similarity": only_mixed}, CRIT)
    assert verdict.verdict == NOT_MEASURED and "same initialisation" in verdict.reason


def test_token_dropout_is_judged_only_where_the_base_excess_holds():
    rows = tables({1: GOOD, 2: GOOD}, Noise())["influence"]
    keeps = [r for r in rows if r["objective"] != "lm_td"]
    keeps += [{**r, "objective": "lm_td"} for r in rows if r["objective"] == "lm"]  # lm_td keeps LM's excess
    verdict = claim_influence({"influence": keeps}, CRIT)
    assert verdict.verdict == FAILS and "lm_td (token dropout)" in verdict.reason
    flat = [r for r in keeps if r["objective"] != "lm"]  # LM shows no excess: lm_td is not judged
    rng = np.random.default_rng(3)
    flat += [{**r, "distance": 0.002, REPLICATES: {"distance": 0.002 + 5e-4 * rng.normal(size=B)}}
             for r in keeps if r["objective"] == "lm"]
    verdict = claim_influence({"influence": flat}, CRIT)
    assert verdict.verdict == INCONCLUSIVE and "lm_td (token dropout) removes the rare-token excess: not judged" \
        in verdict.reason


def test_the_neighbours_claim_reads_the_configured_k():
    rows = tables({1: GOOD, 2: GOOD}, Noise())
    rows["neighbours"] += neighbour_rows("identity", {(o, s): c for s in SEEDS for o, c in OPPOSITE["identity"].items()},
                                         Noise(), k=10)
    assert claim_neighbours(rows, CRIT).verdict == HOLDS
    assert claim_neighbours(rows, Criteria(k=10, metric="cosine")).verdict == FAILS
    assert claim_neighbours({"neighbours": None}, CRIT).verdict == NOT_MEASURED


def test_the_bonferroni_level_grows_with_the_contrasts_a_claim_reads():
    verdict = claim_lm_mi(tables({1: GOOD, 2: GOOD}, Noise()), CRIT)
    # per seed: (3 steps + first vs last) x 2 kinds of MI, then next token last vs first x 2
    assert verdict.contrasts == 10 and verdict.level == pytest.approx(1 - 0.05 / 10)
    assert all(line.judged.level == verdict.level for line in verdict.lines)
    assert "Bonferroni over 10 contrasts" in verdict.reason


def test_check_all_on_nothing_and_on_broken_rows():
    verdicts = check_all({}, CRIT)
    assert [c.number for c, _ in verdicts] == list(range(1, 8))
    assert {v.verdict for _, v in verdicts} == {NOT_MEASURED}
    broken = check_all({"mi": [{"objective": "lm"}]}, CRIT)  # rows without the columns a check reads
    assert broken[0][1].verdict == NOT_MEASURED and "could not be checked" in broken[0][1].reason


def test_claims_from_written_tables_and_their_replicates(tmp_path):
    """Through the CSV and replicates files and the typed reader, with the criteria of the shipped config;
    the claim rows (claims.csv) hold every judged contrast."""
    cfg = compose(["experiment=smoke", f"paths.results={tmp_path}"])
    crit = Criteria.from_cfg(cfg)
    assert crit.n_clusters == cfg.analysis.mi.n_clusters and crit.level == 0.95 and crit.method == "normal"
    made = tables({1: GOOD, 2: GOOD}, Noise())
    rows = [{**r, "n_clusters": crit.n_clusters} for r in made["mi"]]
    write_table(tmp_path / "mi.csv", "mi", rows, {})
    assert (tmp_path / "mi.npz").is_file()
    loaded = load_table(tmp_path / "mi.csv", "mi")
    assert loaded.no_replicates is None
    np.testing.assert_array_equal(loaded.rows[5][REPLICATES]["mi_corrected"], rows[5][REPLICATES]["mi_corrected"])
    assert claim_lm_mi({"mi": loaded.rows}, crit).verdict == HOLDS
    (tmp_path / "mi.npz").unlink()  # a table made before replicates were kept
    assert claim_lm_mi({"mi": load_table(tmp_path / "mi.csv", "mi").rows}, crit).verdict == INCONCLUSIVE
    out = claim_rows(check_all(made, CRIT))
    assert set(out[0]) == set(COLUMNS["claims"])
    lm = [r for r in out if r["claim"] == 1]
    assert {r["verdict"] for r in lm} == {HOLDS} and {r["seed"] for r in lm} == {1, 2} and len(lm) == 20
    assert all(r["ci_low"] <= r["estimate"] <= r["ci_high"] for r in lm)
    path = write_table(tmp_path / "claims.csv", "claims", out, {})
    assert not (tmp_path / "claims.npz").exists()
    import csv

    with open(path, newline="") as f:
        assert len(list(csv.DictReader(f))) == len(out)


def test_every_claim_documents_its_parts():
    doc = claims.__doc__
    for number in range(1, 8):
        assert f"\n{number}. " in doc
