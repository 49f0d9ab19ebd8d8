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
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.config.cli import cli
from pipeline.config.compose import to_plain
from pipeline.config.grid import kept_steps
from pipeline.config.stages import data_config, max_minutes, tokenizer_config, train_config
from pipeline.errors import PipelineError
from pipeline.machine.distributed import SINGLE, World, world_from_env
from pipeline.machine.distributed import close as close_world
from pipeline.machine.distributed import init as init_world
from pipeline.machine.runtime import resolve_device, resolve_precision, setup_runtime
from pipeline.model.objectives import make_objective, specials
from pipeline.model.transformer import ModelArgs, build_model
from pipeline.prepare.corpus import prepare_command, prepare_data
from pipeline.prepare.tokenizer import MODEL_FILE, Tokenizer, train_tokenizer
from pipeline.records.files import config_hash, read_json, recording, torch_save, write_json
from pipeline.records.locks import one_writer
from pipeline.records.provenance import stage_command
from pipeline.records.stage import input_hashes, read_record, require_upstream, stage_problem, write_stage_record
from pipeline.train.checkpoints import (
    restore,
    rewrite_log,
    rng_state,
    run_provenance,
    save_last,
    save_snapshot,
    snapshot_files,
)
from pipeline.train.convergence import convergence, read_log, stop_reason
from pipeline.train.evaluate import bleu, dev_metrics, to_device
from pipeline.train.steps import (
    RANK_SEED_STRIDE,
    TrainState,
    batch_stream,
    load_examples,
    lr_factor,
    make_optimizer,
    make_step,
)

log = logging.getLogger("pipeline.train")


# ---------------------------------------------------------------- settings

def check_settings(cfg: DictConfig) -> None:
    """Reject bad training settings before any work, naming the key (`pipeline.config`), and a
    device that is not there."""
    from pipeline.config.checks import check_train_settings

    check_train_settings(cfg)
    resolve_device(str(cfg.train.device))


# ---------------------------------------------------------------- the loop


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
    tok = Tokenizer.load(cfg.paths.tokenizer)
    # auto on a CPU is measured (pipeline/machine/calibrate.py): rank 0 decides for every rank
    amp = world.from_main(resolve_precision(str(tcfg.precision), device, shape=(
        int(cfg.model.d_model), int(cfg.model.d_mlp), tok.vocab_size, int(tcfg.max_tokens))) if world.main else None)
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
        state = restore(last, chash, inputs, model, opt, sched, gen, world) if last.exists() else None
    resumed = world.from_main(state is not None if world.main else None)
    if not world.main:  # rank 0 found last.pt readable and made with this config: so does every rank
        state = restore(last, chash, inputs, model, opt, sched, gen, world) if resumed else None
        if resumed and state is None:
            raise PipelineError(f"rank {world.rank} could not read {last}, which rank 0 resumed from")
    if state is None:
        state = TrainState()
        if world.main:
            for stale in (last, best, log_path, *snapshot_files(out)):
                stale.unlink(missing_ok=True)
    else:
        log.info("resuming %s from step %d", out, state.step)
    kept = set(kept_steps(cfg) or ())
    provenance = run_provenance(cfg, inputs)
    if world.main:
        rewrite_log(log_path, state.step)
        if 0 in kept and state.step == 0:
            save_snapshot(cfg, model, 0, chash, provenance)

    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s seed %d: %d parameters, %d training / %d dev examples, device %s, %s%s", cfg.label,
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
    stop = world.from_main(stop_reason(state, out, tcfg, state.elapsed_s >= budget_s)
                           if resumed and world.main else None)
    try:
        from tqdm.auto import tqdm
        # No bar to max_steps (a budget rarely reached): the steps, their rate, and the evaluations'
        # dev loss, early stopping's count and the time left at most (cap or step budget), set at each one
        bar = tqdm(total=int(tcfg.max_steps), initial=state.step, disable=not (tcfg.progress and world.main),
                   desc=f"{cfg.label} seed {seed}", unit="step", mininterval=2.0,
                   bar_format="{desc}: step {n_fmt} [{elapsed}, {rate_fmt}]{postfix}")
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
            save_snapshot(cfg, model, state.step, chash, provenance)
        if state.step % int(tcfg.eval_every) == 0 or state.step >= int(tcfg.max_steps) or out_of_time:
            streams = world.gather(rng_state(gen))
            if world.main:
                stop = _evaluate(cfg, model, objective, data, device, amp, state, sched, opt, streams, run_loss,
                                 run_n, t_since, out, chash, inputs, bar, out_of_time, budget_s)
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
              out, chash, inputs, bar, out_of_time, budget_s=math.inf) -> str | None:
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
        bar.set_postfix_str(progress_note(state, tcfg, dev["loss"], budget_left_s(state, tcfg, budget_s)),
                            refresh=False)
    stop = stop_reason(state, out, tcfg, out_of_time)
    save_last(last, model, opt, sched, streams, state, cfg, chash, inputs)
    return stop


def budget_left_s(state, tcfg: DictConfig, budget_s: float) -> float:
    """Seconds until the first budget that would end the run: the cap, or max_steps at the rate so far."""
    rate = state.step / max(state.elapsed_s, 1e-9)  # steps per second over the whole run
    return min(budget_s - state.elapsed_s, (int(tcfg.max_steps) - state.step) / max(rate, 1e-9))


def progress_note(state, tcfg: DictConfig, dev_loss: float, left_s: float) -> str:
    """The progress bar's note after an evaluation, e.g. `dev 3.213 (best 3.201 at 1,200; 1/3 without
    gain) <= 11 min left`: early stopping usually ends the run long before the budget does."""
    left = f"{left_s / 60:.0f} min" if left_s >= 60 else f"{max(left_s, 0):.0f} s"
    return (f"dev {dev_loss:.3f} (best {state.best_loss:.3f} at {state.best_step:,}; {state.bad_evals}/"
            f"{int(tcfg.patience)} without gain) <= {left} left")


def training_inputs(cfg: DictConfig) -> list[Path]:
    """The files a training run reads: its objective's splits and the tokenizer model."""
    data = Path(str(cfg.paths.data))
    names = ("train.src", "train.tgt", "valid.src", "valid.tgt") if cfg.objective.kind == "mt" else \
        ("train.mono", "valid.mono")
    return [*(data / name for name in names), Path(str(cfg.paths.tokenizer)) / MODEL_FILE]


def _finish(cfg, out, model, objective, data, tok, sp, device, amp, state, stop, chash, stage_cfg, n_params,
            inputs, world: World = SINGLE) -> dict:
    """Reload the best weights, measure dev quality, write model.pt, summary.json and the record."""
    model.load_state_dict(torch.load(out / "best.pt", map_location=device, weights_only=True))
    dev = dev_metrics(model, objective, data["dev"], device, amp, int(cfg.train.max_tokens))
    if objective.kind == "mt":
        dev["bleu"] = bleu(model, *data["bleu"], tok, sp, device, amp)
    summary = {"objective": cfg.label, "kind": objective.kind, "seed": int(cfg.seed),
               "steps": state.step, "best_step": state.best_step, "stop_reason": stop, "epochs": state.epoch,
               "train_tokens": state.tokens, "wall_time_s": round(state.elapsed_s, 1), "n_params": n_params,
               "device": str(device), "ranks": world.size, "precision": str(amp or "fp32"), "dev": dev,
               "convergence": convergence(read_log(out), stop)}
    provenance = run_provenance(cfg, inputs)
    tokenizer_sha, data_digest = provenance["tokenizer_sha256"], provenance["data_digest"]
    snapshots = snapshot_files(out)
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
    log.info("%s seed %d done in %.0f s (%s after %d steps): dev loss %.3f, %s; %s", cfg.label, cfg.seed,
             state.elapsed_s, stop, state.step, dev["loss"], quality[objective.kind].format(**dev),
             ("converged: " if summary["convergence"]["converged"] else "NOT converged: ")
             + summary["convergence"]["reason"])
    return summary


main = cli(train)

if __name__ == "__main__":
    main()
