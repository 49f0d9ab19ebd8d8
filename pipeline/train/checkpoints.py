"""What a training leaves on disk while it runs, and reads back to resume: last.pt (model, optimiser, schedule, data order, random state), the snapshots kept for the evolution over training, and the training log."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.config.layout import snapshot_file
from pipeline.machine.distributed import SINGLE, World
from pipeline.model.transformer import Model, UnsafeCheckpoint, read_checkpoint
from pipeline.prepare.tokenizer import MODEL_FILE
from pipeline.records.files import atomic_path, torch_save
from pipeline.records.stage import read_record
from pipeline.train.convergence import read_log
from pipeline.train.steps import TrainState

log = logging.getLogger("pipeline.train")


def restore(path: Path, expected_hash: str, inputs: dict, model, opt, sched, gen,
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


def rewrite_log(path: Path, upto_step: int) -> None:
    """Keep the log lines of steps a resumed run will not redo (a cut-short last line never)."""
    if not path.exists():
        return
    keep = [entry for entry in read_log(path.parent) if entry["step"] <= upto_step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{json.dumps(entry)}\n" for entry in keep))


def snapshot_files(out: Path) -> list[Path]:
    return sorted((out / "snapshots").glob("step*.pt"))


def run_provenance(cfg: DictConfig, inputs: dict) -> dict:
    """What a saved model was made from, for the dump to check against what it is given: the tokenizer
    model's sha256 and the data split's digest (its probe set included), as their stages recorded them."""
    return {"tokenizer": str(cfg.paths.tokenizer),
            "tokenizer_sha256": inputs[str(Path(str(cfg.paths.tokenizer)) / MODEL_FILE)],
            "data_digest": getattr(read_record(cfg.paths.data), "digest", None), "inputs": inputs}


def save_snapshot(cfg: DictConfig, model: Model, step: int, chash: str, provenance: dict) -> None:
    """The weights after `step` steps, as model.pt holds them (args, weights, config), with `step`."""
    torch_save({"model": model.checkpoint_args(),
                "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "config": OmegaConf.to_container(cfg, resolve=True), "config_hash": chash, **provenance,
                "summary": None, "step": int(step)}, snapshot_file(cfg, step))


def rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "gen": gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def save_last(path, model, opt, sched, streams, state, cfg, chash, inputs) -> None:
    """`streams`: every rank's random streams (rank 0's first)."""
    torch_save({"model": model.checkpoint_args(), "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "train_state": asdict(state), "rng": streams[0],
                "rng_ranks": streams, "config": OmegaConf.to_container(cfg, resolve=True), "config_hash": chash,
                "inputs": inputs}, path)
