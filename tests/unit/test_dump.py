"""pipeline.dump: layer files, token table, masked MLM set, batching independence, kill safety.

The fixtures build the smoke experiment's data and tokenizer once, replace probe.txt by a small one
with a few awkward lines, and save untrained models in the format train.py writes (no training).
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.dump import stage as dump_mod
from pipeline.config.compose import compose
from pipeline.prepare.corpus import prepare_data, read_lines
from pipeline.dump.stage import dump
from pipeline.dump.format import MASKED_COLUMNS, TOKEN_COLUMNS, layer_file, read_tokens
from pipeline.model.transformer import load_model
from pipeline.records.files import read_json
from pipeline.errors import PipelineError
from pipeline.prepare.tokenizer import Tokenizer, load_frequency_ranks, train_tokenizer
from tests.synthetic import replace_output, save_untrained

REPO = Path(__file__).resolve().parents[2]
ARCHIVE = REPO.parent / "shared/data/tatoeba-deu-eng/deu-eng.zip"
pytestmark = pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"the Tatoeba archive {ARCHIVE} is not available")

MODELS = [("lm", 1), ("mt", 1), ("mlm", 1), ("mlm", 2)]
N_PROBE = 40  # real probe sentences kept in the tiny probe.txt
TOO_LONG = " ".join(["elephant"] * 120)  # far beyond the tiny model's n_ctx - 2 = 94 tokens
AWKWARD = ["", TOO_LONG, "Tom wrote [MASK] on the board.", "Ça coûte 5 € — d'accord? 😀\u2028ok"]
FP16 = {"rtol": 1e-3, "atol": 1e-4}


def make_cfg(root: Path, objective: str = "lm", seed: int = 1, *extra: str):
    return compose(["experiment=smoke", f"paths.results={root}", f"data.archive={ARCHIVE}",
                    f"objective={objective}", f"seed={seed}", "dump.device=cpu", "train.progress=false", *extra])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dump")
    cfg = make_cfg(root)
    prepare_data(cfg)
    train_tokenizer(cfg)
    probe = Path(cfg.paths.data) / "probe.txt"
    lines = read_lines(probe)[:N_PROBE]
    for pos, line in zip((3, 10, 17, 30), AWKWARD):
        lines.insert(pos, line)
    replace_output(probe, "".join(f"{line}\n" for line in lines))
    tok = Tokenizer.load(cfg.paths.tokenizer)
    for objective, seed in MODELS:
        save_untrained(make_cfg(root, objective, seed), tok)
    return root


@pytest.fixture(scope="module")
def dumps(root) -> dict[tuple[str, int], Path]:
    return {(objective, seed): dump(make_cfg(root, objective, seed)) for objective, seed in MODELS}


@pytest.fixture(scope="module")
def tok(root) -> Tokenizer:
    return Tokenizer.load(make_cfg(root).paths.tokenizer)


def layers(folder: Path) -> list[np.ndarray]:
    return [np.load(path, mmap_mode="r") for path in sorted(folder.glob("layer_*.npy"))]


def probe_lines(root: Path) -> list[str]:
    return read_lines(Path(make_cfg(root).paths.data) / "probe.txt")


def test_layout_shapes_and_meta(dumps):
    for (objective, seed), folder in dumps.items():
        meta = read_json(folder / "meta.json")
        files = sorted(p.name for p in folder.glob("layer_*.npy"))
        assert files == [layer_file(l) for l in range(meta["n_layers"] + 1)]
        for array in layers(folder):
            assert isinstance(array, np.memmap)
            assert array.shape == (meta["n_tokens"], meta["d_model"]) and array.dtype == np.float16
            assert np.isfinite(array).all()
        assert (meta["objective"], meta["seed"], meta["dtype"]) == (objective, seed, "float16")
        assert meta["n_sentences"] == N_PROBE + 2 and meta["n_skipped_too_long"] == 1 and meta["n_skipped_empty"] == 1
        assert len(meta["checkpoint_sha256"]) == 64 and meta["summary"]["steps"] == 0
        assert read_json(folder / "stage.json")["stage"] == "dump"
        assert not list(folder.rglob("*.partial"))
        assert (folder / "masked").is_dir() == (objective == "mlm")
        if objective == "mlm":
            assert read_json(folder / "masked" / "meta.json")["masked"] is True
            assert len(layers(folder / "masked")) == meta["n_layers"] + 1


def test_token_table_matches_tokenizer(root, dumps, tok):
    table = read_tokens(dumps["lm", 1])
    assert list(table) == list(TOKEN_COLUMNS)
    ranks = load_frequency_ranks(make_cfg(root).paths.tokenizer)
    rows = [(sid, pos, t, tok.piece(t), len(ids), ranks[t])
            for sid, ids in enumerate(tok.encode_batch(probe_lines(root))) if 0 < len(ids) <= 94
            for pos, t in enumerate(ids)]
    expected = dict(zip(TOKEN_COLUMNS, map(list, zip(*rows))))
    for name in TOKEN_COLUMNS:
        assert table[name].tolist() == expected[name], name
    skipped = {probe_lines(root).index(line) for line in ("", TOO_LONG)}
    assert skipped.isdisjoint(table["sentence_id"].tolist())
    assert "\u2028" in "".join(table["token"].tolist()) or "<0xE2>" in table["token"].tolist()


def test_same_rows_for_every_objective(dumps):
    tables = {key: (folder / "tokens.tsv").read_bytes() for key, folder in dumps.items()}
    assert len(set(tables.values())) == 1
    # the masks depend on dump.mask_seed only, not on the model's seed
    assert (dumps["mlm", 1] / "masked/tokens.tsv").read_bytes() == (dumps["mlm", 2] / "masked/tokens.tsv").read_bytes()


def _direct_states(root: Path, objective: str, seed: int, ids: list[int], tok: Tokenizer) -> list[np.ndarray]:
    model, _ = load_model(Path(make_cfg(root, objective, seed).paths.model) / "model.pt")
    with torch.no_grad():
        _, states = model.encode(torch.tensor([[tok.bos_id, *ids, tok.eos_id]]), return_states=True)
    return [s[0, 1:-1].numpy() for s in states]


@pytest.mark.parametrize("objective,masked", [("lm", False), ("mt", False), ("mlm", False), ("mlm", True)])
def test_states_equal_a_direct_encode(root, dumps, tok, objective, masked):
    folder = dumps[objective, 1] / ("masked" if masked else "")
    table, arrays = read_tokens(folder), layers(folder)
    lengths = table["sentence_length"]
    masking = table["masking"] if masked else np.zeros(len(lengths), dtype=np.int64)
    for sid, m in ((table["sentence_id"][0], 0), (table["sentence_id"][np.argmax(lengths)], 0),
                   (table["sentence_id"][-1], masking[-1])):  # the last row: the last masking's
        rows = np.flatnonzero((table["sentence_id"] == sid) & (masking == m))
        assert rows.tolist() == list(range(rows[0], rows[0] + lengths[rows[0]]))  # contiguous, in order
        ids = table["input_id" if masked else "token_id"][rows].tolist()
        for layer, (want, got) in enumerate(zip(_direct_states(root, objective, 1, ids, tok), arrays)):
            np.testing.assert_allclose(got[rows].astype(np.float32), want, **FP16, err_msg=f"layer {layer}")


def test_lm_state_does_not_see_the_future(root, tok, dumps):
    """The causal stack: a token's state is the same whatever follows it (so the eos is harmless)."""
    table, last = read_tokens(dumps["lm", 1]), layers(dumps["lm", 1])[-1]
    rows = np.flatnonzero(table["sentence_id"] == table["sentence_id"][0])
    prefix = table["token_id"][rows][:2].tolist()
    np.testing.assert_allclose(last[rows[:2]].astype(np.float32), _direct_states(root, "lm", 1, prefix, tok)[-1], **FP16)


def test_mlm_masked_set(dumps, tok):
    table = read_tokens(dumps["mlm", 1] / "masked")
    assert list(table) == list(MASKED_COLUMNS)
    plain = read_tokens(dumps["mlm", 1])
    maskings = read_json(dumps["mlm", 1] / "masked" / "meta.json")["maskings"]
    assert maskings == 4 and len(table["masking"]) == maskings * len(plain["token_id"])
    for name in TOKEN_COLUMNS:  # the probe set once per masking, in order
        assert np.array_equal(table[name], np.tile(plain[name], maskings)), name
    assert np.array_equal(table["masking"], np.repeat(np.arange(maskings), len(plain["token_id"])))
    chosen_by = table["masked"].reshape(maskings, -1) > 0
    assert all(not np.array_equal(chosen_by[0], chosen_by[m]) for m in range(1, maskings))  # independent masks
    kind, inp, orig = table["masked"], table["input_id"], table["token_id"]
    assert np.array_equal(table["label_id"], orig)
    chosen = kind > 0
    assert 0.08 < chosen.mean() < 0.22, chosen.mean()
    assert (kind[chosen] == 1).mean() > 0.6
    assert (inp[kind == 1] == tok.mask_id).all()
    assert (inp[(kind == 0) | (kind == 3)] == orig[(kind == 0) | (kind == 3)]).all()
    assert ((inp[kind == 2] >= tok.n_special) & (inp[kind == 2] < tok.vocab_size)).all()
    assert (inp[kind != 1] != tok.mask_id).all()
    assert not np.array_equal(layers(dumps["mlm", 1])[-1], layers(dumps["mlm", 1] / "masked")[-1])


def test_batch_tokens_does_not_change_the_result(root, dumps, tmp_path):
    small = dump(make_cfg(root, "mlm", 1, "dump.batch_tokens=24", f"paths.dump={tmp_path / 'small'}"))
    for sub in ("", "masked"):
        assert (small / sub / "tokens.tsv").read_bytes() == (dumps["mlm", 1] / sub / "tokens.tsv").read_bytes()
        for a, b in zip(layers(small / sub), layers(dumps["mlm", 1] / sub), strict=True):
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), **FP16)


def test_killed_dump_leaves_nothing_and_a_rerun_completes(root, dumps, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    cfg = make_cfg(root, "mlm", 1, "dump.batch_tokens=64", f"paths.dump={out}")
    out.mkdir()
    (out / ".layer_00.npy.partial").write_bytes(b"left by a process killed with SIGKILL")
    calls = {"n": 0}
    real_write = dump_mod.LayerWriter.write

    def dying_write(self, *args):
        calls["n"] += 1
        if calls["n"] == 150:
            raise KeyboardInterrupt("killed mid-way")
        return real_write(self, *args)

    monkeypatch.setattr(dump_mod.LayerWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        dump(cfg)
    assert calls["n"] == 150
    assert not [p for p in out.rglob("*") if p.is_file()], "a killed dump left files behind"
    monkeypatch.undo()
    dump(cfg)
    assert read_json(out / "stage.json")["stage"] == "dump"
    for sub in ("", "masked"):
        for a, b in zip(layers(out / sub), layers(dumps["mlm", 1] / sub), strict=True):
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), **FP16)
    assert not list(out.rglob("*.partial"))


SIGKILL_CHILD = """
import os, signal, sys
import pipeline.dump.stage as d
from pipeline.config.compose import compose
real, calls = d.LayerWriter.write, [0]
def write(self, *args):
    calls[0] += 1
    if calls[0] == 150:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup can run: as the OOM killer or a lost job would
    real(self, *args)
d.LayerWriter.write = write
d.dump(compose(sys.argv[1:]))
"""


def test_dump_killed_with_sigkill_is_not_trusted_and_a_rerun_completes(root, dumps, tmp_path):
    out = tmp_path / "sigkill"
    args = ["experiment=smoke", f"paths.results={root}", f"data.archive={ARCHIVE}", "objective=mlm", "seed=1",
            "dump.device=cpu", "train.progress=false", "dump.batch_tokens=64", f"paths.dump={out}"]
    shutil.copytree(dumps["mlm", 1], out)  # a finished dump of another dump config (batch_tokens): redone
    killed = subprocess.run([sys.executable, "-c", SIGKILL_CHILD, *args], cwd=REPO, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert list(out.rglob("*.partial")), "the child was killed before it began writing"
    assert not (out / "stage.json").exists() and not list(out.rglob("layer_*.npy"))
    dump(compose(args))
    assert not list(out.rglob("*.partial"))
    assert (out / "masked/tokens.tsv").read_bytes() == (dumps["mlm", 1] / "masked/tokens.tsv").read_bytes()
    for sub in ("", "masked"):
        for a, b in zip(layers(out / sub), layers(dumps["mlm", 1] / sub), strict=True):
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), **FP16)


def test_finished_dump_is_not_redone_but_a_changed_one_is(root, tmp_path, monkeypatch):
    out = tmp_path / "again"
    first = make_cfg(root, "lm", 1, f"paths.dump={out}")
    dump(first)

    def refuse(*args, **kwargs):
        raise AssertionError("the dump ran again")

    monkeypatch.setattr(dump_mod, "write_states", refuse)
    dump(first)  # current: skipped
    monkeypatch.undo()
    dump(make_cfg(root, "lm", 1, f"paths.dump={out}", "dump.dtype=float32"))
    assert read_json(out / "meta.json")["dtype"] == "float32"
    assert all(a.dtype == np.float32 for a in layers(out))


def test_missing_checkpoint_names_the_path(root):
    cfg = make_cfg(root, "lm", 9)
    with pytest.raises(PipelineError, match="train it first") as err:
        dump(cfg)
    assert str(Path(cfg.paths.model) / "model.pt") in str(err.value)
    assert not Path(cfg.paths.dump, "stage.json").exists()


def test_checkpoint_of_another_config_is_refused(root):
    with pytest.raises(PipelineError, match="another config"):
        dump(make_cfg(root, "lm", 1, "train.lr=0.5", f"paths.dump={root / 'other'}"))


def test_cli_skips_a_current_dump_and_reports_errors(root, dumps):
    base = [sys.executable, "-m", "pipeline.dump", "experiment=smoke", f"paths.results={root}",
            f"data.archive={ARCHIVE}", "objective=lm", "dump.device=cpu", "train.progress=false"]
    done = subprocess.run([*base, "seed=1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    # Hydra's own logging setup decides the stream of log lines: look at both
    assert done.returncode == 0 and "nothing to do" in done.stdout + done.stderr, done.stderr
    missing = subprocess.run([*base, "seed=9"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "error:" in missing.stderr and "model.pt not found" in missing.stderr


# ---------------------------------------------------------------- the step-0 control (objective init)

def _stack_weights(state_dict: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state_dict.items() if k.startswith("stack.")}


@pytest.fixture(scope="module")
def init_dumps(root) -> dict[int, Path]:
    return {seed: dump(make_cfg(root, "init", seed)) for seed in (1, 2)}


def test_init_dump_is_a_forward_pass_of_a_freshly_built_stack(root, init_dumps, dumps, tok):
    from pipeline.config.compose import to_plain
    from pipeline.model.transformer import ModelArgs, build_model

    folder = init_dumps[1]
    meta = read_json(folder / "meta.json")
    assert (meta["objective"], meta["kind"], meta["seed"], meta["summary"]) == ("init", "init", 1, None)
    assert not (folder / "masked").exists()
    assert (folder / "tokens.tsv").read_bytes() == (dumps["lm", 1] / "tokens.tsv").read_bytes()
    # built here from scratch, as train.py builds every model: the MT encoder is bidirectional, like init
    cfg = make_cfg(root, "init", 1)
    fresh = build_model("mt", ModelArgs(d_vocab=tok.vocab_size, pad_id=tok.pad_id, **to_plain(cfg.model)), 1).eval()
    table, arrays = read_tokens(folder), layers(folder)
    for sid in (table["sentence_id"][0], table["sentence_id"][-1]):
        rows = np.flatnonzero(table["sentence_id"] == sid)
        with torch.no_grad():
            _, states = fresh.encode(torch.tensor([[tok.bos_id, *table["token_id"][rows].tolist(), tok.eos_id]]),
                                     return_states=True)
        for layer, (state, got) in enumerate(zip(states, arrays, strict=True)):
            np.testing.assert_allclose(got[rows].astype(np.float32), state[0, 1:-1].numpy(), **FP16,
                                       err_msg=f"layer {layer}")
    # another seed is another initialisation
    assert not np.allclose(layers(init_dumps[2])[-1].astype(np.float32), arrays[-1].astype(np.float32), atol=1e-2)
    # the checkpoint influence reruns is the one the dump was made from, with the stack's weights
    saved = Path(cfg.paths.model) / "model.pt"
    assert meta["checkpoint"] == str(saved) and read_json(folder / "stage.json")["checkpoint_sha256"] == \
        meta["checkpoint_sha256"]
    model, _ = load_model(saved)
    assert not model.stack.causal
    for name, weight in _stack_weights(fresh.state_dict()).items():
        assert torch.equal(model.state_dict()[name], weight), name


def test_init_stack_equals_the_step0_weights_train_starts_from(root, smoke_cfg, tmp_path, monkeypatch):
    """pipeline.train's own model at step 0 (captured as it is built) has the init checkpoint's stack."""
    import pipeline.train.stage as train_mod

    built = {}

    def capture(kind, args, seed):
        model = real_build(kind, args, seed)
        built["stack"] = {k: v.clone() for k, v in _stack_weights(model.state_dict()).items()}
        return model

    class Stop(Exception):
        pass

    def stop(step):
        raise Stop

    real_build = train_mod.build_model
    monkeypatch.setattr(train_mod, "build_model", capture)
    cfg = make_cfg(root, "lm", 1, f"paths.model={tmp_path / 'lm'}")
    with pytest.raises(Stop):
        train_mod.train(cfg, on_step=stop)
    init_model, _ = load_model(Path(make_cfg(root, "init", 1).paths.model) / "model.pt")
    init_stack = _stack_weights(init_model.state_dict())
    assert built["stack"].keys() == init_stack.keys()
    for name, weight in init_stack.items():
        assert torch.equal(built["stack"][name], weight), name


def test_init_dump_reruns_for_model_settings_not_training_settings(root, tmp_path, monkeypatch):
    where = [f"paths.dump={tmp_path / 'dump'}", f"paths.model={tmp_path / 'model'}"]
    dump(make_cfg(root, "init", 1, *where))

    def refuse(*args, **kwargs):
        raise AssertionError("the dump ran again")

    monkeypatch.setattr(dump_mod, "write_states", refuse)
    dump(make_cfg(root, "init", 1, *where, "train.lr=0.5"))  # never trained: training settings do not matter
    with pytest.raises(AssertionError, match="ran again"):
        dump(make_cfg(root, "init", 1, *where, "model.dropout=0.2"))
    (tmp_path / "model" / "model.pt").unlink()  # the step-0 checkpoint is the dump's own output: remade
    with pytest.raises(AssertionError, match="ran again"):
        dump(make_cfg(root, "init", 1, *where))
