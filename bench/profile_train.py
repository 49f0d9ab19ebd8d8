"""Where a training step's time goes, per objective, on the experiment's real data and sizes.

    python bench/profile_train.py [--experiment default] [--kinds mt lm mlm] [--steps 10] [overrides...]

Runs the training loop's own pieces (pipeline.train's data, model, optimizer and evaluation) under
torch.profiler and prints, per objective, milliseconds per step for: batch collation, forward
(of which attention and the output layer + loss), backward, the optimizer (clipping + AdamW), and
the host time the profiler saw no operator in (Python overhead); then the cost of one dev
evaluation, MT's greedy BLEU decoding and one checkpoint write. Needs `python -m pipeline.prepare`
of the experiment first. Extra arguments are Hydra overrides (e.g. model.d_model=256).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe  # noqa: E402
from pipeline.config.compose import compose, to_plain  # noqa: E402
from pipeline.train.evaluate import bleu, dev_metrics, to_device  # noqa: E402
from pipeline.model.transformer import Attention, ModelArgs, OutputHead, build_model  # noqa: E402
from pipeline.model.objectives import make_batches, make_objective, specials  # noqa: E402
from pipeline.machine.runtime import autocast, resolve_device, resolve_precision, setup_runtime  # noqa: E402
from pipeline.records.files import torch_save  # noqa: E402
from pipeline.prepare.tokenizer import Tokenizer  # noqa: E402
from pipeline.train.steps import load_examples, make_step, make_optimizer  # noqa: E402

LABELS = ("collate", "forward", "attention", "output+loss", "backward", "optimizer")


def label_modules(model: torch.nn.Module) -> None:
    """Profiler ranges around every attention module's and the output head's forward."""
    def wrap(module, name):
        def pre(*_):
            module._range = record_function(name)
            module._range.__enter__()

        def post(*_):
            module._range.__exit__(None, None, None)
        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    for m in model.modules():
        if isinstance(m, Attention):
            wrap(m, "attention")
        elif isinstance(m, OutputHead):
            wrap(m, "output+loss")


@contextmanager
def timed(store: dict, key: str):
    t = time.perf_counter()
    yield
    store[key] = time.perf_counter() - t


def profile_kind(kind: str, experiment: str, steps: int, overrides: list[str]) -> None:
    cfg = compose([f"experiment={experiment}", f"objective={kind}", *overrides])
    setup_runtime(cfg.train.threads, False)
    device = resolve_device(str(cfg.train.device))
    amp = resolve_precision(str(cfg.train.precision), device)
    tok = Tokenizer.load(cfg.paths.tokenizer)
    sp = specials(tok)
    objective = make_objective(cfg.objective, sp)
    data = load_examples(cfg, tok)
    margs = ModelArgs(d_vocab=tok.vocab_size, pad_id=tok.pad_id, **to_plain(cfg.model))
    model = build_model(kind, margs, 1).to(device).train()
    opt = make_optimizer(model, cfg.train)
    step_fn = make_step(model, objective, cfg.train, device, amp)
    label_modules(model) if not cfg.train.compile else None
    lengths = np.array([objective.length(ex) for ex in data["train"]])
    batches = make_batches(lengths, int(cfg.train.max_tokens), 1, 0)
    gen = torch.Generator().manual_seed(1)

    def one_step(i):
        with record_function("collate"):
            batch = to_device(objective.collate([data["train"][j] for j in batches[i]], gen, train=True), device)
        loss, _ = step_fn(batch, opt, float(cfg.train.clip_norm))
        return loss

    for i in range(3):  # warm-up (and compilation)
        one_step(i)
    tokens = sum(int(lengths[batches[i]].sum()) for i in range(3, 3 + steps))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for i in range(3, 3 + steps):
            with record_function("step"):
                loss = one_step(i)
        float(loss)
        wall = time.perf_counter() - t0
    ev = prof.key_averages()
    by = {e.key: e.cpu_time_total / 1e3 / steps for e in ev}  # ms per step (inclusive)
    ops = sum(e.self_cpu_time_total for e in ev if not e.key.startswith(("step", *LABELS))
              and e.key.startswith("aten::")) / 1e3 / steps
    ms = 1000 * wall / steps
    print(f"\n{kind} ({cfg.model.norm}-norm, d_model {cfg.model.d_model}, {margs.d_vocab} vocab, "
          f"max_tokens {cfg.train.max_tokens}, {amp or 'fp32'}, compile {cfg.train.compile}): "
          f"{ms:.0f} ms/step, {tokens / wall:,.0f} tokens/s (padding excluded)")
    print(f"  {'phase':<14}{'ms/step':>9}{'share':>8}")
    for key in LABELS:
        if key in by:
            print(f"  {key:<14}{by[key]:9.1f}{by[key] / ms:8.1%}")
    print(f"  {'aten ops (self, all threads)':<30}{ops:7.1f}")
    print("  top operators by self CPU time (ms/step):")
    for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:8]:
        print(f"    {e.key[:48]:<48}{e.self_cpu_time_total / 1e3 / steps:8.1f}")

    t: dict[str, float] = {}
    with timed(t, "dev"):
        dev_metrics(model, objective, data["dev"], device, amp, int(cfg.train.max_tokens))
    if kind == "mt":
        with timed(t, "bleu"):
            bleu(model, *data["bleu"], tok, sp, device, amp)
    with tempfile.TemporaryDirectory() as tmp:
        with timed(t, "checkpoint"):
            torch_save({"state_dict": model.state_dict(), "optimizer": opt.state_dict()}, Path(tmp) / "last.pt")
    print(f"  per evaluation: dev loss ({len(data['dev'])} sentences) {t['dev']:.2f} s"
          + (f", greedy BLEU ({len(data['bleu'][0])} sentences) {t['bleu']:.2f} s" if "bleu" in t else "")
          + f", checkpoint write {t['checkpoint']:.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="default")
    p.add_argument("--kinds", nargs="+", default=["mt", "lm", "mlm"])
    p.add_argument("--steps", type=int, default=10)
    a, overrides = p.parse_known_args()
    print(describe())
    for kind in a.kinds:
        profile_kind(kind, a.experiment, a.steps, overrides)


if __name__ == "__main__":
    main()
