"""One optimisation step and what feeds it: the examples, the batches in a resumable order, the optimiser, the learning-rate schedule, and the compiled step."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig
from torch.profiler import record_function

from pipeline.errors import PipelineError
from pipeline.machine.distributed import SINGLE, World
from pipeline.machine.runtime import autocast
from pipeline.model.objectives import make_batches
from pipeline.model.transformer import Model
from pipeline.prepare.corpus import read_lines
from pipeline.prepare.tokenizer import Tokenizer, fits

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
        if cfg.objective.kind == "mlm":  # each copy draws its own masks from dev_metrics' fixed generator
            dev = [ex for ex in dev for _ in range(int(cfg.train.get("dev_maskings", 1)))]
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


# Rank r > 0 of a multi-rank run draws its dropout, masking and token dropout from seed + r x this.
RANK_SEED_STRIDE = 1_000_003
