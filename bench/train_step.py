"""Our whole training loop against a plain PyTorch reference step, in the same run.

    python bench/train_step.py [--experiment default] [--kinds lm mlm mt] [--steps 200] [overrides...]

For each objective, on the experiment's real data (run `python -m pipeline.prepare` first), sizes
and token batches:
- ours: `pipeline.train.train` as a user runs it, for `--steps` steps, start-up, dev evaluations,
  MT's BLEU and checkpoints included (its wall time, from the call to the written model.pt);
- the reference: the same model sizes written the obvious way — `nn.TransformerEncoder` (MT:
  `nn.Transformer`), fp32, eager, full-vocabulary logits with `ignore_index`, plain AdamW and
  gradient clipping — timed over `--ref-steps` of the same batches spread over the run, scaled to
  all of them by their padded token counts;
- the ratio reference time / our time (> 1: ours is faster), in wall time and in CPU time (the
  latter robust to other load on a shared machine), and our step's share of this CPU's
  measured bf16 matmul peak (FLOPs of one step counted by torch.utils.flop_counter).
Extra arguments are Hydra overrides of the experiment (e.g. train.compile=true model.d_model=256).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe  # noqa: E402
from pipeline.config.compose import compose, to_plain  # noqa: E402
from pipeline.train.evaluate import to_device  # noqa: E402
from pipeline.model.transformer import ModelArgs, build_model, sinusoids  # noqa: E402
from pipeline.model.objectives import IGNORE, make_batches, make_objective, specials  # noqa: E402
from pipeline.prepare.tokenizer import Tokenizer  # noqa: E402
from pipeline.train.stage import train  # noqa: E402
from pipeline.train.steps import load_examples, make_optimizer, make_step


class Reference(nn.Module):
    """The obvious PyTorch model of the same sizes: torch's own Transformer layers."""

    def __init__(self, kind: str, a: ModelArgs) -> None:
        super().__init__()
        self.kind, self.pad = kind, a.pad_id
        self.embed = nn.Embedding(a.d_vocab, a.d_model, padding_idx=a.pad_id)
        self.register_buffer("pos", sinusoids(a.n_ctx, a.d_model))
        layer = dict(d_model=a.d_model, nhead=a.n_heads, dim_feedforward=a.d_mlp, dropout=a.dropout,
                     batch_first=True, norm_first=a.norm == "pre")
        if kind == "mt":
            self.net = nn.Transformer(num_encoder_layers=a.n_layers, num_decoder_layers=a.n_dec_layers, **layer)
        else:
            self.net = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), a.n_layers,
                                             enable_nested_tensor=False)
        self.out = nn.Linear(a.d_model, a.d_vocab)
        self.scale = math.sqrt(a.d_model)

    def emb(self, x):
        return self.embed(x) * self.scale + self.pos[: x.shape[1]]

    def forward(self, x, tgt_in=None):
        pad = x == self.pad
        if self.kind == "mt":
            T = tgt_in.shape[1]
            causal = torch.triu(torch.full((T, T), float("-inf")), 1)
            h = self.net(self.emb(x), self.emb(tgt_in), tgt_mask=causal, src_key_padding_mask=pad,
                         tgt_key_padding_mask=tgt_in == self.pad, memory_key_padding_mask=pad)
        else:
            T = x.shape[1]
            causal = torch.triu(torch.full((T, T), float("-inf")), 1) if self.kind == "lm" else None
            h = self.net(self.emb(x), mask=causal, src_key_padding_mask=pad)
        return self.out(h)


def reference_seconds(kind, margs, batches, cfg, n_sample: int) -> float:
    """Seconds the reference needs for all `batches`, from a timed sample of them."""
    model = Reference(kind, margs).train()
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg.train.lr), weight_decay=float(cfg.train.weight_decay))
    pick = np.linspace(0, len(batches) - 1, min(n_sample, len(batches))).round().astype(int)

    def step(b):
        logits = model(b["input"], b.get("tgt_in"))
        loss = F.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), ignore_index=IGNORE,
                               label_smoothing=float(cfg.objective.label_smoothing))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.train.clip_norm))
        opt.step()
        return loss.item()

    step(batches[pick[0]])  # warm-up
    t, c = time.perf_counter(), time.process_time()
    for i in pick:
        step(batches[i])
    sample_s, sample_cpu = time.perf_counter() - t, time.process_time() - c
    size = [b["input"].numel() + (b["tgt_in"].numel() if "tgt_in" in b else 0) for b in batches]
    scale = sum(size) / sum(size[i] for i in pick)
    return sample_s * scale, sample_cpu * scale


def matmul_peak_flops(dtype=torch.bfloat16, n: int = 2048) -> float:
    """Measured FLOP/s of a large square matmul on this CPU (the best of a few)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def step_flops(kind, margs, cfg, objective, batch) -> float:
    """FLOPs of one of our training steps (forward + backward, eager, fp32), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(kind, margs, 1).train()
    eager = OmegaConf.merge(cfg.train, {"compile": False})
    step = make_step(model, objective, eager, torch.device("cpu"), None)
    with FlopCounterMode(display=False) as counter:
        step(batch, make_optimizer(model, cfg.train), 1.0)
    return float(counter.get_total_flops())


def bench_kind(kind: str, experiment: str, steps: int, ref_steps: int, overrides: list[str], peak: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose([f"experiment={experiment}", f"objective={kind}", f"train.max_steps={steps}",
                       "train.patience=1000", "train.progress=false", f"paths.model={tmp}/model", *overrides])
        tok = Tokenizer.load(cfg.paths.tokenizer)
        sp = specials(tok)
        objective = make_objective(cfg.objective, sp)
        data = load_examples(cfg, tok)
        margs = ModelArgs(d_vocab=tok.vocab_size, pad_id=tok.pad_id, **to_plain(cfg.model))
        lengths = np.array([objective.length(ex) for ex in data["train"]])
        order = make_batches(lengths, int(cfg.train.max_tokens), int(cfg.seed), 0)
        order = (order * (steps // len(order) + 1))[:steps]
        gen = torch.Generator().manual_seed(0)
        batches = [objective.collate([data["train"][i] for i in idx], gen, train=True) for idx in order]
        tokens = sum(int((b["input"] != tok.pad_id).sum()) for b in batches)

        t, c = time.perf_counter(), time.process_time()
        summary = train(cfg)
        ours_s, ours_cpu = time.perf_counter() - t, time.process_time() - c
        ref_s, ref_cpu = reference_seconds(kind, margs, batches, cfg, ref_steps)
        flops = step_flops(kind, margs, cfg, objective, to_device(batches[len(batches) // 2], torch.device("cpu")))
        pad_tokens = batches[len(batches) // 2]["input"].numel()
    per_step = ours_s / steps
    print(f"{kind:4s} {steps} steps ({summary['precision']}, compile {cfg.train.compile}): ours {ours_s:6.1f} s "
          f"({tokens / ours_s:7,.0f} input tokens/s, loop incl. start-up + {steps // int(cfg.train.eval_every)} evals), "
          f"reference {ref_s:6.1f} s ({tokens / ref_s:7,.0f} tokens/s): ratio {ref_s / ours_s:.2f}x "
          f"(CPU time: ours {ours_cpu:.1f} s, reference {ref_cpu:.1f} s, ratio {ref_cpu / ours_cpu:.2f}x); "
          f"one step {flops / 1e9:.1f} GFLOP for {pad_tokens} padded tokens, "
          f"{flops / per_step / 1e9:.0f} GFLOP/s over the loop = {flops / per_step / peak:.1%} of the bf16 matmul peak")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="default")
    p.add_argument("--kinds", nargs="+", default=["lm", "mlm", "mt"], choices=["lm", "mlm", "mt"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--ref-steps", type=int, default=40, help="reference steps timed (spread over the run)")
    a, overrides = p.parse_known_args()
    print(describe())
    peak = matmul_peak_flops()
    print(f"measured bf16 matmul peak (2048^3): {peak / 1e9:.0f} GFLOP/s; fp32: {matmul_peak_flops(torch.float32) / 1e9:.0f} GFLOP/s")
    for kind in a.kinds:
        bench_kind(kind, a.experiment, a.steps, a.ref_steps, overrides, peak)


if __name__ == "__main__":
    main()
