"""The logit lens of our own models (pipeline/dump/readout.py), written by pipeline.dump as readout.npz.

Known answers: the last layer read through the lens is the model's own output (its training loss on
each row's target); a layer whose block is the identity reads exactly as the layer above it (KL 0);
the readout does not depend on how sentences are batched; an MT encoder has none and says why.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config.compose import compose
from pipeline.dump.format import read_readout, read_tokens
from pipeline.dump.readout import targets_of
from pipeline.dump.stage import dump
from pipeline.model.transformer import load_model
from pipeline.prepare.corpus import prepare_data, read_lines
from pipeline.prepare.tokenizer import Tokenizer, train_tokenizer
from pipeline.records.files import read_json, torch_save
from tests.synthetic import replace_output, save_untrained

N_PROBE = 30


def make_cfg(root: Path, shared_zip, objective: str = "lm", *extra: str):
    return compose(["experiment=smoke", f"paths.results={root}", f"data.archive={shared_zip}", f"objective={objective}",
                    "seed=1", "dump.device=cpu", "dump.dtype=float32", "dump.mlm_maskings=2", "train.progress=false",
                    *extra])


@pytest.fixture(scope="module")
def root(tmp_path_factory, shared_zip) -> Path:
    root = tmp_path_factory.mktemp("readout")
    cfg = make_cfg(root, shared_zip)
    prepare_data(cfg)
    train_tokenizer(cfg)
    probe = Path(cfg.paths.data) / "probe.txt"
    replace_output(probe, "".join(f"{line}\n" for line in read_lines(probe)[:N_PROBE]))
    tok = Tokenizer.load(cfg.paths.tokenizer)
    for objective in ("lm", "mlm", "mt"):
        save_untrained(make_cfg(root, shared_zip, objective), tok)
    return root


def _own_loss(model, x: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return F.cross_entropy(model(x)[0], labels, reduction="none").numpy()


def test_lm_readout_of_the_last_layer_is_the_training_loss(root, shared_zip):
    cfg = make_cfg(root, shared_zip, "lm")
    out = dump(cfg)
    r, t = read_readout(out), read_tokens(out)
    model, _ = load_model(Path(cfg.paths.model) / "model.pt")
    model.eval()
    tok = Tokenizer.load(cfg.paths.tokenizer)
    assert np.array_equal(r["rows"], np.arange(len(t["sentence_id"])))  # every row has a target (eos last)
    for sid in np.unique(t["sentence_id"])[:8]:
        rows = np.flatnonzero(t["sentence_id"] == sid)
        ids = t["token_id"][rows].tolist()
        x = torch.tensor([[tok.bos_id, *ids]])
        labels = torch.tensor([*ids, tok.eos_id])
        # position p of [bos] x_1 .. x_n predicts labels[p]; the rows are x_1 .. x_n (positions 1 .. n)
        np.testing.assert_allclose(r["loss"][-1, rows], _own_loss(model, x, labels)[1:], rtol=1e-4, atol=1e-5)
        assert r["target"][rows].tolist() == [*ids[1:], tok.eos_id]
    np.testing.assert_allclose(r["kl"][-1], 0, atol=1e-6)
    assert np.isfinite(r["loss"]).all() and (r["kl"] >= 0).all()
    assert read_json(out / "meta.json")["readout"]["measured"] is True


def test_a_block_that_is_the_identity_reads_as_the_layer_above_it(root, shared_zip):
    """Pre-norm, with the last block's attention and MLP outputs zeroed: layer L - 1 = layer L, so its
    KL to the last layer is 0 and its loss the same, while the layers below differ."""
    extra = ("model.norm=pre", "paths.results=" + str(root / "copy"))
    cfg = make_cfg(root, shared_zip, "lm", *extra)
    prepare_data(cfg)
    train_tokenizer(cfg)
    path = save_untrained(cfg, Tokenizer.load(cfg.paths.tokenizer))
    ckpt = torch.load(path, weights_only=False)
    last = ckpt["model"]["args"]["n_layers"] - 1
    zeroed = [name for name in ckpt["state_dict"]
              if name.startswith((f"stack.blocks.{last}.attn.out.", f"stack.blocks.{last}.mlp.down."))]
    assert len(zeroed) == 4
    for name in zeroed:
        ckpt["state_dict"][name].zero_()
    torch_save(ckpt, path)
    out = dump(cfg)
    r = read_readout(out)
    L = r["loss"].shape[0] - 1
    np.testing.assert_allclose(r["kl"][L - 1], 0, atol=1e-6)
    np.testing.assert_allclose(r["loss"][L - 1], r["loss"][L], rtol=1e-5, atol=1e-6)
    assert r["kl"][L - 2].mean() > 1e-4


def test_mlm_readout_is_on_the_chosen_positions_of_the_masked_run(root, shared_zip):
    cfg = make_cfg(root, shared_zip, "mlm")
    out = dump(cfg)
    assert read_readout(out) is None and read_json(out / "meta.json")["readout"]["why"] == "in masked/"
    r, t = read_readout(out / "masked"), read_tokens(out / "masked")
    assert np.array_equal(r["rows"], np.flatnonzero(t["masked"] > 0))
    assert np.array_equal(r["target"], t["label_id"][r["rows"]])
    model, _ = load_model(Path(cfg.paths.model) / "model.pt")
    model.eval()
    tok = Tokenizer.load(cfg.paths.tokenizer)
    for row in r["rows"][:: max(1, len(r["rows"]) // 10)]:
        rows = np.flatnonzero((t["sentence_id"] == t["sentence_id"][row]) & (t["masking"] == t["masking"][row]))
        x = torch.tensor([[tok.bos_id, *t["input_id"][rows].tolist(), tok.eos_id]])
        with torch.no_grad():
            logits = model(x)[0, 1 + row - rows[0]]
        j = int(np.searchsorted(r["rows"], row))
        assert r["loss"][-1, j] == pytest.approx(float(-torch.log_softmax(logits, -1)[t["label_id"][row]]), rel=1e-4)


def test_readout_does_not_depend_on_the_batching(root, shared_zip):
    a = read_readout(dump(make_cfg(root, shared_zip, "lm")))
    other = make_cfg(root, shared_zip, "lm", "dump.batch_tokens=40", f"paths.dump={root / 'lm-small-batches'}")
    b = read_readout(dump(other))
    for name in ("rows", "target", "top1"):
        assert np.array_equal(a[name], b[name])
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4, atol=1e-5)


def test_an_mt_encoder_has_no_readout_and_says_why(root, shared_zip):
    out = dump(make_cfg(root, shared_zip, "mt"))
    assert read_readout(out) is None
    assert "no output head" in read_json(out / "meta.json")["readout"]["why"]


def test_targets_of_an_lm_stop_at_a_gap_and_end_with_eos():
    columns = {"sentence_id": np.array([0, 0, 0, 1, 1, 2]), "position": np.array([0, 1, 3, 0, 1, 0]),
               "token_id": np.array([5, 6, 7, 8, 9, 10])}
    assert targets_of(columns, "lm", False, eos_id=2).tolist() == [6, -1, 2, 9, 2, 2]
    assert targets_of(columns, "lm", False).tolist() == [6, -1, -1, 9, -1, -1]
    assert (targets_of(columns, "mt", False, eos_id=2) == -1).all()


def test_the_readout_table_averages_each_layer_with_a_sentence_interval(root, shared_zip):
    from analysis.io.tables import read_record, read_replicates, read_table
    from analysis.measures.readout import run

    cfg = make_cfg(root, shared_zip, "lm")
    r = read_readout(dump(cfg))
    path = run(cfg)
    rows = read_table(path, "readout")
    L = r["loss"].shape[0] - 1
    assert [(x["quantity"], int(x["layer"])) for x in rows] == [(q, layer) for q in ("loss", "accuracy", "kl")
                                                                for layer in range(L + 1)]
    n_sentences = len(np.unique(read_tokens(cfg.paths.dump)["sentence_id"]))
    reps = read_replicates(path, "readout", len(rows))["value"]
    assert reps.shape == (len(rows), 200)
    for i, row in enumerate(rows):
        array = {"loss": r["loss"], "accuracy": r["top1"], "kl": r["kl"]}[row["quantity"]]
        assert float(row["value"]) == pytest.approx(float(array[int(row["layer"])].astype(np.float64).mean()))
        assert int(row["n_tokens"]) == len(r["rows"]) and int(row["n_sentences"]) == n_sentences
        assert row["target"] == "next"
        if row["quantity"] == "kl" and int(row["layer"]) == L:
            assert float(row["ci_low"]) == pytest.approx(0, abs=1e-6) == float(row["ci_high"])
        else:
            assert float(row["ci_low"]) < float(row["value"]) < float(row["ci_high"])
            assert np.nanstd(reps[i]) > 0
    assert read_record(path)["not_measured"] is None


def test_a_model_without_readout_gets_an_empty_table_that_says_why(root, shared_zip):
    from analysis.io.tables import read_record, read_table
    from analysis.measures.readout import run

    cfg = make_cfg(root, shared_zip, "mt")
    dump(cfg)
    path = run(cfg)
    assert read_table(path, "readout") == []
    assert "no output head" in read_record(path)["not_measured"]


def test_the_tuned_lens_recovers_a_layer_that_is_an_affine_map_of_the_last(root, shared_zip):
    """Translators fitted by least squares: where layer L is an exact affine function of layer l (here
    the states are made so), the tuned reading of l equals the last layer's (KL 0), where the logit lens
    does not; on a real dump, the tuned lens is read at every layer and the measure gives its rows."""
    from pipeline.dump.tuned_lens import Translators

    gen = torch.Generator().manual_seed(0)
    h1 = torch.randn(1, 400, 8, generator=gen)
    w, b = torch.randn(8, 8, generator=gen), torch.randn(8, generator=gen)
    states = [torch.randn(1, 400, 8, generator=gen), h1, h1 @ w + b]
    translators = Translators(2, 8)
    translators.add(states, np.zeros(400, dtype=np.int64), np.arange(400))
    maps = translators.solve()
    torch.testing.assert_close(h1[0] @ maps[1][0] + maps[1][1], states[2][0], atol=1e-3, rtol=1e-3)

    from analysis.io.tables import read_table
    from analysis.measures.readout import run

    cfg = make_cfg(root, shared_zip, "lm", "dump.tuned_lens=30", f"paths.dump={root / 'lm-tuned'}",
                   f"paths.metrics={root / 'metrics-tuned'}")
    out = dump(cfg)
    r = read_readout(out)
    assert read_json(out / "meta.json")["readout"]["tuned_lens"]["sentences"] == 30
    np.testing.assert_allclose(r["tuned_loss"][-1], r["loss"][-1])  # the last layer reads alike through both
    assert not np.allclose(r["tuned_loss"][0], r["loss"][0])
    rows = read_table(run(cfg), "readout")
    assert {x["lens"] for x in rows} == {"logit", "tuned"}


def test_the_lens_can_read_a_subset_of_the_sentences_the_same_for_every_model(root, shared_zip):
    from pipeline.dump.readout import sentence_subset

    out = dump(make_cfg(root, shared_zip, "lm", "dump.readout_sentences=7", f"paths.dump={root / 'lm-7'}"))
    r, t = read_readout(out), read_tokens(out)
    kept = np.unique(t["sentence_id"][r["rows"]])
    assert len(kept) == 7
    assert np.array_equal(r["rows"], np.flatnonzero(np.isin(t["sentence_id"], kept)))
    # a model that keeps fewer sentences reads the same ones among them
    ids = np.unique(t["sentence_id"])
    fewer = np.setdiff1d(ids, ids[::5])
    assert set(kept) - set(ids[::5]) <= set(np.unique(fewer[sentence_subset(fewer, 7)]))
