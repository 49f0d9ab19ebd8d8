"""analysis.neighbours: exact search against brute force, and each property on states built so that
the answer is known (one-hot token identity, position only, groups with a known share)."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.measures import neighbours as nb
from pipeline.config.layout import dump_folder
from analysis.measures.neighbours import NO_TOKEN, context_tokens, nearest_neighbours, neighbour_properties, run
from analysis.io.tables import read_table
from pipeline.config.compose import compose
from tests.synthetic import token_columns, write_fake_dump


def one_hot(index: np.ndarray, size: int | None = None) -> np.ndarray:
    return np.eye(size or int(index.max()) + 1, dtype=np.float32)[index]


def columns(lengths, ids) -> dict:
    return token_columns(lengths, ids, np.arange(1, int(np.max(ids)) + 2))


def brute_force(x: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    if metric == "cosine":
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        score = u[queries] @ u.T
    else:
        score = -((x[queries, None, :] - x[None]) ** 2).sum(-1)
    score[np.arange(len(queries)), queries] = -np.inf
    return np.argsort(-score, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_search_matches_brute_force_in_any_block_size(metric, monkeypatch):
    x = np.random.default_rng(0).normal(size=(400, 12)).astype(np.float32) * np.linspace(0.2, 3, 400)[:, None]
    queries = np.array([0, 5, 17, 399, 200])
    expected = brute_force(x.astype(np.float64), queries, 7, metric)
    assert np.array_equal(nearest_neighbours(x, queries, 7, metric), expected)
    monkeypatch.setattr(nb, "CHUNK_ELEMENTS", 1)  # one query per block
    assert np.array_equal(nearest_neighbours(x, queries, 7, metric), expected)


def test_cosine_ignores_the_norm_and_euclidean_does_not():
    pool = np.array([[1, 0], [10, 0.5], [0.9, 0.9], [0, 1]], dtype=np.float32)
    assert nearest_neighbours(pool, np.array([0]), 1, "cosine").tolist() == [[1]]  # same direction
    assert nearest_neighbours(pool, np.array([0]), 1, "euclidean").tolist() == [[2]]  # closest point


def test_a_query_is_never_its_own_neighbour_even_among_duplicates():
    pool = np.ones((6, 3), dtype=np.float32)
    result = nearest_neighbours(pool, np.arange(6), 5, "cosine")
    for q, row in enumerate(result):
        assert sorted(row.tolist()) == [i for i in range(6) if i != q]
    with pytest.raises(ValueError, match="k=6"):
        nearest_neighbours(pool, np.arange(6), 6)


def test_context_tokens_have_a_sentinel_at_sentence_edges():
    left, right = context_tokens(columns([3, 1, 2], [4, 5, 6, 7, 8, 9]))
    assert left.tolist() == [NO_TOKEN, 4, 5, NO_TOKEN, NO_TOKEN, 8]
    assert right.tolist() == [5, 6, NO_TOKEN, NO_TOKEN, 9, NO_TOKEN]


def test_one_hot_identity_states_give_identity_one():
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(1, 9), 12)[rng.permutation(96)]  # 8 types x 12 occurrences
    cols = columns([6] * 16, ids)
    queries = np.arange(96)
    props = neighbour_properties(nearest_neighbours(one_hot(ids), queries, 11), queries, cols)
    assert props["identity"] == (1.0, 96)


def test_position_only_states_give_position_distance_zero():
    rng = np.random.default_rng(2)
    lengths = [5] * 40
    ids = rng.integers(1, 4, 200)  # 3 types: every query has neighbours of its type
    cols = columns(lengths, ids)
    queries = np.arange(200)
    props = neighbour_properties(nearest_neighbours(one_hot(cols["position"]), queries, 20), queries, cols)
    value, n = props["position"]
    assert value == 0.0 and n == 200
    assert props["identity"][0] == pytest.approx(1 / 3, abs=0.1)  # identity is not kept


def test_known_shares_in_groups():
    # 12 groups of 11 occurrences (k = 10: a query's neighbours are exactly the rest of its group);
    # in each group 6 occurrences of token A and 5 of token B: identity = (6*5/10 + 5*4/10) / 11.
    groups = np.repeat(np.arange(12), 11)
    ids = np.where(np.tile(np.arange(11), 12) < 6, 2 * groups + 1, 2 * groups + 2)
    cols = columns([11] * 12, ids)  # one sentence per group: positions 0..10, A at 0..5, B at 6..10
    queries = np.arange(len(ids))
    props = neighbour_properties(nearest_neighbours(one_hot(groups), queries, 10), queries, cols)
    assert props["identity"][0] == pytest.approx((6 * 0.5 + 5 * 0.4) / 11)
    # within a token run of length m at consecutive positions, mean |i - j| over j != i
    runs = [np.abs(np.arange(m)[:, None] - np.arange(m)).sum(1) / (m - 1) for m in (6, 5)]
    assert props["position"][0] == pytest.approx(np.concatenate(runs).mean())
    # left token: as counted by hand over a group (a query at position 0 has the sentinel: no match)
    left, _ = context_tokens(cols)
    share = [np.mean([left[j] == left[i] and left[i] != NO_TOKEN for j in range(11) if j != i])
             for i in range(11)]
    assert props["left_token"][0] == pytest.approx(np.mean(share))
    assert props["left_token"][0] > 0


def test_run_writes_every_layer_and_property(tmp_path):
    cfg = compose([f"paths.results={tmp_path}", "objective=lm", "seed=1", "analysis.device=cpu",
                   "analysis.neighbours.k=5", "analysis.neighbours.max_queries=40"])
    rng = np.random.default_rng(3)
    lengths = np.array([4] * 10 + [6] * 20)  # >= 20 tokens at every position
    ids = rng.integers(1, 20, lengths.sum())
    cols = columns(lengths, ids)
    states = [one_hot(ids, 20), one_hot(cols["position"], 20), rng.normal(size=(len(ids), 20))]
    write_fake_dump(dump_folder(cfg, "lm", 1), states, cols, "lm", 1)
    rows = read_table(run(cfg), "neighbours")
    assert [(r["layer"], r["property"]) for r in rows] == [(str(layer), p) for layer in range(3)
                                                          for p in ("identity", "position", "left_token",
                                                                    "right_token")]
    assert {(r["k"], r["metric"]) for r in rows} == {("5", "cosine")}
    by = {(int(r["layer"]), r["property"]): float(r["value"]) for r in rows}
    assert by[0, "identity"] > by[2, "identity"] and by[1, "position"] == 0.0
    assert all(int(r["n_queries"]) == 40 for r in rows if r["property"] != "position")
    for r in rows:  # the interval over the queries' sentences holds the estimate
        assert float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"])


def test_sentence_edges_never_match_each_other():
    # states = position: the first tokens of all sentences are each other's neighbours, and so are
    # the last ones; none has a left (right) token, so none shares it, whatever the neighbours are.
    rng = np.random.default_rng(4)
    cols = columns([4] * 30, rng.integers(1, 3, 120))  # 2 token types: inner contexts often match
    states = one_hot(cols["position"])
    first, last = np.flatnonzero(cols["position"] == 0), np.flatnonzero(cols["position"] == 3)
    for queries, edge, inner in ((first, "left_token", "right_token"), (last, "right_token", "left_token")):
        props = neighbour_properties(nearest_neighbours(states, queries, 20), queries, cols)
        assert props[edge] == (0.0, len(queries))
        assert props[inner][0] > 0.3  # the other side does match, so 0 is not an accident


# ---------------------------------------------------------------- the interval resamples the pool too

def test_weighted_neighbours_with_unit_weights_are_the_plain_ones():
    """Under a resample that draws every group once, the resampled values equal the plain estimate; a
    resample that leaves a query's nearest group out takes its next neighbours instead."""
    from analysis.stats.bootstrap import unit_of

    rng = np.random.default_rng(5)
    cols = columns([5] * 40, rng.integers(1, 6, 200))
    states = one_hot(cols["token_id"], 8) + 0.3 * rng.normal(size=(200, 8))
    queries = np.arange(0, 200, 3)
    candidates = nearest_neighbours(states, queries, 30)
    pairs = nb.pair_properties(candidates, queries, cols)
    units = unit_of(cols["sentence_id"], 25, 0)
    plain = {p: np.nanmean(v) for p, v in nb.per_query_properties(candidates[:, :10], queries, cols).items()}
    reps, short = nb.resampled_properties(pairs, units[candidates], units[queries], np.ones((1, 25), int), 10)
    for prop in nb.PROPERTIES:
        assert reps[prop][0] == pytest.approx(plain[prop], abs=1e-6)
    assert short == 0
    drop = np.ones((1, 25), int)
    drop[0, units[candidates[0, 0]]] = 0  # the first query's nearest neighbour's group is not drawn
    kept = candidates[0][drop[0, units[candidates[0]]] > 0][:10]
    alone = nb.pair_properties(candidates[:1], queries[:1], cols)
    got, _ = nb.resampled_properties(alone, units[candidates[:1]], units[queries[:1]] * 0 + units[queries[0]], drop, 10)
    if drop[0, units[queries[0]]]:  # the query itself is drawn: its value is that of its drawn neighbours
        want = nb.per_query_properties(kept[None, :], queries[:1], cols)["identity"][0]
        assert got["identity"][0] == pytest.approx(want)


def _draw_probe(rng: np.random.Generator, n_sentences: int = 150, length: int = 8, offset: int = 0):
    """Sentences of tokens from a Zipf-like vocabulary; a token's state is its type's vector, its
    sentence's context and noise, so that neighbours share sentences and types."""
    ids = rng.zipf(1.6, n_sentences * length) % 40
    sentence = np.repeat(np.arange(n_sentences), length)
    context = rng.normal(size=(n_sentences, 16))[sentence]
    states = TYPES[ids] + 0.9 * context + 0.7 * rng.normal(size=(len(ids), 16))
    cols = columns([length] * n_sentences, ids)
    cols["sentence_id"] = cols["sentence_id"] + offset
    return states, cols


TYPES = np.random.default_rng(99).normal(size=(40, 16))


def test_the_neighbours_interval_covers_at_about_the_nominal_rate_when_it_resamples_the_pool():
    """Coverage measured on data drawn afresh 150 times: the interval that resamples the pool with the
    queries covers the mean identity share (the estimand at this sample size) at about the nominal
    rate; the interval over the queries alone, which treats the pool as fixed, is narrower."""
    from analysis.stats.bootstrap import draws, interval, unit_of, weighted_means

    rng = np.random.default_rng(11)
    k, estimates, full, queries_only = 10, [], [], []
    for trial in range(150):
        states, cols = _draw_probe(rng, offset=1000 * trial)
        queries = np.sort(rng.choice(len(states), 300, replace=False))
        candidates = nearest_neighbours(states, queries, 3 * k)
        values = nb.per_query_properties(candidates[:, :k], queries, cols)["identity"]
        units, counts = unit_of(cols["sentence_id"], 200, 0), draws(200, 200, trial)
        reps, _ = nb.resampled_properties(nb.pair_properties(candidates, queries, cols), units[candidates],
                                          units[queries], counts, k)
        estimates.append(values.mean())
        full.append(interval(reps["identity"], 0.95, values.mean()))
        queries_only.append(interval(weighted_means(values, units[queries], counts), 0.95, values.mean()))
    truth = np.mean(estimates)
    coverage = {name: np.mean([low <= truth <= high for low, high in ints])
                for name, ints in (("full", full), ("queries", queries_only))}
    width = {name: np.median([high - low for low, high in ints]) for name, ints in (("full", full),
                                                                                     ("queries", queries_only))}
    print(f"coverage {coverage}, median width {width}, sd of the estimates {np.std(estimates):.4f}")
    assert 0.88 <= coverage["full"] <= 0.99
    assert width["queries"] < width["full"]
