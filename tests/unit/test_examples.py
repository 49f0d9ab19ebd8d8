"""analysis.measures.examples (the neighbours explorer's table) on fake dumps: which words and occurrences
are queried (the same for every model of a tokenizer, and by key for another tokenizer), neighbours built
to be known coming out nearest first with the right flags, the query never its own neighbour, every row's
sentence, and bad settings refused."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.io.dumps import sentence_pieces
from analysis.io.tables import COLUMNS, read_table
from analysis.measures.examples import choose_queries, frequent_words, run
from analysis.measures.neighbours import pair_properties
from analysis.report.gather import load_table
from pipeline.config.compose import compose
from pipeline.config.layout import dump_folder, part_path
from pipeline.errors import PipelineError
from tests.synthetic import token_columns, write_fake_dump

PIECES = ["▁the", "▁is", "▁dog", "s", ".", "▁a", "▁42", "▁cat", "▁we"]


def columns(sentences: list[list[int]]) -> dict:
    cols = token_columns([len(s) for s in sentences], np.concatenate(sentences), np.arange(1, len(PIECES) + 1), PIECES)
    cols["token"] = np.asarray(cols["token"])  # as read back from tokens.tsv
    return cols


def random_sentences(n: int, seed: int = 3) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, len(PIECES), size=rng.integers(3, 9))] for _ in range(n)]


def gpt2_style(cols: dict) -> dict:
    """The same sentences as a byte-level BPE dump would hold them: "Ġ" for "▁" (none on a sentence's first
    word), ids of its own, and the `word` column (whitespace words: "s" and "." stay in the word before)."""
    pieces = [("" if p == 0 else "Ġ") + t[1:] if t.startswith("▁") else t
              for t, p in zip(cols["token"].tolist(), cols["position"].tolist())]
    starts = np.asarray([t.startswith("▁") or p == 0 for t, p in zip(cols["token"].tolist(), cols["position"].tolist())])
    word = np.cumsum(starts) - 1
    first = np.flatnonzero(cols["position"] == 0)
    word -= np.repeat(word[first], np.diff(np.append(first, len(word))))
    return {**cols, "token_id": cols["token_id"] + 1000, "token": np.asarray(pieces), "word": word}


def cfg_of(root, objective: str = "lm", seed: int = 1, *overrides: str):
    return compose([f"paths.results={root}", f"objective={objective}", f"seed={seed}", "analysis.device=cpu",
                    "analysis.examples.words=2", "analysis.examples.per_word=3", "analysis.examples.k=3", *overrides])


def write_dump(cfg, cols: dict, states: list[np.ndarray]) -> None:
    write_fake_dump(dump_folder(cfg), states, cols, str(cfg.label), int(cfg.seed))


# ---------------------------------------------------------------- the words and the queries

def test_the_most_frequent_alphabetic_whole_words_ties_by_the_word():
    the, is_, dog, s, dot, a, n42, cat, _ = range(9)
    cols = columns([[the, dog, s, dot], [the, cat, is_, a, dog], [n42, is_, the, dog, dot], [the, the, n42]])
    found = frequent_words(cols, 4)
    # "dogs" (▁dog + s) is no occurrence of "dog"; "42" is not alphabetic; dog and is tie (2), a and cat (1)
    assert list(found) == ["the", "dog", "is", "a"]
    assert [len(r) for r in found.values()] == [5, 2, 2, 1]
    assert list(frequent_words(cols, 1)) == ["the"] and len(frequent_words(cols, 50)) == 5
    queries = choose_queries(cols, 1, 10, seed=0)
    keys = {key for key, _, _ in queries}
    assert keys == {"0:the:0", "1:the:0", "2:the:0", "3:the:0", "3:the:1"}
    for key, word, row in queries:  # the key names the row: its sentence, word and occurrence
        sid, w, n = key.split(":")
        rows = np.flatnonzero((cols["sentence_id"] == int(sid)) & (cols["token"] == "▁" + w))
        assert w == word and rows[int(n)] == row


def test_queries_depend_on_the_keys_only():
    cols = columns(random_sentences(80))
    queries = choose_queries(cols, 3, 4, seed=0)
    assert len(queries) == 12 and len({w for _, w, _ in queries}) == 3
    assert queries == choose_queries(dict(cols), 3, 4, seed=0)
    assert {k for k, _, _ in choose_queries(cols, 3, 4, seed=1)} != {k for k, _, _ in queries}
    # another tokenizer's dump of the same sentences (its own pieces, ids and word column) picks the same keys
    other = choose_queries(gpt2_style(cols), 3, 4, seed=0)
    assert [(k, w) for k, w, _ in other] == [(k, w) for k, w, _ in queries]


# ---------------------------------------------------------------- neighbours built to be known

def designed_states(n: int, queries: np.ndarray, free: np.ndarray, weights) -> tuple[np.ndarray, dict]:
    """One-hot rows (cosine 0 to each other) but for 3 rows per query, which lean towards it by
    `weights`: their cosine to the query falls with the weight. Returns the states and query -> those rows."""
    x = np.eye(n, dtype=np.float32)
    near = {}
    for i, q in enumerate(queries):
        rows = free[3 * i:3 * i + 3]
        for r, w in zip(rows, weights):
            x[r, q] = w
        near[int(q)] = [int(r) for _, r in sorted(zip(weights, rows), key=lambda p: -p[0])]
    return x, near


def test_known_neighbours_come_out_nearest_first_with_their_flags(tmp_path):
    cfg = cfg_of(tmp_path)
    cols = columns(random_sentences(40))
    n = len(cols["token_id"])
    key_of = {row: key for key, _, row in choose_queries(cols, 2, 3, int(cfg.analysis.sample_seed))}
    queries = np.asarray(list(key_of))
    free = np.setdiff1d(np.arange(n), queries)[::5][:3 * len(queries)]
    layers = [designed_states(n, queries, free, w) for w in ((3.0, 2.0, 1.0), (1.0, 2.0, 3.0))]
    write_dump(cfg, cols, [layers[0][0], layers[1][0]])
    rows = read_table(run(cfg), "examples")
    assert tuple(rows[0]) == COLUMNS["examples"] and len(rows) == 2 * len(queries) * 4
    where = {(int(s), int(p)): i for i, (s, p) in enumerate(zip(cols["sentence_id"], cols["position"]))}
    for layer, (_, near) in enumerate(layers):
        for q in queries:
            mine = [r for r in rows if r["layer"] == str(layer) and r["query"] == key_of[int(q)]]
            found = [where[int(r["sentence_id"]), int(r["position"])] for r in mine]
            assert [int(r["rank"]) for r in mine] == [0, 1, 2, 3]
            assert found == [int(q)] + near[int(q)]
            assert np.allclose([float(r["similarity"]) for r in mine], [1.0, 3 / 10 ** 0.5, 2 / 5 ** 0.5, 1 / 2 ** 0.5],
                               atol=1e-6)
            # the flags: the neighbours measure's definitions, 0/1
            props = pair_properties(np.asarray([found[1:]]), np.asarray([q]), cols)
            assert [int(r["same_token"]) for r in mine[1:]] == props["same"][0].astype(int).tolist()
            assert [int(r["same_left"]) for r in mine[1:]] == props["left_token"][0].astype(int).tolist()
            assert [int(r["same_right"]) for r in mine[1:]] == props["right_token"][0].astype(int).tolist()
            assert [int(r["same_position"]) for r in mine] == [int(cols["position"][j] == cols["position"][q])
                                                               for j in found]
            assert [r["token"] for r in mine] == [str(cols["token"][j]) for j in found]
            first, last = cols["position"][q] == 0, cols["position"][q] == cols["sentence_length"][q] - 1
            assert (mine[0]["same_token"], mine[0]["same_position"]) == ("1", "1")
            assert (mine[0]["same_left"], mine[0]["same_right"]) == (str(int(not first)), str(int(not last)))
            assert mine[0]["word"] == str(cols["token"][q])[1:] and mine[0]["query"].split(":")[1] == mine[0]["word"]


def test_the_query_is_never_its_own_neighbour_and_every_row_carries_its_sentence(tmp_path):
    cfg = cfg_of(tmp_path, "lm", 1, "analysis.examples.k=4")
    cols = columns(random_sentences(30))
    n = len(cols["token_id"])
    write_dump(cfg, cols, [np.ones((n, 4), dtype=np.float32)] * 2)  # every row ties with every other
    rows = read_table(run(cfg), "examples")
    sentences = {}
    for sid, piece in zip(cols["sentence_id"].tolist(), cols["token"].tolist()):
        sentences.setdefault(sid, []).append(piece)
    queries = {}
    for r in rows:
        if r["rank"] == "0":
            queries[r["layer"], r["query"]] = (r["sentence_id"], r["position"])
        else:
            assert (r["sentence_id"], r["position"]) != queries[r["layer"], r["query"]]
        pieces = r["pieces"].split(" ")
        assert pieces[int(r["position"])] == r["token"] and pieces == sentences[int(r["sentence_id"])]
    assert len(queries) == 2 * 6 and {r["rank"] for r in rows} == {str(i) for i in range(5)}


def test_two_models_sharing_the_tokenizer_query_the_same_occurrences(tmp_path):
    cols = columns(random_sentences(40))
    n = len(cols["token_id"])
    picked = {}
    for objective, seed in (("lm", 1), ("mlm", 2)):
        cfg = cfg_of(tmp_path, objective, seed, "analysis.neighbours.metric=euclidean")
        rng = np.random.default_rng(seed)
        write_dump(cfg, cols, [rng.normal(size=(n, 6)).astype(np.float32) for _ in range(3)])
        rows = read_table(run(cfg), "examples")
        assert {(r["objective"], r["seed"]) for r in rows} == {(objective, str(seed))}
        picked[objective] = [(r["layer"], r["query"], r["sentence_id"], r["position"]) for r in rows if r["rank"] == "0"]
        for layer in "012":  # minus the Euclidean distance: 0 for the query, falling with the rank
            for q in {r["query"] for r in rows}:
                sims = [float(r["similarity"]) for r in rows if r["layer"] == layer and r["query"] == q]
                assert sims[0] == 0.0 and all(s < 0 for s in sims[1:]) and sims[1:] == sorted(sims[1:], reverse=True)
        table = load_table(part_path(cfg, "examples"), "examples")
        assert table.rows and isinstance(table.rows[0]["rank"], int) and isinstance(table.rows[0]["similarity"], float)
    assert picked["lm"] == picked["mlm"] and len(picked["lm"]) == 3 * 2 * 3


def test_sentence_pieces_of_a_masked_run_find_each_copy_of_a_sentence():
    cols = columns([[0, 1, 2], [5, 7]])
    twice = {key: np.concatenate([np.asarray(v), np.asarray(v)]) for key, v in cols.items()}
    masked = twice["token"].astype(object)
    masked[9] = "[MASK]"  # the second copy's "▁cat"
    texts = sentence_pieces(twice, np.arange(10), masked)
    assert texts.tolist() == ["▁the ▁is ▁dog"] * 3 + ["▁a ▁cat"] * 2 + ["▁the ▁is ▁dog"] * 3 + ["▁a [MASK]"] * 2


@pytest.mark.parametrize("override,key", [("analysis.examples.k=0", "analysis.examples.k"),
                                          ("analysis.examples.words=0", "analysis.examples.words"),
                                          ("analysis.examples.per_word=-1", "analysis.examples.per_word"),
                                          ("analysis.examples.k=10000", "analysis.examples.k"),
                                          ("analysis.neighbours.metric=manhattan", "analysis.neighbours.metric")])
def test_bad_settings_are_refused_naming_the_key(tmp_path, override, key):
    cfg = cfg_of(tmp_path, "lm", 1, override)
    cols = columns(random_sentences(10))
    write_dump(cfg, cols, [np.ones((len(cols["token_id"]), 4), dtype=np.float32)])
    with pytest.raises(PipelineError, match=f"setting {key}="):
        run(cfg)
