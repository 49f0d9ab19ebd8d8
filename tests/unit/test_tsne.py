"""analysis.tsne on fake dumps: the table's sets, shape and columns, words that are split or absent,
the cap per word, and determinism for a fixed seed."""
from __future__ import annotations

import csv
import io
import logging

import numpy as np

from pipeline.config.layout import dump_folder
from analysis.io.tables import COLUMNS, read_table
from analysis.measures.tsne import split_forms, word_rows
from analysis.measures.tsne import run as run_tsne
from pipeline.config.compose import compose
from tests.synthetic import token_columns, write_fake_dump

PIECES = ["▁the", "▁is", "▁are", "▁was", "▁we", "re", "▁it", "▁dog", "s", "▁"]
WE, RE = 4, 5
PLAIN = [0, 1, 2, 3, 6, 7, 8]  # pieces that may go anywhere


def sentences(n: int, seed: int) -> list[list[int]]:
    """Random sentences; every third one holds "▁we re" (the word "were", split in two pieces)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = list(rng.choice(PLAIN, size=rng.integers(3, 9)))
        if i % 3 == 0:
            at = int(rng.integers(0, len(s) + 1))
            s[at:at] = [WE, RE]
        out.append([int(t) for t in s])
    return out


def tsne_cfg(root, objective: str, seed: int, *overrides: str, words: str = "[is,are,was,were,am]"):
    return compose([f"paths.results={root}", f"objective={objective}", f"seed={seed}", "analysis.device=cpu",
                    f"analysis.tsne.words={words}", "analysis.tsne.max_per_word=15", *overrides])


def make_dump(root, objective: str = "mlm", seed: int = 1, *overrides: str, words: str = "[is,are,was,were,am]",
              n_sent: int = 40):
    cfg = tsne_cfg(root, objective, seed, *overrides, words=words)
    sents = sentences(n_sent, seed=11)
    ids = np.concatenate(sents)
    cols = token_columns([len(s) for s in sents], ids, np.arange(1, len(PIECES) + 1), PIECES)
    cols["token"] = np.asarray(cols["token"])  # as read back from tokens.tsv
    rng = np.random.default_rng(seed)
    states = [rng.normal(size=(len(ids), 8)).astype(np.float32) + layer for layer in range(3)]
    masked = None
    if objective == "mlm":
        kind = rng.choice([0, 1, 2, 3], size=len(ids), p=[0.5, 0.3, 0.1, 0.1])
        inputs = np.where(kind == 1, 9, np.where(kind == 2, 0, ids))
        masked = ([rng.normal(size=s.shape).astype(np.float32) for s in states], {"masked": kind, "input_id": inputs, "label_id": ids})
    write_fake_dump(dump_folder(cfg, objective, seed), states, cols, objective, seed, masked=masked)
    return cfg, cols, masked


def test_split_and_absent_words_are_found_out():
    sents = [[WE, RE, 1], [0, WE, RE], [WE, 0], [WE, RE, 8]]  # "were", "were", "we", "weres" (no word end)
    cols = token_columns([len(s) for s in sents], np.concatenate(sents), np.arange(1, 11), PIECES)
    assert split_forms(cols, "were") == {("▁we", "re"): 2}
    assert split_forms(cols, "is") == {}
    assert word_rows(cols, "is", None, 0).tolist() == [2]
    assert len(word_rows(cols, "were", None, 0)) == 0 and len(word_rows(cols, "am", None, 0)) == 0


def test_table_of_an_mlm_has_every_set_layer_and_column(tmp_path, caplog):
    cfg, cols, masked = make_dump(tmp_path)
    with caplog.at_level(logging.WARNING, logger="analysis.tsne"):
        rows = read_table(run_tsne(cfg), "tsne")
    assert tuple(rows[0]) == COLUMNS["tsne"]
    words = {w: np.flatnonzero(cols["token"] == "▁" + w) for w in ("is", "are", "was", "it")}
    n = {w: min(15, len(r)) for w, r in words.items()}
    assert all(len(r) > 15 for r in words.values())  # so the cap is exercised
    by_set = {}
    for r in rows:
        by_set.setdefault(r["set"], []).append(r)
    assert set(by_set) == {"verbs", "verbs_masked", "it"}
    n_verbs = n["is"] + n["are"] + n["was"]
    assert [len(by_set[s]) for s in ("verbs", "verbs_masked", "it")] == [3 * n_verbs, 3 * n_verbs, 3 * n["it"]]
    for name, group in by_set.items():
        for layer in range(3):
            layer_rows = [r for r in group if r["layer"] == str(layer)]
            tokens = [r["token"] for r in layer_rows]
            expected = {"it": n["it"]} if name == "it" else {w: n[w] for w in ("is", "are", "was")}
            assert {t: tokens.count(t) for t in set(tokens)} == expected
            xy = np.array([[float(r["x"]), float(r["y"])] for r in layer_rows])
            assert np.isfinite(xy).all() and xy.std(0).min() > 0
    # the rows are real occurrences: (sentence, position) hold the word; masked comes from masked/
    where = {(int(s), int(p)): i for i, (s, p) in enumerate(zip(cols["sentence_id"], cols["position"]))}
    for r in rows:
        i = where[int(r["sentence_id"]), int(r["position"])]
        assert cols["token"][i] == "▁" + r["token"]
        assert int(r["masked"]) == (int(masked[1]["masked"][i]) if r["set"] == "verbs_masked" else 0)
    assert {r["masked"] for r in by_set["verbs_masked"]} >= {"0", "1"}
    xy = {name: [(r["x"], r["y"]) for r in by_set[name]] for name in ("verbs", "verbs_masked")}
    assert xy["verbs"] != xy["verbs_masked"]  # the masked set is embedded from the masked run's states
    assert {r["objective"] for r in rows} == {"mlm"} and {r["seed"] for r in rows} == {"1"}
    # "were" is split into two pieces and "am" does not occur: no rows, and a message for each
    assert not {"were", "am"} & {r["token"] for r in rows}
    text = caplog.text
    assert "'were'" in text and "split into subwords" in text and "▁we + re" in text
    assert "'am' does not occur" in text


def test_an_lm_has_no_masked_set(tmp_path):
    cfg, _, _ = make_dump(tmp_path, "lm", 1)
    rows = read_table(run_tsne(cfg), "tsne")
    assert {r["set"] for r in rows} == {"verbs", "it"} and {r["masked"] for r in rows} == {"0"}


def test_too_few_occurrences_give_no_rows_and_a_message(tmp_path, caplog):
    cfg, _, _ = make_dump(tmp_path, "mlm", 1, "analysis.tsne.position_word=am", words="[were]")
    with caplog.at_level(logging.WARNING, logger="analysis.tsne"):
        rows = read_table(run_tsne(cfg), "tsne")
    assert rows == []
    assert "set verbs: 0 occurrences, fewer than 5" in caplog.text and "'am' does not occur" in caplog.text


def test_fixed_seed_is_deterministic(tmp_path):
    cfg, _, _ = make_dump(tmp_path, "lm", 2, words="[is,are]")
    first = run_tsne(cfg).read_bytes()
    assert run_tsne(cfg).read_bytes() == first and len(first.splitlines()) > 1
    reseeded = read_table(run_tsne(tsne_cfg(tmp_path, "lm", 2, "analysis.tsne.seed=5", words="[is,are]")), "tsne")
    before = list(csv.DictReader(io.StringIO(first.decode("utf-8"))))
    assert [(r["token"], r["sentence_id"], r["layer"]) for r in reseeded] == [
        (r["token"], r["sentence_id"], r["layer"]) for r in before]  # the same occurrences ...
    assert [r["x"] for r in reseeded] != [r["x"] for r in before]  # ... embedded from another seed


def test_cap_per_word_is_a_seeded_subset(tmp_path):
    _, cols, _ = make_dump(tmp_path)
    word = "is"
    all_rows = np.flatnonzero(cols["token"] == "▁" + word)
    a, b = word_rows(cols, word, 5, 0), word_rows(cols, word, 5, 0)
    assert np.array_equal(a, b) and len(a) == 5 and np.isin(a, all_rows).all()
    assert not np.array_equal(a, word_rows(cols, word, 5, 1))
    assert np.array_equal(word_rows(cols, word, None, 0), all_rows)


def test_every_point_carries_its_sentence_and_the_masked_set_the_input(tmp_path):
    cfg, cols, masked = make_dump(tmp_path)
    rows = read_table(run_tsne(cfg), "tsne")
    kind, inputs = masked[1]["masked"], masked[1]["input_id"]
    sentences, seen = {}, {}
    for i, (sid, piece) in enumerate(zip(cols["sentence_id"].tolist(), cols["token"].tolist())):
        sentences.setdefault(sid, []).append(piece)
        # as the model saw it: [MASK] where masked, the replacement's piece where replaced
        seen.setdefault(sid, []).append("[MASK]" if kind[i] == 1 else PIECES[inputs[i]] if kind[i] == 2 else piece)
    assert {r["set"] for r in rows} == {"verbs", "verbs_masked", "it"}
    for r in rows:
        pieces = r["pieces"].split(" ")
        sid, pos = int(r["sentence_id"]), int(r["position"])
        assert pieces == (seen if r["set"] == "verbs_masked" else sentences)[sid]
        if r["set"] != "verbs_masked" or r["masked"] in ("0", "3"):
            assert pieces[pos] == "▁" + r["token"]
        elif r["masked"] == "1":
            assert pieces[pos] == "[MASK]"
    assert any(r["masked"] == "1" for r in rows)


def test_a_table_made_before_the_sentences_still_reads(tmp_path):
    from analysis.report.gather import load_table

    old = COLUMNS["tsne"][:-1]
    path = tmp_path / "tsne.csv"
    path.write_text(",".join(old) + "\n" + "verbs,lm,1,0,0.5,-1.5,is,1,3,0\n", encoding="utf-8")
    rows = read_table(path, "tsne")
    assert tuple(rows[0]) == COLUMNS["tsne"] and rows[0]["pieces"] == "" and rows[0]["token"] == "is"
    table = load_table(path, "tsne")
    assert table.missing is None and table.rows[0]["pieces"] == "" and table.rows[0]["x"] == 0.5
