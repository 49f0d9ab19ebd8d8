"""Time the amount-of-influence pass: every removal of a batch in one pass of the block, from the
cached layer n-1 states (analysis.influence.removed_states), against the definition computed one
token and one layer at a time from the embeddings up (removed_states_direct), on the same sentences
in the same run, and check that they agree.

    python bench/influence.py [--sentences 400] [--d-model 256] [--layers 6] [--repeats 3]

An untrained stack of the default experiment's shape (the cost does not depend on the weights) over
random sentences with Tatoeba-like lengths (3-20 tokens); for every layer n, every token of every
sentence is removed once as a key at that layer. Prints both times (best of --repeats), the ratio
and the largest difference between the two results.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from bench.machine import describe  # noqa: E402
from analysis.measures.influence import removed_states, removed_states_direct, sentence_batches  # noqa: E402
from pipeline.model.transformer import ModelArgs, build_model  # noqa: E402


def sentences(n: int, d_vocab: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 21, (n,), generator=g).tolist()
    return [torch.randint(5, d_vocab, (length,), generator=g) for length in lengths]


def batches(model, sents: list[torch.Tensor], batch_tokens: int):
    """(layer states, mask, owner, removed) per batch, as analysis.influence builds them, and the
    sentences of each batch."""
    lengths = {i: len(s) for i, s in enumerate(sents)}
    out, order = [], sentence_batches(lengths, lengths, batch_tokens)
    for batch in order:
        T = max(lengths[i] for i in batch) + 2
        tokens = torch.zeros(len(batch), T, dtype=torch.long)
        owner, removed = [], []
        for b, i in enumerate(batch):
            n = lengths[i]
            tokens[b, 0], tokens[b, 1:n + 1], tokens[b, n + 1] = 2, sents[i], 3
            owner += [b] * n
            removed += range(1, n + 1)
        with torch.no_grad():
            _, states = model.encode(tokens, return_states=True)
        out.append((states, model.stack.mask(tokens), torch.tensor(owner), torch.tensor(removed)))
    return out, order


def run_batched(model, sents: list[torch.Tensor], batch_tokens: int) -> tuple[float, list[torch.Tensor]]:
    """Every (removal, layer): the row of the removal's sentence, padding cut off; the time includes
    the pass that caches every layer's states."""
    start = time.perf_counter()
    prepared, _ = batches(model, sents, batch_tokens)
    results = []
    for states, mask, owner, removed in prepared:
        n_real = (mask[:, 0, 0, :]).sum(-1)  # real tokens (bos .. eos) per sentence of the batch
        for layer, block in enumerate(model.stack.blocks, start=1):
            out = removed_states(block, states[layer - 1], mask, owner, removed)
            results += [out[r, :int(n_real[b])] for r, b in enumerate(owner.tolist())]
    return time.perf_counter() - start, results


def run_direct(model, sents: list[torch.Tensor], batch_order: list[list[int]]) -> tuple[float, list[torch.Tensor]]:
    """The same (removal, layer) results in the same order, each computed on its own."""
    start = time.perf_counter()
    results = []
    for batch in batch_order:
        rows = [(i, j) for i in batch for j in range(1, len(sents[i]) + 1)]
        for layer in range(1, len(model.stack.blocks) + 1):
            for i, j in rows:
                tokens = torch.cat([torch.tensor([2]), sents[i], torch.tensor([3])])[None]
                results.append(removed_states_direct(model, tokens, j, layer))
    return time.perf_counter() - start, results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=200)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--batch-tokens", type=int, default=16384, help="analysis.influence.batch_tokens")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    args = ModelArgs(d_vocab=8000, pad_id=0, n_layers=a.layers, d_model=a.d_model, n_heads=4, d_mlp=4 * a.d_model,
                     n_ctx=64, dropout=0.0)
    model = build_model("mlm", args, seed=1).eval()
    sents = sentences(a.sentences, args.d_vocab)
    prepared, order = batches(model, sents, a.batch_tokens)  # the batches' composition, for the report
    removals = sum(len(s) for s in sents) * a.layers
    print(describe())
    print(f"{a.sentences} sentences, {removals} removals (tokens x layers), d_model {a.d_model}, "
          f"{a.layers} layers, {len(prepared)} batches")
    batched, direct = [], []
    for _ in range(a.repeats):
        t, fast = run_batched(model, sents, a.batch_tokens)
        batched.append(t)
        t, slow = run_direct(model, sents, order)
        direct.append(t)
    diff = max(float((x - y).abs().max()) for x, y in zip(fast, slow))
    tb, td = min(batched), min(direct)
    print(f"batched {tb:.2f} s   one at a time {td:.2f} s   ratio {td / tb:.1f}x   max |difference| {diff:.1e}")


if __name__ == "__main__":
    main()
