"""Data-parallel training for real on the CPU: 2 ranks under torchrun (gloo) on the smoke slice.

Two ranks splitting each global batch make the update one process makes on the whole batch, up to
the order of floating-point sums: with an objective that draws no randomness (LM, no dropout) their
weights after 20 steps equal the single process's within TOLERANCE. A 2-rank run killed after a
checkpoint and started again ends with the weights of an uninterrupted 2-rank run, bit for bit
(every rank's random streams are in the checkpoint).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.train.stage import train

# Measured on the 2-core development machine (fp32, torch 2.13.0 CPU, LM, 20 steps): the largest
# absolute difference of any weight from the single process's was 1.1e-4 (after 1 step: 7.8e-7; the
# ranks sum the batch's gradients in another order and pad their shares to their own longest row,
# and Adam's normalised steps carry those float differences on). Averaging the two shares' mean
# losses unweighted instead (what DDP's gradient averaging does with unequal shares) makes it 1.6e-3.
TOLERANCE = 5e-4
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
COMMON = ["train.compile=false", "train.precision=fp32", "train.threads=1", "train.patience=100",
          "train.dev_sentences=100", "train.bleu_sentences=20", "train.progress=false"]
NO_RANDOMNESS = ["objective=lm", "model.dropout=0", "train.max_steps=20", "train.eval_every=10"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_zip):
    """The smoke data and tokenizer, made once; every run of this module trains from them."""
    from pipeline.config.compose import compose
    from pipeline.prepare.corpus import prepare_data
    from pipeline.prepare.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("prepared")
    cfg = compose(["experiment=smoke", f"paths.results={folder}", f"data.archive={shared_zip}"])
    prepare_data(cfg)
    train_tokenizer(cfg)
    return folder


def _args(prepared: Path, zip_: Path, model: Path, *overrides: str) -> list[str]:
    return ["experiment=smoke", f"paths.results={prepared}", f"paths.model={model}", f"data.archive={zip_}",
            f"hydra.run.dir={model}/hydra", *COMMON, *overrides]


def _torchrun(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*TORCHRUN, "-m", "pipeline.train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", map_location="cpu", weights_only=True)["state_dict"]


def test_two_ranks_train_the_weights_of_one_process(prepared, shared_zip, tmp_path):
    import json

    from pipeline.config.compose import compose

    single = [a for a in _args(prepared, shared_zip, tmp_path / "single", *NO_RANDOMNESS) if not a.startswith("hydra.")]
    one = train(compose(single))
    two = _finish(_torchrun(_args(prepared, shared_zip, tmp_path / "two", *NO_RANDOMNESS)))
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "two")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= TOLERANCE, f"largest weight difference {worst:.3g}"
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["ranks"] == 2 and one["ranks"] == 1
    assert summary["steps"] == one["steps"] == 20 and summary["train_tokens"] == one["train_tokens"]
    assert abs(summary["dev"]["loss"] - one["dev"]["loss"]) < 1e-4
    # the logged train loss is the whole batch's (every rank's tokens), as one process logs it
    logs = [[json.loads(line)["train_loss"] for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
            for name in ("single", "two")]
    assert logs[0] == pytest.approx(logs[1], rel=1e-5)
    assert "2 ranks" in two


@pytest.mark.slow
def test_a_killed_two_rank_run_resumes_to_the_uninterrupted_weights(prepared, shared_zip, tmp_path):
    """MLM with dropout: every rank's masking and dropout streams must come back from last.pt."""
    settings = ["objective=mlm", "train.max_steps=150", "train.eval_every=10"]
    _finish(_torchrun(_args(prepared, shared_zip, tmp_path / "straight", *settings)))
    folder = tmp_path / "resumed"
    proc = _torchrun(_args(prepared, shared_zip, folder, *settings))
    deadline = time.monotonic() + 300
    while not (folder / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # torchrun and both ranks, mid-run (the ranks run in sessions of their own: found by their arguments)
    subprocess.run(["pkill", "-KILL", "-f", f"paths.model={folder}"], check=False)
    out, _ = proc.communicate()
    assert (folder / "last.pt").exists() and not (folder / "model.pt").exists(), f"not killed mid-run: {out[-3000:]}"
    step = torch.load(folder / "last.pt", weights_only=True)["train_state"]["step"]
    assert 10 <= step < 150
    _finish(_torchrun(_args(prepared, shared_zip, folder, *settings)))
    a, b = _weights(tmp_path / "straight"), _weights(folder)
    for name in a:
        assert torch.equal(a[name], b[name]), name
