"""Train one objective with one seed.

    python -m pipeline.train experiment=default objective=mlm seed=2 [overrides]

Writes to `paths.model` (results/<experiment>/models/<objective>/seed<seed>/):
- `last.pt`: the resumable checkpoint (model args + weights + optimizer + schedule + step + data
  position + RNG states + resolved config), every `train.eval_every` steps; a killed run started
  again with the same config continues from it and ends with the same weights as an uninterrupted one;
- `log.jsonl`: one line per evaluation (train loss, dev metrics, learning rate, throughput);
- `model.pt`: the weights with the best dev loss + model args + config (what later stages read);
- `snapshots/step<N>.pt` (the models of `snapshots.models` only): the weights after N optimiser steps,
  for every N of `snapshots.keep` the run reaches (step 0: the initialisation), in model.pt's format;
  written before the checkpoint of the same step, so a killed and resumed run keeps the same ones;
- `summary.json`: wall time, steps, why training stopped, dev quality (BLEU / perplexity / accuracy);
- `stage.json`: written last; a finished model with the same config is not trained again.

Started by `torchrun --nproc-per-node N -m pipeline.train ...`, N ranks train the one model
data-parallel (pipeline/machine/distributed.py): the global batch split across them, rank 0 writing
every file above; the number of ranks is a runtime fact, not part of the config.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.profiler import record_function

from pipeline.config.compose import to_plain
from pipeline.config.cli import cli
from pipeline.config.grid import kept_steps, snapshot_file
from pipeline.config.stages import data_config, max_minutes, tokenizer_config, train_config
from pipeline.convergence import convergence, read_log
from pipeline.machine.distributed import SINGLE, World, world_from_env
from pipeline.machine.distributed import close as close_world
from pipeline.machine.distributed import init as init_world
from pipeline.prepare.corpus import prepare_command, prepare_data, read_lines
from pipeline.evaluate import bleu, dev_metrics, to_device
from pipeline.model.transformer import Model, ModelArgs, UnsafeCheckpoint, build_model, read_checkpoint
from pipeline.model.objectives import make_batches, make_objective, specials
from pipeline.machine.runtime import autocast, resolve_device, resolve_precision, setup_runtime
from pipeline.records.stage import (input_hashes, read_record, require_upstream, stage_problem,
                                    write_stage_record)
from pipeline.records.provenance import stage_command
from pipeline.records.locks import one_writer
from pipeline.records.files import atomic_path, config_hash, read_json, recording, torch_save, write_json
from pipeline.errors import PipelineError
from pipeline.prepare.tokenizer import MODEL_FILE, Tokenizer, fits, train_tokenizer

log = logging.getLogger("pipeline.train")


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    best_loss: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    elapsed_s: float = 0.0
    tokens: int = 0


# ---------------------------------------------------------------- settings

def check_settings(cfg: DictConfig) -> None:
    """Reject bad training settings before any work, naming the key (`pipeline.config`), and a
    device that is not there."""
    from pipeline.config.checks import check_train_settings

    check_train_settings(cfg)
    resolve_device(str(cfg.train.device))


# ---------------------------------------------------------------- data

def load_examples(cfg: DictConfig, tok: Tokenizer) -> dict:
    """Token ids of the training and dev examples of the objective (over-long ones dropped: the rule
    `tokenizer.fits`, which the frequency counts of freq.tsv follow too)."""
    folder, max_len = Path(cfg.paths.data), int(cfg.data.max_len)
    rng = np.random.default_rng(0)

    def subset(n_rows: int, limit) -> np.ndarray:
        return np.sort(rng.permutation(n_rows)[: limit or n_rows])

    if cfg.objective.kind == "mt":
        def pairs(split):
            src, tgt = read_lines(folder / f"{split}.src"), read_lines(folder / f"{split}.tgt")
            return src, tgt, list(zip(tok.encode_batch(src), tok.encode_batch(tgt)))

        _, _, train = pairs("train")
        train = [p for p in train if fits(p[0], max_len) and fits(p[1], max_len)]
        vsrc, vtgt, valid = pairs("valid")
        dev = [valid[i] for i in subset(len(valid), cfg.train.dev_sentences)]
        pick = subset(len(valid), cfg.train.bleu_sentences)
        bleu_set = ([valid[i][0] for i in pick], [vtgt[i] for i in pick])
    else:
        train = [x for x in tok.encode_batch(read_lines(folder / "train.mono")) if x and fits(x, max_len)]
        valid = tok.encode_batch(read_lines(folder / "valid.mono"))
        dev = [valid[i] for i in subset(len(valid), cfg.train.dev_sentences)]
        bleu_set = None
    dev = [ex for ex in dev if all(fits(side, max_len) for side in (ex if isinstance(ex, tuple) else (ex,)))]
    if not train:
        raise PipelineError(f"no training examples left in {folder} after data.max_len={max_len}")
    return {"train": train, "dev": dev, "bleu": bleu_set}


def batch_stream(lengths: np.ndarray, max_tokens: int, seed: int, state: TrainState):
    """Yield index arrays forever, advancing `state`'s data position before each yield, so that a
    checkpoint taken after a step resumes at the next batch."""
    while True:
        batches = make_batches(lengths, max_tokens, seed, state.epoch)
        while state.batch_in_epoch < len(batches):
            state.batch_in_epoch += 1
            yield batches[state.batch_in_epoch - 1]
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0


# ---------------------------------------------------------------- optimisation

def make_optimizer(model: Model, tcfg: DictConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, LayerNorms and embeddings."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": float(tcfg.weight_decay)}, {"params": rest, "weight_decay": 0.0}]
    # The fused kernel updates every parameter in one pass; on the CPU the default per-tensor loop
    # spent as long as forward and backward together on a 10M-parameter model (py-spy, 2 cores).
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.AdamW(groups, lr=float(tcfg.lr), betas=tuple(tcfg.betas), fused=fused)


def make_step(model: Model, objective, tcfg: DictConfig, device: torch.device, amp: torch.dtype | None,
              world: World = SINGLE):
    """One optimiser step as a function `step(batch, opt, clip_norm) -> (loss, n_predicted)`, both
    tensors left on the device (no host sync). With `train.compile` the forward and the loss (and
    through AOTAutograd their backward) are compiled by torch.compile (inductor), with dynamic
    shapes, since token batching makes every batch another (rows, length); where compilation is
    unavailable the step runs eagerly, with a warning.

    On several ranks (`world`) `batch` is this rank's share (None: no rows) and the loss and count
    returned are the whole batch's: each rank's mean loss is weighted by its share of the predicted
    tokens before backward and the gradients are summed across ranks, which is the gradient of the
    whole batch's mean loss."""
    def forward_loss(batch):
        with autocast(device, amp):
            return objective.loss(model, batch)

    fwd = forward_loss
    if compile_enabled(tcfg, device):
        fwd = torch.compile(forward_loss, dynamic=True)

    def forward(batch):
        nonlocal fwd
        if batch is None:  # this rank's share of a batch with fewer rows than ranks
            zero = torch.zeros((), device=device)
            return zero, zero
        try:
            with record_function("forward"):
                return fwd(batch)
        except Exception as error:  # a backend that cannot compile here: eager from now on
            if fwd is forward_loss:
                raise
            log.warning("torch.compile failed (%s: %s); training eagerly (train.compile=false skips trying)",
                        type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            fwd = forward_loss
            return fwd(batch)

    def step(batch, opt, clip_norm: float):
        loss, n = forward(batch)
        opt.zero_grad(set_to_none=True)
        if world.distributed:
            n = n.float()
            total = world.sum_(torch.stack([n, loss.detach().float() * n]))  # predicted tokens, loss sum
            with record_function("backward"):
                if batch is not None:
                    (loss * (n / total[0])).backward()
                world.sum_gradients(model)
            loss, n = total[1] / total[0], total[0]
        else:
            with record_function("backward"):
                loss.backward()
        with record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm, foreach=True)
            opt.step()
        return loss.detach(), n

    return step


def compile_enabled(tcfg: DictConfig, device: torch.device) -> bool:
    """train.compile: true | false | auto (compile where inductor can build kernels: on CUDA, and
    on a CPU with a C++ compiler on the PATH)."""
    setting = tcfg.get("compile", False)
    if setting == "auto":
        if device.type == "cuda":
            return True
        import shutil
        return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))
    return bool(setting)


def lr_factor(tcfg: DictConfig) -> Callable[[int], float]:
    """Linear warm-up to train.lr, then the train.decay schedule (a factor of train.lr)."""
    warm, total, floor = max(int(tcfg.warmup_steps), 1), int(tcfg.max_steps), float(tcfg.min_lr_ratio)

    def f(step: int) -> float:
        s = step + 1
        if s <= warm:
            return s / warm
        if tcfg.decay == "inverse_sqrt":
            return math.sqrt(warm / s)
        frac = min((s - warm) / max(total - warm, 1), 1.0)
        if tcfg.decay == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))
        if tcfg.decay == "linear":
            return floor + (1 - floor) * (1 - frac)
        return 1.0

    return f


# ---------------------------------------------------------------- the loop

def _restore(path: Path, expected_hash: str, inputs: dict, model, opt, sched, gen,
             world: World = SINGLE) -> TrainState | None:
    """The state of the checkpoint at `path`, loaded into model, optimiser, schedule and generator;
    None (start afresh) when it was made with other settings or inputs. An unreadable one is set
    aside under another name, with a warning naming both, and training starts afresh; one holding
    pickled objects (code) is refused (UnsafeCheckpoint). Each rank of
    a multi-rank run takes its own random streams from it (where it was made with that many)."""
    try:
        ckpt = read_checkpoint(path)
        if ckpt.get("config_hash") != expected_hash:
            log.warning("%s was made with another config: starting afresh", path)
            return None
        if sorted(map(str, ckpt.get("inputs", inputs).values())) != sorted(map(str, inputs.values())):
            log.warning("%s was made from other data or another tokenizer: starting afresh", path)
            return None
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        streams = ckpt.get("rng_ranks") or [ckpt["rng"]]
        if world.rank < len(streams):
            rng = streams[world.rank]
            torch.set_rng_state(rng["torch"])
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            gen.set_state(rng["gen"])
        else:
            log.warning("%s was made by %d rank(s): rank %d's random streams start from its seed", path,
                        len(streams), world.rank)
        return TrainState(**ckpt["train_state"])
    except UnsafeCheckpoint:  # not ours: never loaded, never set aside as if it were a damaged one of ours
        raise
    except Exception as error:  # truncated, garbage, or of another layout: never fatal, never lost
        if not world.main:  # rank 0 sets it aside and says so; every rank starts afresh
            return None
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        path.replace(aside)
        log.warning("%s is not a readable checkpoint (%s: %s); set aside as %s, training starts afresh",
                    path, type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "", aside)
        return None


def _rewrite_log(path: Path, upto_step: int) -> None:
    """Keep the log lines of steps a resumed run will not redo (a cut-short last line never)."""
    if not path.exists():
        return
    keep = [entry for entry in read_log(path.parent) if entry["step"] <= upto_step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{json.dumps(entry)}\n" for entry in keep))


# Rank r > 0 of a multi-rank run draws its dropout, masking and token dropout from seed + r x this.
RANK_SEED_STRIDE = 1_000_003


def train(cfg: DictConfig, on_step: Callable[[int], None] | None = None) -> dict:
    """Train `cfg.objective` with `cfg.seed`; returns the summary. `on_step(step)` is called after
    every optimiser step (and its checkpoint), e.g. to stop a run in tests. Under torchrun, every
    rank calls this (see pipeline/machine/distributed.py)."""
    check_settings(cfg)
    world = world_from_env()
    if not world.distributed:
        with one_writer(cfg.paths.model):  # one training per model folder
            return _train(cfg, on_step, SINGLE)
    if not world.main:  # one voice: rank 0 logs, the others warn only
        log.setLevel(logging.WARNING)
    try:
        with one_writer(cfg.paths.model) if world.main else contextlib.nullcontext():
            return _train(cfg, on_step, world)
    finally:
        close_world(world)


def _train(cfg: DictConfig, on_step: Callable[[int], None] | None, world: World) -> dict:
    device = init_world(world, resolve_device(str(cfg.train.device)))
    out = Path(cfg.paths.model)
    tcfg, kind, seed = cfg.train, cfg.objective.kind, int(cfg.seed)
    stage_cfg = train_config(cfg)
    # The data split and the tokenizer are made here only when they are not there at all: made with
    # other settings (or damaged), they are the prepare stage's to rebuild, never this one's.
    data_folder, tok_folder = Path(str(cfg.paths.data)), Path(str(cfg.paths.tokenizer))
    if world.main:
        if not require_upstream(data_folder, data_config(cfg), prepare_command()):
            prepare_data(cfg)
        if not require_upstream(tok_folder, tokenizer_config(cfg), prepare_command()):
            train_tokenizer(cfg)
    world.barrier()
    inputs = input_hashes(training_inputs(cfg))
    problem = world.from_main(stage_problem(out, stage_cfg))
    if problem is None:
        log.info("%s is already trained with this config; nothing to do", out)
        return read_json(out / "summary.json")
    if read_record(out) is not None:
        log.info("training %s again: %s", out, problem)

    setup_runtime(tcfg.threads, bool(tcfg.deterministic))
    amp = resolve_precision(str(tcfg.precision), device)
    tok = Tokenizer.load(cfg.paths.tokenizer)
    sp = specials(tok)
    objective = make_objective(cfg.objective, sp)
    data = load_examples(cfg, tok)
    margs = ModelArgs(d_vocab=tok.vocab_size, pad_id=tok.pad_id, **to_plain(cfg.model))

    model = build_model(kind, margs, seed).to(device)
    world.sync_parameters(model)
    opt = make_optimizer(model, tcfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(tcfg))
    rank_seed = seed + RANK_SEED_STRIDE * world.rank  # rank 0: the single process's streams
    gen = torch.Generator().manual_seed(rank_seed)  # masking and token dropout
    torch.manual_seed(rank_seed)  # dropout
    chash = config_hash(stage_cfg)
    last, best, log_path = out / "last.pt", out / "best.pt", out / "log.jsonl"
    if world.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "stage.json").unlink(missing_ok=True)  # from here on no earlier record vouches for this folder
        state = _restore(last, chash, inputs, model, opt, sched, gen, world) if last.exists() else None
    resumed = world.from_main(state is not None if world.main else None)
    if not world.main:  # rank 0 found last.pt readable and made with this config: so does every rank
        state = _restore(last, chash, inputs, model, opt, sched, gen, world) if resumed else None
        if resumed and state is None:
            raise PipelineError(f"rank {world.rank} could not read {last}, which rank 0 resumed from")
    if state is None:
        state = TrainState()
        if world.main:
            for stale in (last, best, log_path, *_snapshot_files(out)):
                stale.unlink(missing_ok=True)
    else:
        log.info("resuming %s from step %d", out, state.step)
    kept = set(kept_steps(cfg) or ())
    provenance = _provenance(cfg, inputs)
    if world.main:
        _rewrite_log(log_path, state.step)
        if 0 in kept and state.step == 0:
            _save_snapshot(cfg, model, 0, chash, provenance)

    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s seed %d: %d parameters, %d training / %d dev examples, device %s, %s%s", cfg.objective.name,
             seed, n_params, len(data["train"]), len(data["dev"]), device, amp or "fp32",
             f", {world.size} ranks" if world.distributed else "")
    lengths = np.array([objective.length(ex) for ex in data["train"]])
    stream = batch_stream(lengths, int(tcfg.max_tokens), seed, state)
    cap = max_minutes(cfg)
    budget_s = float(cap) * 60 if cap else math.inf
    started, elapsed0 = time.perf_counter(), state.elapsed_s
    run_loss, run_n, t_since = 0.0, 0, time.perf_counter()
    step, clip = make_step(model, objective, tcfg, device, amp, world), float(tcfg.clip_norm)
    # A resumed run starts where its last evaluation left off: the stop rules are asked again before
    # any step, so a run killed after its final checkpoint (while model.pt or the record was written)
    # finishes as it would have, not one step or one evaluation later.
    stop = world.from_main(_stop_reason(state, out, tcfg, state.elapsed_s >= budget_s)
                           if resumed and world.main else None)
    try:
        from tqdm.auto import tqdm
        bar = tqdm(total=int(tcfg.max_steps), initial=state.step, disable=not (tcfg.progress and world.main),
                   desc=f"{cfg.objective.name} seed {seed}", unit="step", mininterval=2.0)
    except ImportError:  # pragma: no cover
        bar = None
    model.train()
    while stop is None:
        idx = world.shard(next(stream))
        batch = (to_device(objective.collate([data["train"][i] for i in idx], gen, train=True), device)
                 if len(idx) else None)
        loss, n = step(batch, opt, clip)
        sched.step()
        state.step += 1
        # Running sums stay on the device: no host sync per step (read at each evaluation).
        run_loss, run_n = run_loss + loss * n, run_n + n
        state.elapsed_s = elapsed0 + time.perf_counter() - started
        if bar is not None:
            bar.update(1)
        out_of_time = world.any(state.elapsed_s >= budget_s, device)  # every rank stops at the same step
        if state.step in kept and world.main:  # before this step's checkpoint: a run killed in between redoes it
            _save_snapshot(cfg, model, state.step, chash, provenance)
        if state.step % int(tcfg.eval_every) == 0 or state.step >= int(tcfg.max_steps) or out_of_time:
            streams = world.gather(_rng_state(gen))
            if world.main:
                stop = _evaluate(cfg, model, objective, data, device, amp, state, sched, opt, streams, run_loss,
                                 run_n, t_since, out, chash, inputs, bar, out_of_time)
            stop = world.from_main(stop)
            run_loss, run_n, t_since = 0.0, 0, time.perf_counter()
        if on_step is not None:
            on_step(state.step)
    if bar is not None:
        bar.close()
    if world.main:
        summary = _finish(cfg, out, model, objective, data, tok, sp, device, amp, state, stop, chash, stage_cfg,
                          n_params, inputs, world)
    world.barrier()  # the other ranks read what rank 0 wrote
    return summary if world.main else read_json(out / "summary.json")


def _evaluate(cfg, model, objective, data, device, amp, state, sched, opt, streams, run_loss, run_n, t_since,
              out, chash, inputs, bar, out_of_time) -> str | None:
    """Rank 0's evaluation: dev metrics, the log line, best.pt and last.pt (with every rank's random
    `streams`); why training stops here, or None."""
    tcfg = cfg.train
    last, best, log_path = out / "last.pt", out / "best.pt", out / "log.jsonl"
    dev = dev_metrics(model, objective, data["dev"], device, amp, int(tcfg.max_tokens))
    improved = dev["loss"] < state.best_loss - float(tcfg.min_delta)
    if improved:
        state.best_loss, state.best_step, state.bad_evals = dev["loss"], state.step, 0
        torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, best)
    else:
        state.bad_evals += 1
    run_n, run_loss = int(run_n), float(run_loss)
    state.tokens += run_n
    rate = run_n / max(time.perf_counter() - t_since, 1e-9)
    entry = {"step": state.step, "epoch": state.epoch, "train_loss": run_loss / max(run_n, 1),
             "lr": sched.get_last_lr()[0], "tokens_per_s": rate, "elapsed_s": state.elapsed_s,
             **{f"dev_{k}": v for k, v in dev.items()}, "best": improved}
    with open(log_path, "a") as f:
        f.write(json.dumps(entry) + "\n")
    log.info("step %d: train loss %.3f, dev loss %.3f%s", state.step, entry["train_loss"], dev["loss"],
             " (best)" if improved else "")
    if bar is not None:
        bar.set_postfix(train=f"{entry['train_loss']:.3f}", dev=f"{dev['loss']:.3f}", refresh=False)
    stop = _stop_reason(state, out, tcfg, out_of_time)
    _save_last(last, model, opt, sched, streams, state, cfg, chash, inputs)
    return stop


def _stop_reason(state: TrainState, out: Path, tcfg: DictConfig, out_of_time: bool) -> str | None:
    """Why training stops at `state` (an evaluation's), or None: the rules in the order they are told."""
    if state.step >= int(tcfg.max_steps):
        return "max_steps"
    if state.bad_evals >= int(tcfg.patience):
        return "early_stopping"
    if _plateaued(out, tcfg):
        return "plateau"
    if out_of_time:
        return "max_minutes"
    return None


def _plateaued(out: Path, tcfg: DictConfig) -> bool:
    """The dev loss has plateaued by `pipeline.convergence`'s rule (its last quarter improved it by
    less than 1%), checked once the log holds `train.plateau_min_evals` evaluations (null: never),
    so that a flat stretch early in training does not end it."""
    least = tcfg.get("plateau_min_evals")
    if least is None:
        return False
    entries = read_log(out)
    return len(entries) >= int(least) and bool(convergence(entries)["converged"])


def training_inputs(cfg: DictConfig) -> list[Path]:
    """The files a training run reads: its objective's splits and the tokenizer model."""
    data = Path(str(cfg.paths.data))
    names = ("train.src", "train.tgt", "valid.src", "valid.tgt") if cfg.objective.kind == "mt" else \
        ("train.mono", "valid.mono")
    return [*(data / name for name in names), Path(str(cfg.paths.tokenizer)) / MODEL_FILE]


def _snapshot_files(out: Path) -> list[Path]:
    return sorted((out / "snapshots").glob("step*.pt"))


def _provenance(cfg: DictConfig, inputs: dict) -> dict:
    """What a saved model was made from, for the dump to check against what it is given: the tokenizer
    model's sha256 and the data split's digest (its probe set included), as their stages recorded them."""
    return {"tokenizer": str(cfg.paths.tokenizer),
            "tokenizer_sha256": inputs[str(Path(str(cfg.paths.tokenizer)) / MODEL_FILE)],
            "data_digest": (read_record(cfg.paths.data) or {}).get("digest"), "inputs": inputs}


def _save_snapshot(cfg: DictConfig, model: Model, step: int, chash: str, provenance: dict) -> None:
    """The weights after `step` steps, as model.pt holds them (args, weights, config), with `step`."""
    torch_save({"model": model.checkpoint_args(),
                "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "config": OmegaConf.to_container(cfg, resolve=True), "config_hash": chash, **provenance,
                "summary": None, "step": int(step)}, snapshot_file(cfg, step))


def _rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "gen": gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _save_last(path, model, opt, sched, streams, state, cfg, chash, inputs) -> None:
    """`streams`: every rank's random streams (rank 0's first)."""
    torch_save({"model": model.checkpoint_args(), "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "train_state": asdict(state), "rng": streams[0],
                "rng_ranks": streams, "config": OmegaConf.to_container(cfg, resolve=True), "config_hash": chash,
                "inputs": inputs}, path)


def _finish(cfg, out, model, objective, data, tok, sp, device, amp, state, stop, chash, stage_cfg, n_params,
            inputs, world: World = SINGLE) -> dict:
    """Reload the best weights, measure dev quality, write model.pt, summary.json and the record."""
    model.load_state_dict(torch.load(out / "best.pt", map_location=device, weights_only=True))
    dev = dev_metrics(model, objective, data["dev"], device, amp, int(cfg.train.max_tokens))
    if objective.kind == "mt":
        dev["bleu"] = bleu(model, *data["bleu"], tok, sp, device, amp)
    summary = {"objective": cfg.objective.name, "kind": objective.kind, "seed": int(cfg.seed),
               "steps": state.step, "best_step": state.best_step, "stop_reason": stop, "epochs": state.epoch,
               "train_tokens": state.tokens, "wall_time_s": round(state.elapsed_s, 1), "n_params": n_params,
               "device": str(device), "ranks": world.size, "precision": str(amp or "fp32"), "dev": dev,
               "convergence": convergence(read_log(out), stop)}
    provenance = _provenance(cfg, inputs)
    tokenizer_sha, data_digest = provenance["tokenizer_sha256"], provenance["data_digest"]
    snapshots = _snapshot_files(out)
    expected = [s for s in kept_steps(cfg) or () if s <= state.step]
    summary["snapshots"] = sorted(int(p.stem[4:]) for p in snapshots)
    if summary["snapshots"] != expected:
        raise PipelineError(f"{out / 'snapshots'} holds the steps {summary['snapshots']}, not the kept steps "
                            f"{expected} this run reached (files removed by hand?): delete {out / 'last.pt'} "
                            "and train again")
    with recording(out) as ledger:
        torch_save({"model": model.checkpoint_args(), "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                    "config": OmegaConf.to_container(cfg, resolve=True), "config_hash": chash, **provenance,
                    "summary": summary}, out / "model.pt")
        write_json(out / "summary.json", summary)
        ledger.add_existing(out / "log.jsonl")  # a few kB, appended over the run: hashed once at the end
        for path in snapshots:  # written over the run (some by an earlier, killed one): hashed once here
            ledger.add_existing(path)
    write_stage_record(out, "train", stage_cfg, ledger=ledger, root=cfg.paths.results, inputs=inputs,
                       command=stage_command("pipeline.train"),
                       tokenizer_sha256=tokenizer_sha, data_digest=data_digest, summary=summary)
    for tmp in (out / "last.pt", out / "best.pt"):
        tmp.unlink(missing_ok=True)
    quality = {"mt": "BLEU {bleu:.2f}", "lm": "perplexity {perplexity:.2f}", "mlm": "masked accuracy {accuracy:.3f}"}
    log.info("%s seed %d done in %.0f s (%s after %d steps): dev loss %.3f, %s; %s", cfg.objective.name, cfg.seed,
             state.elapsed_s, stop, state.step, dev["loss"], quality[objective.kind].format(**dev),
             ("converged: " if summary["convergence"]["converged"] else "NOT converged: ")
             + summary["convergence"]["reason"])
    return summary


main = cli(train)

if __name__ == "__main__":
    main()
