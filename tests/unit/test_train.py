"""Training for real on the smoke slice: the loss falls for every objective, a killed run resumes to
the same weights, a finished run is not repeated, and bad settings fail before any work."""
import math
import subprocess
import sys

import pytest
import torch

from pipeline.store import PipelineError
from pipeline.train import train
from tests.synthetic import FAST_TRAINING, read_log


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    """One prepared corpus + tokenizer for the whole module (each test trains into its own folder)."""
    return tmp_path_factory.mktemp("prepared")


def cfg_for(smoke_cfg, shared_data, tmp_path, *overrides):
    return smoke_cfg(f"paths.data={shared_data}/data", f"paths.tokenizer={shared_data}/tokenizer",
                     f"paths.model={tmp_path}/model", *FAST_TRAINING, *overrides)


@pytest.mark.parametrize("objective", ["mt", "lm", "mlm", "mt_td", "lm_td"])
def test_loss_falls_for_every_objective(objective, smoke_cfg, shared_data, tmp_path):
    cfg = cfg_for(smoke_cfg, shared_data, tmp_path, f"objective={objective}")
    summary = train(cfg)
    log = read_log(tmp_path / "model")
    assert [e["step"] for e in log] == [10, 20, 30, 40]
    chance = math.log(cfg.data.tokenizer.vocab_size)  # a uniform guess over the vocabulary
    assert log[-1]["dev_loss"] < log[0]["dev_loss"] < chance
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert summary["dev"]["loss"] == pytest.approx(min(e["dev_loss"] for e in log), rel=1e-6)
    quality = {"mt": "bleu", "lm": "perplexity", "mlm": "accuracy"}[cfg.objective.kind]
    assert quality in summary["dev"]
    ckpt = torch.load(tmp_path / "model" / "model.pt", weights_only=False)
    assert ckpt["model"]["kind"] == cfg.objective.kind and ckpt["config"]["objective"]["name"] == objective
    assert not (tmp_path / "model" / "last.pt").exists()


def test_killed_run_resumes_to_the_same_weights(smoke_cfg, shared_data, tmp_path):
    """Uninterrupted vs killed after step 25 (last checkpoint: step 20) and started again."""
    straight = cfg_for(smoke_cfg, shared_data, tmp_path / "a", "objective=mlm", "train.eval_every=5")
    train(straight)

    class Killed(Exception):
        pass

    def kill_at_23(step):
        if step == 23:
            raise Killed

    resumed = cfg_for(smoke_cfg, shared_data, tmp_path / "b", "objective=mlm", "train.eval_every=5")
    with pytest.raises(Killed):
        train(resumed, on_step=kill_at_23)
    folder = tmp_path / "b" / "model"
    assert (folder / "last.pt").exists() and not (folder / "model.pt").exists()
    assert torch.load(folder / "last.pt", weights_only=False)["train_state"]["step"] == 20
    train(resumed)  # redoes steps 21..23 from the checkpoint of step 20, then goes on
    a = torch.load(tmp_path / "a" / "model" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "b" / "model" / "model.pt", weights_only=False)["state_dict"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    strip = lambda log: [{k: v for k, v in e.items() if k not in ("elapsed_s", "tokens_per_s")} for e in log]  # noqa: E731
    assert strip(read_log(tmp_path / "a" / "model")) == strip(read_log(tmp_path / "b" / "model"))


def test_finished_run_is_not_repeated_but_a_changed_setting_retrains(smoke_cfg, shared_data, tmp_path):
    cfg = cfg_for(smoke_cfg, shared_data, tmp_path, "objective=lm", "train.max_steps=10")
    first = train(cfg)
    mtime = (tmp_path / "model" / "model.pt").stat().st_mtime_ns
    assert train(cfg) == first
    assert (tmp_path / "model" / "model.pt").stat().st_mtime_ns == mtime
    again = train(cfg_for(smoke_cfg, shared_data, tmp_path, "objective=lm", "train.max_steps=20"))
    assert again["steps"] == 20


@pytest.mark.parametrize("override, key", [
    ("train.decay=sometimes", "train.decay"),
    ("train.precision=fp8", "train.precision"),
    ("model.n_ctx=8", "model.n_ctx"),
    ("model.n_heads=3", "model.n_heads"),
    ("train.max_steps=0", "train.max_steps"),
    ("objective.token_dropout=1.5", "objective.token_dropout"),
])
def test_bad_settings_fail_before_any_work(override, key, smoke_cfg, tmp_path):
    cfg = smoke_cfg(override)
    with pytest.raises(PipelineError, match=key.replace(".", r"\.")):
        train(cfg)
    assert not (tmp_path / "data").exists(), "nothing may be prepared before the settings are checked"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cli_exits_nonzero_with_one_clear_line(tmp_path, shared_zip):
    proc = subprocess.run([sys.executable, "-m", "pipeline.train", "experiment=smoke", f"paths.results={tmp_path}",
                           f"data.archive={shared_zip}", "train.device=cuda"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error: setting train.device='cuda'" in proc.stderr
    assert "Traceback" not in proc.stderr
