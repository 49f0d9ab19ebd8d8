"""Amount of change on dumps built to have known answers."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.change import run, token_groups
from analysis.dumps import load_dump
from analysis.tables import read_table
from pipeline.config import compose
from pipeline.store import PipelineError
from tests.synthetic import token_columns, write_fake_dump

D = 8


@pytest.fixture
def experiment(tmp_path):
    """A 3-layer dump: layer 1 = an invertible map of layer 0 (no change), layer 2 = layer 1 plus
    strong independent noise (much change), layer 3 = a copy of layer 2 (no change). Token ids 5..
    have frequency rank id - 4, so buckets 1-10 and 10-25 are large, 25-50 is small."""
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
                    "analysis.change.measures=[pwcca,svcca,cka]", "analysis.min_bucket_tokens=10"])


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


def test_buckets_are_equal_sized_and_small_ones_left_out(experiment):
    d = load_dump(experiment.paths.results + "/dumps/mt/seed1")
    groups, described = token_groups(d, experiment)
    assert len(groups["all"]) == d.n_tokens
    sizes = {len(v) for k, v in groups.items() if k != "all"}
    assert len(sizes) == 1 and set(groups) == {"all", "1-10", "10-25"}
    assert "25-50" in described  # named as left out, with its count
    ranks = d.tokens["freq_rank"]
    assert ((ranks[groups["10-25"]] >= 10) & (ranks[groups["10-25"]] < 25)).all()


def test_bad_measure_names_the_setting(experiment, tmp_path):
    bad = compose(["experiment=smoke", f"paths.results={tmp_path}", "objective=mt", "seed=1",
                   "analysis.change.measures=[pwcca,cosine]"])
    with pytest.raises(PipelineError, match="analysis.change.measures"):
        run(bad)
