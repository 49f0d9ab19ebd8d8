"""analysis.stats.kmeans and analysis.measures.mutual_info: known answers of the estimate, the k-means it rests on,
and which rows and labels each target uses, on fake dumps in the real on-disk format."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from analysis.stats import kmeans as kmeans_mod
from analysis.io.dumps import load_dump
from pipeline.config.layout import dump_folder
from analysis.stats.kmeans import assign, kmeans
from analysis.measures.mutual_info import (entropy, masked_rows, mi_of_clusters, mutual_information, next_token_rows,
                                  plugin_mi, row_sets, run)
from analysis.io.tables import read_table
from pipeline.config.layout import part_path
from pipeline.config.compose import compose
from tests.synthetic import token_columns, write_fake_dump


def blobs(n_per: int, n_blobs: int, d: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs with centres far apart (distance ~ 100 spread): (points, blob id)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_blobs, d)) * 100 * spread
    ids = np.repeat(np.arange(n_blobs), n_per)
    return (centres[ids] + rng.normal(size=(len(ids), d)) * spread).astype(np.float32), ids


# ---------------------------------------------------------------- the plug-in estimate

def test_plugin_mi_agrees_with_sklearn():
    rng = np.random.default_rng(0)
    for n, ka, kb in [(50, 3, 4), (2000, 40, 300), (5000, 1000, 7)]:
        a = rng.integers(0, ka, n) * 13 + 1000  # arbitrary, non-contiguous label values
        b = (a // 13 + rng.integers(0, 3, n)) % kb  # dependent on a
        assert plugin_mi(a, b) == pytest.approx(mutual_info_score(a, b), abs=1e-10)
        assert plugin_mi(b, a) == pytest.approx(plugin_mi(a, b), abs=1e-12)
    a = rng.integers(0, 50, 3000)
    assert plugin_mi(a, a) == pytest.approx(entropy(a), abs=1e-10)  # I(X; X) = H(X)
    assert plugin_mi(a, np.zeros_like(a)) == 0.0
    with pytest.raises(ValueError, match="different lengths"):
        plugin_mi(a, a[:-1])


def test_independent_labels_give_corrected_mi_near_zero():
    rng = np.random.default_rng(1)
    states = rng.normal(size=(6000, 16)).astype(np.float32)
    labels = rng.integers(0, 30, len(states))
    est = mutual_information(states, labels, n_clusters=100, seed=0)
    assert est.mi > 0.15  # the plug-in bias: clearly above the true value 0 ...
    assert abs(est.mi_corrected) < 0.03  # ... and removed by the shuffled chance level
    assert est.mi_corrected == pytest.approx(est.mi - est.mi_shuffled)
    assert (est.n_tokens, est.n_labels, est.n_clusters) == (6000, 30, 100)


def test_labels_that_are_a_function_of_separated_clusters_reach_their_entropy():
    states, blob = blobs(n_per=150, n_blobs=12, d=8, spread=1.0, seed=2)
    labels = np.array([5, 5, 9, 9, 9, 1, 2, 2, 7, 7, 7, 7])[blob]  # a many-to-one function of the blob
    est = mutual_information(states, labels, n_clusters=12, seed=3)
    assert est.mi == pytest.approx(entropy(labels), abs=1e-9)
    assert est.mi_corrected > 0.9 * entropy(labels)


def test_raw_estimate_grows_with_the_number_of_clusters():
    rng = np.random.default_rng(4)
    states, blob = blobs(n_per=100, n_blobs=20, d=8, spread=1.0, seed=4)
    labels = np.where(rng.random(len(blob)) < 0.7, blob, rng.integers(0, 20, len(blob)))  # noisy function
    raw = [mutual_information(states, labels, k, seed=0).mi for k in (2, 5, 20, 200, 1000)]
    assert all(a < b for a, b in itertools.pairwise(raw)), raw


def test_shuffled_chance_level_is_seeded():
    clusters = np.random.default_rng(5).integers(0, 50, 3000)
    labels = clusters % 7
    a, b, c = (mi_of_clusters(clusters, labels, s) for s in (0, 0, 1))
    assert a == b and a.mi_shuffled != c.mi_shuffled and a.mi == c.mi


# ---------------------------------------------------------------- k-means

@pytest.mark.parametrize("batch_size", [None, 256])
def test_kmeans_recovers_separated_clusters(batch_size):
    states, blob = blobs(n_per=200, n_blobs=10, d=6, spread=1.0, seed=6)
    result = kmeans(states, 10, seed=0, iters=20, batch_size=batch_size)
    assert plugin_mi(result.labels, blob) == pytest.approx(entropy(blob), abs=1e-9)  # same partition
    assert result.centroids.shape == (10, 6) and result.inertia < 6 * 1.5  # ~ d * spread^2 per point
    labels, dist = assign(torch.from_numpy(states), result.centroids)
    assert np.array_equal(labels.numpy(), result.labels)  # labels are the final nearest centres
    assert float(dist.mean()) == pytest.approx(result.inertia, rel=1e-5)


def test_kmeans_is_deterministic_and_block_size_free(monkeypatch):
    states = np.random.default_rng(7).normal(size=(1500, 5)).astype(np.float32)
    first = kmeans(states, 40, seed=3, iters=5)
    assert np.array_equal(first.labels, kmeans(states, 40, seed=3, iters=5).labels)
    assert not np.array_equal(first.labels, kmeans(states, 40, seed=4, iters=5).labels)
    monkeypatch.setattr(kmeans_mod, "CHUNK_ELEMENTS", 97)  # many tiny blocks: same distances
    assert np.array_equal(first.labels, kmeans(states, 40, seed=3, iters=5).labels)


def test_kmeans_with_fewer_distinct_points_than_clusters():
    states = np.repeat(np.eye(4, dtype=np.float32), 50, axis=0)  # 4 distinct points, 200 rows
    result = kmeans(states, 10, seed=0)
    assert result.inertia == 0.0 and len(np.unique(result.labels)) == 4
    with pytest.raises(ValueError, match="n_clusters=300"):
        kmeans(states, 300, seed=0)


# ---------------------------------------------------------------- rows and labels of each target

RANKS = np.array([50, 1, 2, 3, 4, 5, 6, 1500, 2000, 9])  # token id -> frequency rank; 7 and 8 are rare


def tiny_columns() -> dict:
    # three sentences: [1 2 7 3] [4 8] [5 6 1]
    return token_columns([4, 2, 3], [1, 2, 7, 3, 4, 8, 5, 6, 1], RANKS)


def test_next_token_labels_stay_in_the_sentence_and_drop_rare_labels():
    rs = next_token_rows(tiny_columns(), top_types=1000)
    # row t -> token t + 1; rows 3, 5, 8 end their sentences; rows 1 and 4 predict rare 7 and 8
    assert rs.rows.tolist() == [0, 2, 6, 7] and rs.labels["output"].tolist() == [2, 3, 6, 1]
    assert not rs.masked and list(rs.labels) == ["output"]


def test_masked_rows_are_those_whose_input_differs_from_the_label():
    cols = tiny_columns()
    label = cols["token_id"]
    inputs = np.array([9, 2, 9, 3, 4, 9, 0, 6, 1])  # 9 plays [MASK]; row 6 a random token, row 3 kept
    masked = {**cols, "masked": np.array([1, 0, 1, 3, 0, 1, 2, 0, 0]), "input_id": inputs, "label_id": label}
    rs = masked_rows(masked, top_types=1000)
    assert rs.masked and rs.rows.tolist() == [0, 6]  # rows 2 and 5 are masked but their token is rare
    assert rs.labels["output"].tolist() == [1, 5] and rs.labels["input_masked"].tolist() == [9, 0]


def fake_model(root, objective: str, seed: int, n_sent: int = 60, d: int = 6, layers: int = 2,
               sweep: str = "[4,16]"):
    """A fake dump of `objective` at the workflow's place; MLM with a masked run."""
    cfg = compose([f"paths.results={root}", f"objective={objective}", f"seed={seed}", "analysis.device=cpu",
                   "analysis.mi.n_clusters=8", f"analysis.mi.sweep={sweep}", "analysis.mi.top_types=6",
                   "analysis.mi.max_tokens=null"])
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 8, n_sent)
    ids = rng.integers(1, 10, lengths.sum())
    cols = token_columns(lengths, ids, RANKS)
    states = [rng.normal(size=(len(ids), d)).astype(np.float32) for _ in range(layers + 1)]
    masked = None
    if objective == "mlm":
        kind = rng.choice([0, 1, 2, 3], size=len(ids), p=[0.6, 0.3, 0.05, 0.05])
        inputs = np.where(kind == 1, 0, np.where(kind == 2, rng.integers(1, 10, len(ids)), ids))
        masked = ([s + 1 for s in states], {"masked": kind, "input_id": inputs, "label_id": ids})
    write_fake_dump(dump_folder(cfg, objective, seed), states, cols, objective, seed, masked=masked)
    return cfg


def test_row_sets_by_kind(tmp_path):
    for objective, expected in [("mt", [["input"]]), ("lm", [["input"], ["output"]]),
                                ("mlm", [["input"], ["input_masked", "output"]]), ("init", [["input"]])]:
        cfg = fake_model(tmp_path, objective, 1)
        dump = load_dump(dump_folder(cfg, objective, 1))
        sets = row_sets(dump, top_types=6, max_tokens=None, sample_seed=0)
        assert [list(s.labels) for s in sets] == expected
        assert [s.masked for s in sets] == [False, objective == "mlm"][:len(sets)]
        assert (dump.tokens["freq_rank"][sets[0].rows] <= 6).all()
        capped = row_sets(dump, top_types=6, max_tokens=25, sample_seed=0)
        assert all(len(s.rows) == 25 and np.isin(s.rows, full.rows).all() for s, full in zip(capped, sets))


def test_run_writes_every_layer_and_target_with_the_sweep_for_the_first_seed_only(tmp_path):
    for seed, counts in [(1, {4, 8, 16}), (2, {8})]:  # workflow.seeds.mlm = [1, 2]
        cfg = fake_model(tmp_path, "mlm", seed)
        rows = read_table(run(cfg), "mi")
        assert read_table(part_path(cfg, "mi"), "mi") == rows
        assert {(r["objective"], r["seed"]) for r in rows} == {("mlm", str(seed))}
        keys = {(int(r["layer"]), r["target"], int(r["n_clusters"])) for r in rows}
        assert keys == {(layer, t, k) for layer in range(3) for t in ("input", "input_masked", "output")
                        for k in counts}
        assert len(rows) == len(keys)
        for r in rows:
            assert float(r["mi_corrected"]) == pytest.approx(float(r["mi"]) - float(r["mi_shuffled"]))
            ci = [float(r[c]) for c in ("ci_low", "ci_high", "corrected_ci_low", "corrected_ci_high")]
            if int(r["n_clusters"]) == 8:  # the main count: intervals over sentences
                assert ci[0] <= ci[1] and ci[2] <= ci[3] and ci[1] - ci[0] > 0
            else:  # the sweep: none
                assert all(np.isnan(ci))
        masked_n = {r["n_tokens"] for r in rows if r["target"] != "input"}
        assert len(masked_n) == 1  # input_masked and output: the same rows


def test_restarts_give_the_mean_and_spread_at_the_main_count_only(tmp_path):
    cfg = fake_model(tmp_path / "one", "mlm", 1)
    cfg.analysis.mi.restarts = 1
    one = read_table(run(cfg), "mi")
    cfg = fake_model(tmp_path / "three", "mlm", 1)
    cfg.analysis.mi.restarts = 3
    three = read_table(run(cfg), "mi")
    assert [(r["layer"], r["target"], r["n_clusters"]) for r in one] == [
        (r["layer"], r["target"], r["n_clusters"]) for r in three]
    for r1, r3 in zip(one, three):
        spread = float(r3["mi_sd"]), float(r3["mi_corrected_sd"])
        if r3["n_clusters"] == "8":  # the main count: three clusterings, their mean and spread
            assert all(s >= 0 for s in spread)
            assert float(r3["mi_corrected"]) == pytest.approx(float(r3["mi"]) - float(r3["mi_shuffled"]))
            # the interval: centred on the restarts' mean, its width that of the first restart's clustering
            width = float(r1["ci_high"]) - float(r1["ci_low"])
            assert float(r3["ci_high"]) - float(r3["ci_low"]) == pytest.approx(width)
            assert (float(r3["ci_low"]) + float(r3["ci_high"])) / 2 == pytest.approx(float(r3["mi"]))
        else:  # the sweep: one clustering, the same as before
            assert all(np.isnan(spread)) and r1["mi"] == r3["mi"]
        assert np.isnan(float(r1["mi_sd"]))


def test_step0_control_has_input_mi_only_and_no_sweep(tmp_path):
    """init has no output label, and no seed list of its own in workflow.seeds: the main count only."""
    cfg = fake_model(tmp_path, "init", 1)
    rows = read_table(run(cfg), "mi")
    assert {(r["objective"], r["target"], r["n_clusters"]) for r in rows} == {("init", "input", "8")}
    assert sorted(int(r["layer"]) for r in rows) == [0, 1, 2]


def test_more_clusters_than_rows_are_measured_once_with_every_row_its_own_cluster(tmp_path):
    cfg = fake_model(tmp_path, "mlm", 1, sweep="[4,5000,9000]")
    rows = read_table(run(cfg), "mi")
    keys = [(r["layer"], r["target"], r["n_clusters"]) for r in rows]
    assert len(keys) == len(set(keys)) == 3 * 3 * 3  # 8, 4 and n_tokens clusters per layer and target
    for r in rows:
        if int(r["n_clusters"]) not in (4, 8):
            assert r["n_clusters"] == r["n_tokens"]  # one row per cluster: the estimate is H(labels) ...
            assert float(r["mi_corrected"]) == pytest.approx(0.0, abs=1e-9)  # ... whatever the labels
