"""Amount of influence: the batched removal pass against a one-at-a-time computation and against
deleting the token outright, equal-size buckets, and the table on a real (untrained) dump."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.measures.influence import (collect_pairs, load_matching_model, removal_mask, removed_states,
                                         removed_states_direct, run)
from analysis.measures.influencers import (affected_positions, choose_influencers, exact_subset,
                                           pairs_per_influencer, resolve_affected)
from analysis.io.dumps import bucket_edges, bucket_index, bucket_labels, load_dump
from analysis.io.tables import read_record, read_table
from pipeline.config.compose import compose
from pipeline.prepare.corpus import prepare_data, read_lines
from pipeline.dump.stage import dump
from pipeline.model.transformer import ModelArgs, build_model
from pipeline.errors import PipelineError
from pipeline.prepare.tokenizer import Tokenizer, train_tokenizer
from tests.synthetic import replace_output, save_untrained

ARGS = ModelArgs(d_vocab=60, pad_id=0, n_layers=3, n_dec_layers=1, d_model=32, n_heads=4, d_mlp=64,
                 dropout=0.0, n_ctx=40)


def sentences(lengths, seed=0):
    """[bos] x_1..x_n [eos] + padding, for each n in lengths -> tokens (B, T)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths) + 2
    tokens = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        tokens[b, 0], tokens[b, n + 1] = 2, 3
        tokens[b, 1:n + 1] = torch.randint(5, ARGS.d_vocab, (n,), generator=g)
    return tokens


@pytest.mark.parametrize("kind", ["lm", "mlm", "mt"])
def test_batched_removal_equals_one_at_a_time(kind):
    """Every removal of a batch of padded sentences, from the cached layer n-1 states in one pass,
    against the definition computed for each sentence, token and layer alone from the embeddings."""
    model = build_model(kind, ARGS, seed=3).eval()
    lengths = [5, 9, 2, 7]
    tokens = sentences(lengths)
    mask = model.stack.mask(tokens)
    _, states = model.encode(tokens, return_states=True)
    owner = torch.tensor([b for b, n in enumerate(lengths) for _ in range(n)])
    removed = torch.tensor([p + 1 for n in lengths for p in range(n)])
    for layer in range(1, ARGS.n_layers + 1):
        batched = removed_states(model.stack.blocks[layer - 1], states[layer - 1], mask, owner, removed)
        for r, (b, j) in enumerate(zip(owner.tolist(), removed.tolist())):
            n = lengths[b] + 2
            direct = removed_states_direct(model, tokens[b:b + 1, :n], j, layer)
            torch.testing.assert_close(batched[r, :n], direct, rtol=1e-5, atol=1e-5)


def test_removal_equals_deleting_the_token_from_the_layer_input():
    """For a bidirectional stack, hiding key j from every other query is the same as running the
    block on the sentence without row j (positions are already in the layer n-1 states)."""
    model = build_model("mlm", ARGS, seed=4).eval()
    tokens = sentences([8])
    _, states = model.encode(tokens, return_states=True)
    mask = model.stack.mask(tokens)
    block = model.stack.blocks[1]
    for j in (1, 4, 8):
        out = removed_states(block, states[1], mask, torch.tensor([0]), torch.tensor([j]))[0]
        keep = [i for i in range(tokens.shape[1]) if i != j]
        without = block(states[1][:, keep], model.stack.mask(tokens[:, keep]))[0]
        torch.testing.assert_close(out[keep], without, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out[keep], states[2][0, keep], atol=1e-4), "removing a key changed nothing"


def test_causal_removal_changes_only_later_tokens():
    model = build_model("lm", ARGS, seed=5).eval()
    tokens = sentences([9])
    _, states = model.encode(tokens, return_states=True)
    out = removed_states(model.stack.blocks[0], states[0], model.stack.mask(tokens), torch.tensor([0]), torch.tensor([4]))[0]
    torch.testing.assert_close(out[:5], states[1][0, :5])  # the token itself and everything before it
    assert (out[5:10] - states[1][0, 5:10]).abs().amax(-1).min() > 1e-5


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_lm_influence_on_earlier_tokens_is_exactly_zero(layer):
    """The definition: in a causal LM the states of the tokens before the removed one are bit for bit
    those without the removal (so, as pairs, they would only dilute the distance)."""
    model = build_model("lm", ARGS, seed=5).eval()
    tokens = sentences([9])
    _, states = model.encode(tokens, return_states=True)
    for j in (2, 5, 9):
        out = removed_states_direct(model, tokens, j, layer)
        assert torch.equal(out[:j], states[layer][0, :j])
        assert not torch.allclose(out[j + 1:11], states[layer][0, j + 1:11], atol=1e-6)  # up to eos


def test_affected_positions():
    # [bos] x_0 .. x_4 [eos] pad: the rows at padded indices 1..5; removed rows 0, 2, 4 (indices 1, 3, 5)
    position = torch.tensor([[-1, 0, 1, 2, 3, 4, -1, -1]]).repeat(3, 1)
    removed = torch.tensor([0, 2, 4])
    every = affected_positions(position, removed, "all")
    later = affected_positions(position, removed, "later")
    assert every.int().tolist() == [[0, 0, 1, 1, 1, 1, 0, 0], [0, 1, 1, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0, 0, 0]]
    assert later.int().tolist() == [[0, 0, 1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]]


def test_resolve_affected():
    assert resolve_affected("auto", causal=True) == "later" and resolve_affected("auto", causal=False) == "all"
    assert resolve_affected("all", causal=True) == "all" and resolve_affected("later", causal=False) == "all"
    assert resolve_affected("later", causal=True) == "later"
    with pytest.raises(PipelineError, match="analysis.influence.affected"):
        resolve_affected("some", causal=True)


def test_exact_subset_keeps_a_pair_of_every_influencer():
    influencer = np.repeat(np.arange(30), 7)  # 30 influencers, 7 pairs each
    take = exact_subset(influencer, 50, np.random.default_rng(0))
    assert len(take) == len(set(take.tolist())) == 50 and set(influencer[take]) == set(range(30))
    with pytest.raises(ValueError):
        exact_subset(influencer, 29, np.random.default_rng(0))


def test_removal_mask_keeps_the_own_row_and_every_other_key():
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    out = removal_mask(mask, torch.tensor([1, 3]))
    assert out[0, 0, :, 1].tolist() == [False, True, False, False]
    assert out[1, 0, :, 3].tolist() == [False, False, False, True]
    assert int(out.sum()) == 2 * 16 - 2 * 3


def test_pairs_per_influencer():
    pos, length = np.array([0, 1, 2, 0]), np.array([3, 3, 3, 1])
    assert pairs_per_influencer(pos, length, "all").tolist() == [2, 2, 2, 0]
    assert pairs_per_influencer(pos, length, "later").tolist() == [2, 1, 0, 0]
    with pytest.raises(PipelineError, match="analysis.influence.affected"):
        pairs_per_influencer(pos, length, "auto")  # resolved first


# ---------------------------------------------------------------- on a real dump of an untrained model

@pytest.fixture(scope="module")
def experiment(tmp_path_factory, shared_zip):
    root = tmp_path_factory.mktemp("influence")

    def cfg(objective="lm", *extra, seed=1):
        return compose(["experiment=smoke", f"paths.results={root}", f"data.archive={shared_zip}", f"objective={objective}",
                        f"seed={seed}", "dump.device=cpu", "train.progress=false", "analysis.influence.max_sentences=60",
                        "analysis.min_samples_per_dim=2", "analysis.influence.min_influencers=20", *extra])

    prepare_data(cfg())
    train_tokenizer(cfg())
    probe = Path(cfg().paths.data) / "probe.txt"
    replace_output(probe, "".join(f"{line}\n" for line in read_lines(probe)[:80]))
    tok = Tokenizer.load(cfg().paths.tokenizer)
    for objective in ("lm", "mlm"):
        save_untrained(cfg(objective), tok)
        dump(cfg(objective))
    return cfg


def test_buckets_draw_enough_pairs_and_influencers(experiment):
    cfg = experiment("mlm")
    d = load_dump(Path(cfg.paths.dump))
    chosen, row_bucket, plan = choose_influencers(d, cfg, "all")
    t = d.tokens
    first = {int(s): int(np.flatnonzero(t["sentence_id"] == s)[0]) for s in chosen}
    pairs: dict[int, int] = {}
    influencers: dict[int, int] = {}
    for s, positions in chosen.items():
        assert len(set(positions)) == len(positions)
        for p in positions:
            k = int(row_bucket[first[s] + p])
            assert k >= 0
            pairs[k] = pairs.get(k, 0) + int(t["sentence_length"][first[s]]) - 1
            influencers[k] = influencers.get(k, 0) + 1
    edges = bucket_edges(cfg)
    present = set(bucket_index(t["freq_rank"], edges).tolist()) - {-1}
    assert len(pairs) >= 2 and set(pairs) <= present
    assert plan.size >= plan.floor == 2 * int(cfg.model.d_model)
    assert min(pairs.values()) >= plan.size and min(influencers.values()) >= 20


def test_table_on_a_dump(experiment):
    cfg = experiment("lm")
    run(cfg)
    path = Path(cfg.paths.metrics) / "influence" / "lm" / "seed1.csv"
    rows = read_table(path, "influence")
    labels = bucket_labels(bucket_edges(cfg))
    layers = {int(r["layer"]) for r in rows}
    assert layers == set(range(1, int(cfg.model.n_layers) + 1))
    assert len({r["n_pairs"] for r in rows}) == 1, "every bucket and layer is measured with the same n"
    for r in rows:
        assert r["bucket"] in labels and r["measure"] == "pwcca" and r["affected"] == "later"  # auto, causal
        assert 0.0 <= float(r["distance"]) < float(r["shuffled"]) <= 1.0
        assert int(r["n_pairs"]) >= 2 * int(cfg.model.d_model) and int(r["n_influencers"]) >= 20
        assert 0.0 <= float(r["ci_low"]) <= float(r["ci_high"]) <= 1.0  # over the influencers' sentences
    record = read_record(path)
    assert record["bootstrap"]["unit"].startswith("group of probe sentences")
    assert record["affected"] == "later" and record["floor"] == 2 * int(cfg.model.d_model)
    assert {b["bucket"] for b in record["left_out"]} == set(labels) - {r["bucket"] for r in rows}
    per_layer = {}
    for r in rows:
        per_layer.setdefault(r["layer"], set()).add(r["bucket"])
    assert len({frozenset(b) for b in per_layer.values()}) == 1, "every layer measures the same buckets"


def test_earlier_tokens_no_longer_enter_the_lm_rows(experiment):
    """With affected=all an LM's pairs include the tokens before the influencing one, identical in both
    views; the resolved `later` (auto) keeps only the tokens after it, none of them unchanged."""
    cfg = experiment("lm")
    d = load_dump(Path(cfg.paths.dump))
    model = load_matching_model(cfg, d, torch.device("cpu"))
    counts = {}
    for affected in ("all", "later"):
        chosen, row_bucket, _ = choose_influencers(d, cfg, affected)
        pairs, _, _ = collect_pairs(model, d, chosen, row_bucket, len(bucket_labels(bucket_edges(cfg))), affected, 4096,
                                 torch.device("cpu"))
        usual, removed = pairs[1, 0]  # layer 1, the most frequent bucket
        same = (usual - removed).abs().amax(-1) < 1e-6
        counts[affected] = int(same.sum()), len(same)
        if affected == "all":  # the earlier tokens: as many unchanged pairs as influencers' positions
            t = d.tokens
            first = {int(s): int(np.flatnonzero(t["sentence_id"] == s)[0]) for s in chosen}
            earlier = sum(p for s, ps in chosen.items() for p in ps if row_bucket[first[s] + p] == 0)
            assert counts["all"][0] == earlier > 0
    assert counts["later"][0] == 0 and counts["later"][1] < counts["all"][1]


def test_checkpoint_must_match_the_dump(experiment):
    cfg = experiment("lm")
    d = load_dump(Path(cfg.paths.dump))
    path = Path(cfg.paths.model) / "model.pt"
    original = path.read_bytes()
    try:
        save_untrained(experiment("lm", f"paths.model={path.parent}", seed=2), Tokenizer.load(cfg.paths.tokenizer))
        with pytest.raises(PipelineError, match="not the checkpoint"):
            load_matching_model(cfg, d, torch.device("cpu"))
    finally:
        path.write_bytes(original)
