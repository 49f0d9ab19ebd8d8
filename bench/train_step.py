"""Time one training step of the shared stack at a few sizes, fp32 against bf16 autocast.

    python bench/train_step.py [--d-model 128 256] [--tokens 4096] [--steps 10] [--device cpu|cuda]

Prints ms per step (median) and the bf16/fp32 ratio; `train.precision=auto` uses bf16 on CUDA and
on CPUs with bf16 matrix instructions (AMX or AVX-512 BF16), fp32 elsewhere."""
from __future__ import annotations

import argparse
import time

import torch

from pipeline.model import ModelArgs, build_model
from pipeline.objectives import Specials, make_objective
from pipeline.evaluate import to_device
from pipeline.runtime import autocast, has_fast_bf16, resolve_device


def step_ms(kind: str, d_model: int, n_tokens: int, steps: int, amp, device: torch.device) -> float:
    args = ModelArgs(d_vocab=8000, pad_id=0, n_layers=6, n_dec_layers=3, d_model=d_model, n_heads=4,
                     d_mlp=4 * d_model, n_ctx=128)
    model = build_model(kind, args, seed=1).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    sp = Specials(pad=0, bos=2, eos=3, mask=4, n_special=5, d_vocab=8000)
    from omegaconf import OmegaConf
    obj = make_objective(OmegaConf.create({"kind": kind, "mask_prob": 0.15, "mask_token_prob": 0.8,
                                            "random_token_prob": 0.1}), sp)
    g = torch.Generator().manual_seed(0)
    T = 16
    rows = [torch.randint(5, 8000, (T - 2,), generator=g).tolist() for _ in range(n_tokens // T)]
    examples = list(zip(rows, rows)) if kind == "mt" else rows
    batch = to_device(obj.collate(examples, g, train=True), device)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        with autocast(device, amp):
            loss, _ = obj.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--d-model", type=int, nargs="+", default=[128, 256])
    p.add_argument("--kinds", nargs="+", default=["lm", "mt"])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    a = p.parse_args()
    device = resolve_device(a.device, "--device")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, threads {torch.get_num_threads()}, bf16 units {has_fast_bf16()}"
    print(f"{where}; {a.tokens} tokens per batch")
    for kind in a.kinds:
        for d in a.d_model:
            fp32 = step_ms(kind, d, a.tokens, a.steps, None, device)
            bf16 = step_ms(kind, d, a.tokens, a.steps, torch.bfloat16, device)
            print(f"{kind:3s} d_model {d:4d}: fp32 {fp32:7.1f} ms  bf16 {bf16:7.1f} ms  bf16/fp32 {bf16 / fp32:.2f}")


if __name__ == "__main__":
    main()
