"""Amount of change on dumps built to have known answers."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.stats.buckets import shuffle_seed
from analysis.measures.change import run, token_groups
from analysis.io.dumps import load_dump
from analysis.stats.cca import pwcca_distance
from analysis.io.tables import merge_parts, read_record, read_table
from pipeline.config.compose import compose
from pipeline.errors import PipelineError
from tests.synthetic import token_columns, write_fake_dump

D = 8


@pytest.fixture
def experiment(tmp_path):
    """A 3-layer dump: layer 1 = an invertible map of layer 0 (no change), layer 2 = layer 1 plus
    strong independent noise (much change), layer 3 = a copy of layer 2 (no change). Token ids 5..
    have frequency rank id - 4, so buckets 1-10 and 10-25 are large, 25-50 is below the floor of
    10 tokens per feature (80 tokens)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 12, size=400)
    ids = np.concatenate([rng.choice(np.arange(5, 29), size=n) for n in lengths])
    ids[rng.random(len(ids)) < 0.02] = 40  # a few tokens of rank 36: a bucket below the floor
    ranks = np.maximum(np.arange(60) - 4, 1)
    n = len(ids)
    layer0 = rng.standard_normal((n, D)) + 0.3 * rng.standard_normal(60)[ids, None]
    q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    layer1 = layer0 @ (q * np.linspace(1, 2, D)) + 5.0  # invertible and well conditioned (the ridge is negligible)
    layer2 = layer1 + 3 * layer1.std() * rng.standard_normal((n, D))
    states = [layer0, layer1, layer2, layer2.copy()]
    write_fake_dump(tmp_path / "dumps/mt/seed1", states, token_columns(lengths, ids, ranks), "mt", 1, dtype=np.float32)
    return compose(["experiment=smoke", f"paths.results={tmp_path}", "objective=mt", "seed=1",
                    "analysis.change.measures=[pwcca,svcca,cka]", "analysis.min_samples_per_dim=10",
                    "analysis.buckets=[1,10,25,50]"])


def test_known_changes(experiment):
    run(experiment)
    rows = read_table(experiment.paths.metrics + "/change/mt/seed1.csv", "change")
    by = {(r["measure"], int(r["layer_from"]), r["bucket"]): float(r["distance"]) for r in rows}
    for measure in ("pwcca", "svcca"):
        for bucket in ("all", "1-10", "10-25"):
            assert by[measure, 0, bucket] < 1e-5, (measure, bucket)  # a linear map: nothing changed
            assert by[measure, 2, bucket] < 1e-5
            assert by[measure, 1, bucket] > 0.3  # the noise
    assert by["cka", 2, "all"] < 1e-6 and by["cka", 1, "all"] > 0.3
    assert {int(r["layer_to"]) - int(r["layer_from"]) for r in rows} == {1}
    for r in rows:  # rows shuffled: far from the unchanged layer pairs' 0, whatever the layers
        assert float(r["shuffled"]) > (0.5 if r["measure"] == "pwcca" else 0.3), r
    ci = {(r["measure"], int(r["layer_from"]), r["bucket"]): (float(r["ci_low"]), float(r["ci_high"])) for r in rows}
    for key, (low, high) in ci.items():  # intervals over sentences: unchanged pairs stay near 0, apart from the noise
        assert low <= high, key
        if key[0] != "cka" or key[1] == 2:  # CKA is not invariant to layer 1's anisotropic scaling
            assert (high < 1e-4) if key[1] != 1 else (low > 0.2), key
    assert ci["pwcca", 1, "all"][1] - ci["pwcca", 1, "all"][0] > 0


def test_every_row_has_its_n_and_shuffled_level(experiment):
    """The shuffled level is the same distance with the upper layer's rows permuted by the group's
    seeded permutation: a direct computation on those rows gives the same number."""
    run(experiment)
    rows = read_table(experiment.paths.metrics + "/change/mt/seed1.csv", "change")
    d = load_dump(experiment.paths.results + "/dumps/mt/seed1")
    groups, plan = token_groups(d, experiment)
    for i, (label, idx) in enumerate(groups.items()):
        mine = [r for r in rows if r["bucket"] == label]
        assert {int(r["n_tokens"]) for r in mine} == {len(idx)} and len(idx) >= 10 * D
        perm = shuffle_seed(experiment, i).permutation(len(idx))
        lower, upper = d.states(1, idx), d.states(2, idx)
        row = next(r for r in mine if r["measure"] == "pwcca" and r["layer_from"] == "1")
        assert float(row["shuffled"]) == pytest.approx(pwcca_distance(lower, upper[perm], symmetric=True), abs=1e-9)
        assert float(row["distance"]) == pytest.approx(pwcca_distance(lower, upper, symmetric=True), abs=1e-9)


def test_buckets_are_equal_sized_and_small_ones_left_out(experiment, tmp_path):
    d = load_dump(experiment.paths.results + "/dumps/mt/seed1")
    groups, plan = token_groups(d, experiment)
    assert len(groups["all"]) == d.n_tokens
    sizes = {len(v) for k, v in groups.items() if k != "all"}
    assert len(sizes) == 1 and set(groups) == {"all", "1-10", "10-25"}
    small = int(((d.tokens["freq_rank"] >= 25) & (d.tokens["freq_rank"] < 50)).sum())
    assert 0 < small < 10 * D
    assert plan.left_out() == [{"bucket": "25-50", "n": small, "floor": 10 * D,
                                "reason": f"{small} tokens < floor {10 * D}"}]
    # ... and the table's record names it, with its n and the floor, for the report
    run(experiment)
    record = read_record(experiment.paths.metrics + "/change/mt/seed1.csv")
    assert record["left_out"] == plan.left_out() and record["floor"] == 10 * D and record["model"] == "mt/seed1"
    merged = merge_parts([experiment.paths.metrics + "/change/mt/seed1.csv"], tmp_path / "change.csv", "change")
    assert read_record(merged)["parts"][0]["left_out"] == plan.left_out()
    ranks = d.tokens["freq_rank"]
    assert ((ranks[groups["10-25"]] >= 10) & (ranks[groups["10-25"]] < 25)).all()


def test_bad_measure_names_the_setting(experiment, tmp_path):
    bad = compose(["experiment=smoke", f"paths.results={tmp_path}", "objective=mt", "seed=1",
                   "analysis.change.measures=[pwcca,cosine]"])
    with pytest.raises(PipelineError, match="analysis.change.measures"):
        run(bad)
