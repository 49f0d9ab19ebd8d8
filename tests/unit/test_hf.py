"""Pretrained Hugging Face models through the same dumps and analyses (pipeline/model/hf.py, pipeline/dump/pretrained.py,
analysis/io/words.py), on tiny random models built from configs (tests/hf_models.py): no network, no hub."""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
import torch  # noqa: E402

from analysis.io import words  # noqa: E402
from analysis.io.dumps import load_dump  # noqa: E402
from pipeline.model import hf  # noqa: E402
from pipeline.config import pretrained  # noqa: E402
from pipeline.config.stages import pretrained_dump_config  # noqa: E402
from pipeline.config.compose import compose  # noqa: E402
from pipeline.config.grid import model_grid
from pipeline.prepare.corpus import read_lines  # noqa: E402
from pipeline.records.stage import read_record  # noqa: E402
from pipeline.errors import PipelineError
from tests.hf_models import ROLES, build_all  # noqa: E402

LABELS = {"bert": "bert", "gpt2": "gpt2", "marian": "marian", "pythia": "neox"}  # label -> kind of tests/hf_models.py


@pytest.fixture(scope="module")
def exp(tmp_path_factory, shared_zip):
    """The smoke data split, the tiny pretrained models dumped (float32, to compare exactly), a
    copy of the BERT under a second label, and one of our own (untrained) MLMs dumped beside them."""
    from pipeline.dump import pretrained as hf_dump
    from pipeline.dump import stage as own_dump
    from pipeline.prepare.stage import run as prepare
    from pipeline.prepare.tokenizer import Tokenizer
    from tests.synthetic import save_untrained

    root = tmp_path_factory.mktemp("hf")
    base = ["experiment=smoke", f"paths.results={root / 'results'}", f"data.archive={shared_zip}",
            "train.progress=false", "dump.dtype=float32", "dump.mlm_maskings=2", "workflow.init=false",
            "workflow.objectives=[mlm]", "workflow.seeds={mlm: [1]}"]
    prepare(compose(base))
    folders = build_all(root / "models", read_lines(root / "results" / "data" / "train.src"))
    models = [f"+pretrained.models.{label}={{name: {folders[kind]}}}" for label, kind in LABELS.items()]
    models.append(f"+pretrained.models.bert2={{name: {folders['bert']}}}")
    overrides = [*base, *models]

    def cfg_of(label: str, *extra: str):
        role = ROLES[LABELS.get(label, "bert")]
        return compose([*overrides, f"objective={role}", f"label={label}", "seed=0", *extra])

    for label in [*LABELS, "bert2"]:
        hf_dump.dump(cfg_of(label))
    own = compose([*overrides, "objective=mlm", "seed=1"])
    save_untrained(own, Tokenizer.load(own.paths.tokenizer))
    own_dump.dump(own)
    return {"root": root, "folders": folders, "overrides": overrides, "cfg_of": cfg_of, "own": own,
            "lines": read_lines(root / "results" / "data" / "probe.txt")}


def _dump(exp, label):
    return load_dump(exp["root"] / "results" / "dumps" / label / "seed0")


def _load(exp, label):
    kind = LABELS[label]
    spec = pretrained.HFSpec(label, str(exp["folders"][kind]))
    return hf.load(spec, exp["folders"][kind], ROLES[kind], torch.device("cpu"), torch.float32)


# ---------------------------------------------------------------- the dumps

@pytest.mark.parametrize("label", list(LABELS))
def test_dump_equals_a_direct_forward_pass(exp, label):
    """Every layer's rows are model(..., output_hidden_states=True) of each sentence run alone, at its
    non-special tokens; the token table holds the model's own ids and strings."""
    d = _dump(exp, label)
    _, stack, tok = _load(exp, label)
    t = d.tokens
    assert d.kind == ROLES[LABELS[label]] and d.seed == 0 and d.objective == label
    assert d.meta["pretrained"]["safetensors"] and d.meta["pretrained"]["revision"] == "local folder"
    checked = 0
    for sid in np.unique(t["sentence_id"])[::7]:
        rows = np.flatnonzero(t["sentence_id"] == sid)
        enc = tok(exp["lines"][sid], return_tensors="pt", return_special_tokens_mask=True)
        keep = ~enc.pop("special_tokens_mask")[0].bool()
        with torch.no_grad():
            states = stack(**enc, output_hidden_states=True).hidden_states
        assert len(states) == d.n_layers + 1
        assert t["token_id"][rows].tolist() == enc["input_ids"][0][keep].tolist()
        assert t["position"][rows].tolist() == list(range(len(rows)))
        assert list(t["token"][rows]) == tok.convert_ids_to_tokens(enc["input_ids"][0][keep].tolist())
        for layer in range(d.n_layers + 1):
            np.testing.assert_allclose(d.states(layer, rows), states[layer][0][keep].numpy(), atol=2e-5)
        checked += 1
    assert checked > 10


def test_frequency_ranks_count_the_training_source_side_with_the_models_tokenizer(exp):
    d = _dump(exp, "gpt2")
    _, _, tok = _load(exp, "gpt2")
    counts = Counter(i for line in read_lines(exp["root"] / "results" / "data" / "train.src")
                     for i in tok(line, add_special_tokens=False)["input_ids"])
    ranked = sorted(range(max(len(tok), 1)), key=lambda i: (-counts.get(i, 0), i))
    rank = {i: r + 1 for r, i in enumerate(ranked)}
    assert [rank[i] for i in d.tokens["token_id"][:500]] == d.tokens["freq_rank"][:500].tolist()
    assert d.tokens["freq_rank"].min() == 1


def test_mlm_masked_run_uses_the_models_mask_token_and_its_head(exp):
    d = _dump(exp, "bert")
    m = d.masked()
    model, stack, tok = _load(exp, "bert")
    t = m.tokens
    n = d.n_tokens
    assert m.n_tokens == 2 * n and t["masking"].tolist() == [0] * n + [1] * n
    assert np.array_equal(t["label_id"], np.tile(d.tokens["token_id"], 2))
    kind = t["masked"]
    assert np.all(t["input_id"][kind == 1] == tok.mask_token_id)
    assert np.all(t["input_id"][kind == 0] == t["label_id"][kind == 0])
    assert np.all(t["input_id"][kind == 3] == t["label_id"][kind == 3])
    specials = set(tok.all_special_ids)
    assert not specials & set(t["input_id"][kind == 2].tolist())
    assert abs(float((kind > 0).mean()) - 0.15) < 0.03
    assert not np.array_equal(kind[:n], kind[n:]), "each masking is drawn anew"
    # the states and the head's prediction of one masked sentence, rerun by hand
    sid = int(t["sentence_id"][np.flatnonzero(kind == 1)[0]])
    rows = np.flatnonzero((t["sentence_id"] == sid) & (t["masking"] == 0))
    enc = tok(exp["lines"][sid], return_tensors="pt", return_special_tokens_mask=True)
    keep = ~enc.pop("special_tokens_mask")[0].bool()
    ids = enc["input_ids"].clone()
    ids[0, keep] = torch.from_numpy(t["input_id"][rows])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=enc["attention_mask"], output_hidden_states=True)
    np.testing.assert_allclose(m.states(d.n_layers, rows), out.hidden_states[-1][0][keep].numpy(), atol=2e-5)
    assert t["predicted_id"][rows].tolist() == out.logits[0][keep].argmax(-1).tolist()
    assert 0 <= m.meta["head_mask_accuracy"] <= 1 and m.meta["head_mask_n"] == int((kind == 1).sum())


def test_a_second_dump_reuses_the_first_and_new_weights_redo_it(exp, caplog):
    from pipeline.dump import pretrained as hf_dump
    from pipeline.records.stage import stage_problem
    from tests.hf_models import build

    folder = exp["root"] / "results" / "dumps" / "gpt2" / "seed0"
    record = read_record(folder)
    with caplog.at_level("INFO", logger="pipeline.hf_dump"):
        hf_dump.dump(exp["cfg_of"]("gpt2"))
    assert "nothing to do" in caplog.text and read_record(folder) == record
    # a model folder whose weights are replaced after its dump: the dump is redone
    sentences = read_lines(exp["root"] / "results" / "data" / "train.src")
    model_folder, out = exp["root"] / "replaced", exp["root"] / "replaced-dump"
    build("gpt2", model_folder, sentences, seed=1)
    cfg = exp["cfg_of"]("gpt2", f"pretrained.models.gpt2.name={model_folder}", f"paths.dump={out}")
    hf_dump.dump(cfg)
    first = read_record(out).extra["checkpoint_sha256"]
    assert stage_problem(out, pretrained_dump_config(cfg, "gpt2")) is None
    build("gpt2", model_folder, sentences, seed=2)
    assert "another" in stage_problem(out, pretrained_dump_config(cfg, "gpt2"))
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline.hf_dump"):
        hf_dump.dump(cfg)
    assert "dumping again" in caplog.text and read_record(out).extra["checkpoint_sha256"] != first


def test_a_failed_dump_leaves_nothing_behind(exp, monkeypatch):
    from pipeline.dump import pretrained as hf_dump

    def broken(*args, **kwargs):
        raise RuntimeError("killed")

    cfg = exp["cfg_of"]("marian")
    out = exp["root"] / "broken"
    cfg.paths.dump = str(out)
    monkeypatch.setattr(hf_dump, "write_states", broken)
    with pytest.raises(RuntimeError, match="killed"):
        hf_dump.dump(cfg)
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_role_must_match_the_objective_config(exp):
    from pipeline.dump import pretrained as hf_dump

    with pytest.raises(PipelineError, match="objective=lm label=gpt2"):
        hf_dump.dump(compose([*exp["overrides"], "objective=mt", "label=gpt2", "seed=0"]))
    with pytest.raises(PipelineError, match="seed=1: pretrained.models.gpt2 has the seeds 0"):
        hf_dump.dump(compose([*exp["overrides"], "objective=lm", "label=gpt2", "seed=1"]))


# ---------------------------------------------------------------- words

def test_word_alignment_maps_every_probe_word_once(exp):
    dumps = {label: _dump(exp, label) for label in LABELS}
    dumps["own"] = load_dump(exp["own"].paths.dump)
    a = words.align(dumps, "first")
    keys = list(zip(a.sentence_ids.tolist(), a.words.tolist()))
    assert len(set(keys)) == len(keys) == a.n_words
    kept = set.intersection(*(set(np.unique(d.tokens["sentence_id"]).tolist()) for d in dumps.values()))
    expected = [(s, w) for s in sorted(kept) for w in range(len(exp["lines"][s].split()))]
    assert keys == expected, "every word of every sentence all models keep, once, in order"
    # each model's subwords of a word spell the word (BERT's [UNK] aside)
    for label, d in dumps.items():
        first, counts = a.per_dump[label]
        tok = _load(exp, label)[2] if label != "own" else None
        for i in range(0, a.n_words, 37):
            pieces = [str(p) for p in d.tokens["token"][first[i]:first[i] + counts[i]]]
            if "[UNK]" in pieces:
                continue
            text = tok.convert_tokens_to_string(pieces) if tok is not None else "".join(pieces).replace("▁", " ")
            word = exp["lines"][int(a.sentence_ids[i])].split()[int(a.words[i])]
            assert "".join(text.split()) == word, (label, pieces, word)


def test_word_states_first_and_mean(exp):
    d = _dump(exp, "bert")
    a = words.align({"bert": d}, "first")
    b = words.align({"bert": d}, "mean")
    first, counts = a.per_dump["bert"]
    i = int(np.flatnonzero(counts > 1)[0])
    np.testing.assert_array_equal(a.states("bert", 1, np.array([i]))[0], d.states(1, np.array([first[i]]))[0])
    rows = np.arange(first[i], first[i] + counts[i])
    # the mean is taken in float64 and rounded once; a float32 mean would round at every addition
    want = d.states(1, rows).astype(np.float64).mean(0)
    np.testing.assert_allclose(b.states("bert", 1, np.array([i]))[0], want, rtol=1e-6)


def test_words_from_pieces_and_offsets():
    from pipeline.dump.pretrained_probe import words_from_offsets, words_from_pieces

    assert words_from_pieces(["▁I", "▁wo", "ke", "▁up", "."]) == [0, 1, 1, 2, 2]
    assert words_from_pieces(["I", "▁am"]) == [0, 1]
    line = "I woke  up."
    assert words_from_offsets(line, [(0, 1), (1, 4), (4, 6), (7, 10), (10, 11)]) == [0, 1, 1, 2, 2]
    assert words_from_offsets("a b", [(0, 1), (1, 3), (3, 3)]) == [0, 1, 1]  # a leading space, an empty span


def test_a_slow_sentencepiece_tokenizer_as_opus_mt_ships_it(exp):
    """transformers' MarianTokenizer (no character offsets): words from the pieces' "▁"; the dump
    still equals a direct forward pass."""
    from pipeline.dump import pretrained as hf_dump
    from pipeline.dump.pretrained_probe import encode
    from tests.hf_models import marian_spm

    folder = exp["root"] / "marian-spm"
    _, tok = marian_spm(folder, read_lines(exp["root"] / "results" / "data" / "train.src"))
    assert not tok.is_fast
    ids, special, word = encode(tok, ["I woke  up."])[0]
    content = [w for w, s in zip(word, special) if not s]
    assert special[-1] and not any(special[:-1])  # </s> closes the input
    assert content[0] == 0 and content[-1] == 2 and sorted(content) == content  # three words, in order
    cfg = compose([*exp["overrides"], f"+pretrained.models.spm={{name: {folder}}}", "objective=mt", "objective.name=spm",
                   "seed=0"])
    d = load_dump(hf_dump.dump(cfg))
    assert d.meta["unaligned_sentences"] == 0
    w = words.word_column(d)
    _, stack, loaded = hf.load(pretrained.HFSpec("spm", str(folder)), folder, "mt", torch.device("cpu"), torch.float32)
    assert type(loaded).__name__ == "MarianTokenizer"
    for sid in np.unique(d.tokens["sentence_id"])[:20]:
        rows = np.flatnonzero(d.tokens["sentence_id"] == sid)
        assert w[rows].max() + 1 == len(exp["lines"][sid].split())
        enc = loaded(exp["lines"][sid], return_tensors="pt")
        with torch.no_grad():
            top = stack(**enc, output_hidden_states=True).hidden_states[-1][0, :-1]  # the last id is </s>
        np.testing.assert_allclose(d.states(d.n_layers, rows), top.numpy(), atol=2e-5)


def test_our_pieces_give_the_whitespace_words(exp):
    d = load_dump(exp["own"].paths.dump)
    w = words.word_column(d)
    for sid in np.unique(d.tokens["sentence_id"])[:50]:
        rows = d.tokens["sentence_id"] == sid
        assert w[rows].max() + 1 == len(exp["lines"][sid].split())


def test_tsne_finds_a_word_as_a_subword_of_its_own():
    tokens = {"token": np.array(["Ġis", ".", "Ġis", "land", "\"", "is", "this", "##is"]),
              "sentence_id": np.zeros(8, dtype=int), "word": np.array([0, 0, 1, 1, 2, 2, 3, 3])}
    assert words.occurrences(tokens, "is").tolist() == [0, 5]


# ---------------------------------------------------------------- analyses across vocabularies

def test_similarity_compares_words_across_vocabularies(exp):
    from analysis.measures import similarity
    from analysis.io.tables import PRETRAINED_PAIR, read_record as table_record, read_table

    cfg = compose([*exp["overrides"], "analysis.similarity.max_tokens=null"])
    assert ("bert", 0) in model_grid(cfg) and ("mlm", 1) in model_grid(cfg)
    path = similarity.run(cfg)
    rows = read_table(path, "similarity")
    record = table_record(path)["levels"]["pretrained"]
    assert record["level"] == "word" and record["word_state"] == "first"
    pwcca = {(r["objective_a"], r["objective_b"], int(r["layer"])): float(r["distance"])
             for r in rows if r["measure"] == "pwcca"}
    # the same weights under two labels: the same states, distance 0 at every layer
    assert all(v < 1e-5 for (a, b, _), v in pwcca.items() if {a, b} == {"bert", "bert2"})
    others = [v for (a, b, _), v in pwcca.items() if {a, b} != {"bert", "bert2"}]
    assert min(others) > 0.05
    assert {r["pair"] for r in rows if "bert" in (r["objective_a"], r["objective_b"])} == {PRETRAINED_PAIR}
    assert len({int(r["n_tokens"]) for r in rows}) == 1 and int(rows[0]["n_tokens"]) == record["rows"]


def test_trained_pairs_are_untouched_by_a_pretrained_model(exp):
    """The pairs of two models trained here compare their tokens layer by layer whatever else the
    experiment holds: with the pretrained models beside them, their rows and replicates equal those of the
    same experiment without them, bit for bit; only pairs with a pretrained model compare words."""
    from analysis.measures import similarity
    from analysis.io.tables import PRETRAINED_PAIR, read_record as table_record, read_table, replicates_path
    from pipeline.prepare.tokenizer import Tokenizer
    from tests.synthetic import save_untrained

    second = compose([*exp["overrides"], "objective=mlm", "seed=2"])
    save_untrained(second, Tokenizer.load(second.paths.tokenizer))
    from pipeline.dump import stage as own_dump

    own_dump.dump(second)
    seeds = ["workflow.seeds={mlm: [1, 2]}", "analysis.similarity.max_tokens=1500"]
    mixed = compose([*exp["overrides"], *seeds])
    alone = compose([*(o for o in exp["overrides"] if not o.startswith("+pretrained.models")), *seeds,
                     f"paths.metrics={exp['root'] / 'alone'}"])
    got = {}
    for name, cfg in (("mixed", mixed), ("alone", alone)):
        path = similarity.run(cfg)
        rows = read_table(path, "similarity")
        with np.load(replicates_path(path)) as f:
            reps = f["distance"]
        own = [i for i, r in enumerate(rows) if r["pair"] != PRETRAINED_PAIR]
        got[name] = ([rows[i] for i in own], reps[own], table_record(path))
    assert got["mixed"][0] == got["alone"][0] and len(got["alone"][0]) == 3 * 3  # 3 layers x 3 measures
    assert np.array_equal(got["mixed"][1], got["alone"][1])
    assert {r["pair"] for r in got["mixed"][0]} == {"seed_baseline"}
    assert got["mixed"][2]["levels"]["trained"]["level"] == "token"
    assert got["mixed"][2]["levels"]["pretrained"]["level"] == "word" and "pretrained" not in got["alone"][2]["levels"]


def test_relative_depth():
    from analysis.measures.similarity import relative_layer

    assert [relative_layer(step, 12, 6) for step in range(1, 7)] == [2, 4, 6, 8, 10, 12]
    assert [relative_layer(step, 6, 6) for step in range(1, 7)] == [1, 2, 3, 4, 5, 6]
    assert [relative_layer(step, 3, 2) for step in (1, 2)] == [2, 3]


@pytest.mark.parametrize("label", ["bert", "gpt2"])
def test_influence_runs_on_a_pretrained_model(exp, label):
    """The rerun states without removal are the dump's; each removal changes only what it may."""
    from analysis.measures.influence import collect_pairs, influence_rows, pretrained_runner

    cfg = exp["cfg_of"](label)
    d = _dump(exp, label)
    runner, reason = pretrained_runner(cfg, d, torch.device("cpu"))
    assert reason is None and runner.causal == (label == "gpt2")
    sentences = np.unique(d.tokens["sentence_id"])[:3]
    chosen = {int(s): [0, 1] for s in sentences}
    rows0 = {int(s): np.flatnonzero(d.tokens["sentence_id"] == s) for s in sentences}
    tokens, position = runner.inputs([d.tokens["token_id"][rows0[s]] for s in chosen], list(chosen))
    states = runner.states(tokens)
    for b, s in enumerate(chosen):
        at = position[b] >= 0
        np.testing.assert_allclose(states[1][b][at].numpy(), d.states(1, rows0[s]), atol=2e-5)
    row_bucket = np.zeros(d.n_tokens, dtype=int)
    affected = "later" if label == "gpt2" else "all"
    pairs, influencers, _ = collect_pairs(runner, d, chosen, row_bucket, 1, affected, 4096, torch.device("cpu"))
    usual, removed = pairs[1, 0]
    n_pairs = sum((len(rows0[s]) - 1 - p) if affected == "later" else len(rows0[s]) - 1 for s in chosen for p in (0, 1))
    assert len(usual) == n_pairs
    assert float((usual - removed).abs().max()) > 1e-4
    rows, _ = influence_rows(runner, d, compose([*exp["overrides"], "analysis.influence.min_influencers=5",
                                                  "analysis.min_samples_per_dim=2"]), torch.device("cpu"))
    assert rows and {r["affected"] for r in rows} == {affected} and {r["objective"] for r in rows} == {label}


# ---------------------------------------------------------------- settings and the cache

def test_a_model_not_in_the_cache_names_the_command_that_fetches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    spec = pretrained.HFSpec("bert", "bert-base-cased")
    with pytest.raises(hf.ModelNotAvailable, match=re.escape("hf download bert-base-cased")) as error:
        hf.resolve(spec, compose(["experiment=pretrained", "pretrained.download=true"]))
    assert "pretrained.models.bert.name" in str(error.value)
    assert hf.role_without_loading(pretrained.HFSpec("x", "gpt2")) is None  # nothing cached to read a role from


def test_roles_are_inferred_from_the_config():
    assert hf.infer_role({"architectures": ["BertForMaskedLM"], "model_type": "bert"}) == "mlm"
    assert hf.infer_role({"architectures": ["GPT2LMHeadModel"]}) == "lm"
    assert hf.infer_role({"architectures": ["MarianMTModel"], "is_encoder_decoder": True}) == "mt"
    assert hf.infer_role({"model_type": "t5"}) == "mt"
    assert hf.infer_role({"model_type": "something"}) is None
    with pytest.raises(PipelineError, match="pretrained.models.x.role"):
        hf.choose_role(pretrained.HFSpec("x", "y"), {"model_type": "something"})
    assert hf.choose_role(pretrained.HFSpec("x", "y", role="lm"), {"architectures": ["BertForMaskedLM"]}) == "lm"


@pytest.mark.parametrize("override,named", [
    ("+pretrained.models.mt={name: gpt2}", "an objective's name"),
    ("+pretrained.models.x={name: gpt2, role: decoder}", "pretrained.models.x.role"),
    ("+pretrained.models.x={name: gpt2, size: 3}", "unknown keys"),
    ("+pretrained.models.x={role: lm}", "pretrained.models.x.name"),
    ("+pretrained.models.x={name: gpt2, dtype: int8}", "pretrained.models.x.dtype"),
])
def test_bad_settings_name_the_key(override, named):
    with pytest.raises(PipelineError, match=re.escape(named)):
        pretrained.specs(compose(["experiment=smoke", override]))


def test_the_pretrained_experiment_names_the_three_models():
    cfg = compose(["experiment=pretrained"])
    specs = pretrained.specs(cfg)
    assert {(s.name, s.role) for s in specs.values()} == {("bert-base-cased", "mlm"), ("gpt2", "lm"),
                                                         ("Helsinki-NLP/opus-mt-en-de", "mt")}
    assert model_grid(cfg) == [(label, 0) for label in specs]
    # the same probe sentences as the default experiment: the same data split settings
    from pipeline.config.stages import data_config, pretrained_dump_config

    assert data_config(cfg) == data_config(compose(["experiment=default"]))
    cfg.seed = 0  # a pretrained model's one seed
    json.dumps(pretrained_dump_config(cfg.copy(), "bert"))  # plain settings (hashable by the workflow)


def test_every_measure_and_the_report_run_on_pretrained_and_trained_models_together(exp):
    """Our (untrained) MLM beside the pretrained models: every per-model measure, the distances by
    words, the merged tables and the report, which names each pretrained model with its source."""
    from analysis.report import stage as report
    from analysis.measures import examples, tsne
    from analysis.measures import neighbours
    from analysis.measures import mutual_info
    from analysis.measures import influence
    from analysis.measures import change
    from analysis.io.tables import merge_parts
    from pipeline.config.layout import part_path, table_path

    small = ["analysis.min_samples_per_dim=2", "analysis.influence.min_influencers=5",
             "analysis.influence.max_sentences=60", "analysis.mi.restarts=1"]
    cfgs = [compose([*exp["overrides"], *small, "objective=mlm", "seed=1"])]
    cfgs += [exp["cfg_of"](label, *small) for label in [*LABELS, "bert2"]]
    modules = {"change": change, "influence": influence, "mi": mutual_info, "neighbours": neighbours, "tsne": tsne,
               "examples": examples}
    for name, module in modules.items():
        for cfg in cfgs:
            module.run(cfg)
        merge_parts([str(part_path(cfg, name)) for cfg in cfgs], str(table_path(cfgs[0], name)), name)
    from analysis.io.tables import read_table

    for name in modules:
        objectives = {r["objective"] for r in read_table(table_path(cfgs[0], name), name)}
        assert objectives == {"mlm", *LABELS, "bert2"}, name
    html = report.build(compose([*exp["overrides"], *small, f"paths.report={exp['root'] / 'report'}"]),
                        probe_hardware=False)
    for label, kind in LABELS.items():
        assert str(exp["folders"][kind]) in html
    assert "Pretrained models" in html and "not controlled" in html and "Pairs with a pretrained model" in html
    assert "mlm–bert (seed 1)" in html, "our model against a pretrained one, by words"


# ---------------------------------------------------------------- the logit lens (pipeline/dump/readout.py)

@pytest.mark.parametrize("label", ["gpt2", "bert", "pythia"])
def test_readout_of_the_last_layer_is_the_models_own_output(exp, label):
    """Known answer: layer L read through the lens is the model's own distribution (its loss on the
    target, its top-1), so KL to it is 0 there; the lower layers are read through the final norm."""
    from pipeline.dump.format import read_readout

    d = _dump(exp, label)
    folder = d.folder / "masked" if label == "bert" else d.folder
    r = read_readout(folder)
    assert r is not None and r["loss"].shape == (d.n_layers + 1, len(r["rows"]))
    source = load_dump(folder) if label == "bert" else d
    model, _, tok = _load(exp, label)
    t = source.tokens
    checked = 0
    for j in range(0, len(r["rows"]), max(1, len(r["rows"]) // 25)):
        row = int(r["rows"][j])
        sid = t["sentence_id"][row]
        rows = np.flatnonzero(t["sentence_id"] == sid)
        if label == "bert":
            rows = rows[t["masking"][rows] == t["masking"][row]]
            ids = tok(exp["lines"][sid], return_tensors="pt", return_special_tokens_mask=True)
            keep = np.flatnonzero(~ids.pop("special_tokens_mask")[0].bool().numpy())
            ids["input_ids"][0, keep] = torch.as_tensor(t["input_id"][rows])
            target = int(t["label_id"][row])
        else:
            ids = tok(exp["lines"][sid], return_tensors="pt", return_special_tokens_mask=True)
            keep = np.flatnonzero(~ids.pop("special_tokens_mask")[0].bool().numpy())
            target = int(t["token_id"][row + 1])
        assert r["target"][j] == target
        with torch.no_grad():
            out = model(**ids, output_hidden_states=True)
            logits = out.logits[0, keep[row - rows[0]]]
            h1 = out.hidden_states[1][0, keep[row - rows[0]]]  # layer 1, by hand: final norm, then head
            lens1 = {"gpt2": lambda: model.lm_head(model.transformer.ln_f(h1)), "bert": lambda: model.cls(h1),
                     "pythia": lambda: model.get_output_embeddings()(model.gpt_neox.final_layer_norm(h1))}[label]()
        logp = torch.log_softmax(logits, -1)
        assert r["loss"][-1, j] == pytest.approx(float(-logp[target]), rel=1e-4, abs=1e-5)
        assert r["loss"][1, j] == pytest.approx(float(-torch.log_softmax(lens1, -1)[target]), rel=1e-4, abs=1e-5)
        assert r["top1"][-1, j] == int(int(logp.argmax()) == target)
        checked += 1
    assert checked >= 20
    np.testing.assert_allclose(r["kl"][-1], 0, atol=1e-6)
    assert (r["kl"][:-1] >= 0).all() and np.isfinite(r["loss"]).all()
    assert d.meta["readout"]["measured"] is (label != "bert")  # bert's is in masked/


def test_an_mt_model_has_no_readout_and_says_why(exp):
    d = _dump(exp, "marian")
    assert not (d.folder / "readout.npz").exists()
    assert d.meta["readout"]["measured"] is False and "no output head" in d.meta["readout"]["why"]


def test_a_tuned_lens_of_a_pretrained_model_reads_every_layer(exp, tmp_path):
    from pipeline.dump import pretrained as hf_dump
    from pipeline.dump.format import read_readout

    out = hf_dump.dump(exp["cfg_of"]("pythia", "dump.tuned_lens=20", f"paths.dump={tmp_path / 'tuned'}"))
    r = read_readout(out)
    assert r["tuned_loss"].shape == r["loss"].shape and np.isfinite(r["tuned_loss"]).all()
    np.testing.assert_allclose(r["tuned_loss"][-1], r["loss"][-1])
    np.testing.assert_allclose(r["tuned_kl"][-1], 0, atol=1e-6)
    assert not np.allclose(r["tuned_loss"][1], r["loss"][1])
