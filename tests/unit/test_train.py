"""Training for real on the smoke slice: the loss falls for every objective, a killed run resumes to
the same weights, a finished run is not repeated, and bad settings fail before any work."""
import math
import subprocess
import sys

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.train.stage import train
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
    ckpt = torch.load(tmp_path / "model" / "model.pt", weights_only=True)
    assert ckpt["model"]["kind"] == cfg.objective.kind and ckpt["config"]["objective"]["name"] == objective
    assert not (tmp_path / "model" / "last.pt").exists()


def test_plateau_stop_ends_a_flat_run_and_never_a_falling_one(smoke_cfg, shared_data, tmp_path):
    """lr ~ 0: the dev loss cannot move, so the run stops at the first check (4 evaluations) as
    plateaued; at the normal lr the smoke run's loss falls and it runs to max_steps."""
    flat = train(cfg_for(smoke_cfg, shared_data, tmp_path / "flat", "objective=lm", "train.lr=1e-12",
                         "train.plateau_min_evals=4", "train.max_steps=80"))
    assert (flat["stop_reason"], flat["steps"]) == ("plateau", 40)
    assert flat["convergence"]["converged"]
    falling = train(cfg_for(smoke_cfg, shared_data, tmp_path / "falling", "objective=lm", "train.plateau_min_evals=4"))
    assert falling["stop_reason"] == "max_steps" and not falling["convergence"]["converged"]


def test_a_per_objective_time_cap_changes_only_its_objectives_models(smoke_cfg):
    from pipeline.config.stages import max_minutes, train_config
    from pipeline.records.files import config_hash

    def cap_and_hash(objective, caps):
        cfg = smoke_cfg(f"objective={objective}", f"train.max_minutes={caps}")
        return max_minutes(cfg), config_hash(train_config(cfg))

    assert cap_and_hash("mt_td", "{mt: 3, lm: 5}")[0] == 3  # by kind
    assert cap_and_hash("mt_td", "{mt: 3, mt_td: 4}")[0] == 4  # the name first
    assert cap_and_hash("mlm", "{mt: 3, lm: 5}")[0] is None  # neither, no default: no cap
    assert cap_and_hash("mlm", "{mt: 3, default: 9}")[0] == 9
    assert cap_and_hash("mt", "{mt: 3, lm: 5}")[1] == cap_and_hash("mt", "{mt: 3, lm: 6}")[1] == cap_and_hash("mt", 3)[1]
    assert cap_and_hash("mt", "{mt: 3, lm: 5}")[1] != cap_and_hash("mt", "{mt: 4, lm: 5}")[1]


@pytest.mark.parametrize("torn", [False, True], ids=["clean", "torn-log-line"])
def test_killed_run_resumes_to_the_same_weights(smoke_cfg, shared_data, tmp_path, torn):
    """Uninterrupted vs killed after step 23 (last checkpoint: step 20) and started again; `torn`: the
    kill also cut the log's last line short (a disk full, a power loss): the resume drops it."""
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
    assert torch.load(folder / "last.pt", weights_only=True)["train_state"]["step"] == 20
    if torn:
        with open(folder / "log.jsonl", "a") as f:
            f.write('{"step": 25, "epoch": 0, "train_lo')
    train(resumed)  # redoes steps 21..23 from the checkpoint of step 20, then goes on
    a = torch.load(tmp_path / "a" / "model" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model" / "model.pt", weights_only=True)["state_dict"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    strip = lambda log: [{k: v for k, v in e.items() if k not in ("elapsed_s", "tokens_per_s")} for e in log]  # noqa: E731
    assert strip(read_log(tmp_path / "a" / "model")) == strip(read_log(tmp_path / "b" / "model"))


@pytest.mark.parametrize("rule,overrides,steps", [
    ("max_steps", ["train.max_steps=10"], 10),
    ("early_stopping", ["train.lr=1e-12", "train.patience=2", "train.max_steps=40"], 15),  # a flat dev loss
])
def test_a_run_killed_after_its_final_checkpoint_stops_where_it_would_have(smoke_cfg, shared_data, tmp_path,
                                                                           monkeypatch, rule, overrides, steps):
    """Killed while model.pt is written (after the last checkpoint, which already holds the stop):
    the rerun asks the stop rules before its first step and ends at the uninterrupted run's step,
    with its weights and log, not one step or one evaluation later."""
    import pipeline.train.stage as training

    common = ["objective=lm", "train.eval_every=5", *overrides]
    straight = train(cfg_for(smoke_cfg, shared_data, tmp_path / "a", *common))
    assert (straight["stop_reason"], straight["steps"]) == (rule, steps)

    class Killed(Exception):
        pass

    real = training.torch_save

    def dies_on_the_model(obj, path):
        if str(path).endswith("model.pt"):
            raise Killed
        real(obj, path)

    resumed = cfg_for(smoke_cfg, shared_data, tmp_path / "b", *common)
    monkeypatch.setattr(training, "torch_save", dies_on_the_model)
    with pytest.raises(Killed):
        train(resumed)
    monkeypatch.setattr(training, "torch_save", real)
    again = train(resumed)
    assert (again["stop_reason"], again["steps"], again["best_step"]) == (rule, steps, straight["best_step"])
    assert again["dev"]["loss"] == straight["dev"]["loss"]
    a = torch.load(tmp_path / "a" / "model" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert [e["step"] for e in read_log(tmp_path / "b" / "model")] == [e["step"] for e in read_log(tmp_path / "a" / "model")]


def test_a_damaged_log_line_before_the_last_is_named(tmp_path, caplog):
    from pipeline.train.convergence import read_log as read_training_log

    whole = '{"step": 10, "dev_loss": 5.0}\n{"step": 20, "dev_loss": 4.0}\n'
    (tmp_path / "log.jsonl").write_text(whole + '{"step": 30, "dev_lo')
    with caplog.at_level("WARNING", logger="pipeline.train.convergence"):
        assert [e["step"] for e in read_training_log(tmp_path)] == [10, 20]
    assert "line 3 is cut short" in caplog.text and "log.jsonl" in caplog.text
    (tmp_path / "log.jsonl").write_text('{"step": 10, "dev_lo\n' + whole)
    with pytest.raises(PipelineError, match=r"log\.jsonl, line 1: not a log entry"):
        read_training_log(tmp_path)


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
    ("train.plateau_min_evals=2", "train.plateau_min_evals"),
    ("train.max_minutes={mt: -1}", "train.max_minutes"),
    ("objective.token_dropout=1.5", "objective.token_dropout"),
    ("train.dev_maskings=0", "train.dev_maskings"),
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


def _first_losses(cfg, n_steps=2):
    """Losses of the first `n_steps` training steps of `cfg` on the smoke data (prepared once)."""
    import numpy as np

    from pipeline.config.compose import to_plain
    from pipeline.prepare.corpus import prepare_data
    from pipeline.train.evaluate import to_device
    from pipeline.model.transformer import ModelArgs, build_model
    from pipeline.model.objectives import make_batches, make_objective, specials
    from pipeline.machine.runtime import resolve_precision
    from pipeline.prepare.tokenizer import Tokenizer, train_tokenizer
    from pipeline.train.steps import load_examples, make_optimizer, make_step

    prepare_data(cfg)
    train_tokenizer(cfg)
    tok = Tokenizer.load(cfg.paths.tokenizer)
    objective = make_objective(cfg.objective, specials(tok))
    data = load_examples(cfg, tok)
    device = torch.device("cpu")
    amp = resolve_precision(str(cfg.train.precision), device)
    model = build_model(cfg.objective.kind, ModelArgs(d_vocab=tok.vocab_size, pad_id=tok.pad_id,
                                                      **to_plain(cfg.model)), 1).train()
    opt = make_optimizer(model, cfg.train)
    step = make_step(model, objective, cfg.train, device, amp)
    lengths = np.array([objective.length(ex) for ex in data["train"]])
    gen = torch.Generator().manual_seed(1)
    losses = []
    for idx in make_batches(lengths, int(cfg.train.max_tokens), 1, 0)[:n_steps]:
        torch.manual_seed(1)  # the same dropout masks in both runs
        batch = to_device(objective.collate([data["train"][i] for i in idx], gen, train=True), device)
        losses.append(float(step(batch, opt, 1.0)[0]))
    return losses


@pytest.mark.parametrize("objective", ["lm", "mlm", "mt"])
def test_compiled_step_gives_the_eager_loss(objective, smoke_cfg, shared_data):
    """torch.compile changes how the step runs, not what it computes: the same loss at step 1, and
    at step 2 (so backward and the optimizer agree too). Dropout off: compiled and eager code draw
    their random masks differently."""
    common = (f"paths.data={shared_data}/data", f"paths.tokenizer={shared_data}/tokenizer", f"objective={objective}",
              "train.precision=fp32", "model.dropout=0")
    eager = _first_losses(smoke_cfg(*common, "train.compile=false"))
    compiled = _first_losses(smoke_cfg(*common, "train.compile=true"))
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert eager[1] != eager[0]  # the second loss did see the update


def test_bf16_step_gives_the_fp32_loss(smoke_cfg, shared_data):
    common = (f"paths.data={shared_data}/data", f"paths.tokenizer={shared_data}/tokenizer", "objective=lm",
              "train.compile=false", "model.dropout=0")
    fp32 = _first_losses(smoke_cfg(*common, "train.precision=fp32"))
    bf16 = _first_losses(smoke_cfg(*common, "train.precision=bf16"))
    assert bf16 == pytest.approx(fp32, rel=2e-2)  # bf16 keeps ~3 significant digits
    assert bf16 != fp32  # autocast really ran in bf16


def test_mlm_dev_loss_rests_on_each_sentence_masked_k_times(smoke_cfg, shared_data):
    """train.dev_maskings=k: k copies of every dev sentence, each with masks of its own, fixed from one
    evaluation to the next; ~k times the predicted tokens. Other objectives' dev sets are unchanged."""
    from pipeline.prepare.corpus import prepare_data
    from pipeline.prepare.tokenizer import Tokenizer, train_tokenizer
    from pipeline.config.compose import to_plain
    from pipeline.model.objectives import make_objective, specials
    from pipeline.model.transformer import ModelArgs, build_model
    from pipeline.train.evaluate import dev_metrics
    from pipeline.train.steps import load_examples

    one, three = (cfg_for(smoke_cfg, shared_data, shared_data, "objective=mlm", f"train.dev_maskings={k}")
                  for k in (1, 3))
    prepare_data(one)
    train_tokenizer(one)
    tok = Tokenizer.load(one.paths.tokenizer)
    objective = make_objective(one.objective, specials(tok))
    dev1, dev3 = load_examples(one, tok)["dev"], load_examples(three, tok)["dev"]
    assert len(dev3) == 3 * len(dev1) and sorted(map(tuple, dev3)) == sorted(map(tuple, dev1 * 3))
    model = build_model("mlm", ModelArgs(d_vocab=tok.vocab_size, pad_id=tok.pad_id, **to_plain(one.model)), 1)
    m1, m3 = (dev_metrics(model, objective, dev, torch.device("cpu"), None, 512) for dev in (dev1, dev3))
    assert 2.5 * m1["n_tokens"] < m3["n_tokens"] < 3.5 * m1["n_tokens"]
    assert dev_metrics(model, objective, dev3, torch.device("cpu"), None, 512) == m3  # the same masks each time
    lm = cfg_for(smoke_cfg, shared_data, shared_data, "objective=lm", "train.dev_maskings=3")
    assert len(load_examples(lm, tok)["dev"]) == len(dev1)


def test_mlm_loss_on_chosen_positions_equals_the_full_vocabulary_loss():
    """The MLM projects only its chosen positions: the same loss as logits everywhere + ignore_index."""
    import torch.nn.functional as F
    from omegaconf import OmegaConf

    from pipeline.model.transformer import ModelArgs, build_model
    from pipeline.model.objectives import IGNORE, Specials, make_objective

    sp = Specials(pad=0, bos=1, eos=2, mask=3, n_special=4, d_vocab=50)
    obj = make_objective(OmegaConf.create({"kind": "mlm", "label_smoothing": 0.1, "mask_prob": 0.3,
                                           "mask_token_prob": 0.8, "random_token_prob": 0.1}), sp)
    model = build_model("mlm", ModelArgs(d_vocab=50, pad_id=0, n_layers=2, d_model=16, n_heads=2, d_mlp=32,
                                         dropout=0.0, n_ctx=32), 1)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(4, 50, (n,), generator=g).tolist() for n in (5, 9, 12, 3)]
    batch = obj.collate(rows, g, train=True)
    loss, n = obj.loss(model, batch)
    full = F.cross_entropy(model(batch["input"]).flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE,
                           label_smoothing=0.1)
    assert int(n) == int((batch["labels"] != IGNORE).sum()) > 0
    assert float(loss) == pytest.approx(float(full), rel=1e-6)


def test_study_experiment_trains_shrunk_on_the_cpu(smoke_cfg, shared_data, tmp_path):
    """The GPU experiment's settings (post-norm Transformer-base recipe: warm-up, inverse-sqrt decay,
    early stopping, compile auto) run end to end on the CPU at a tiny size, and the summary says
    whether the run converged."""
    cfg = smoke_cfg("experiment=study", "data.max_pairs=4000", "data.valid_size=200", "data.test_size=200",
                    "data.probe_size=200", "data.max_len=48", "data.tokenizer.vocab_size=1000",
                    "model.n_layers=2", "model.n_dec_layers=1", "model.d_model=32", "model.n_heads=2",
                    "model.d_mlp=64", "model.n_ctx=64", "train.max_tokens=1024", "train.warmup_steps=10",
                    "train.lr=2e-3", "train.compile=false", "objective=mt", *FAST_TRAINING[:2],
                    "train.dev_sentences=100", "train.bleu_sentences=20", f"paths.model={tmp_path}/model")
    assert cfg.model.norm == "post" and cfg.train.decay == "inverse_sqrt"
    summary = train(cfg)
    log = read_log(tmp_path / "model")
    assert log[-1]["dev_loss"] < log[0]["dev_loss"]
    assert summary["convergence"]["converged"] in (True, False)
    assert summary["convergence"]["last_quarter_improvement"] is not None
