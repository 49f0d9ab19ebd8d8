"""Dev quality: loss for every objective, LM perplexity, MLM masked-token accuracy, MT BLEU."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.machine.runtime import autocast
from pipeline.model.objectives import IGNORE, Objective, Specials, make_batches, pad

EVAL_SEED = 20190901  # fixed MLM masks on the dev set, so that evaluations are comparable


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def dev_metrics(model, objective: Objective, examples: list, device: torch.device,
                amp: torch.dtype | None, max_tokens: int) -> dict[str, float]:
    """Token-level cross-entropy (nats, no label smoothing) and accuracy over the predicted tokens;
    `perplexity` for lm, `accuracy` is the masked-token accuracy for mlm."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(EVAL_SEED)
    lengths = np.array([objective.length(ex) for ex in examples])
    total, count, correct = 0.0, 0, 0
    for idx in make_batches(lengths, max_tokens, seed=0, epoch=0):
        batch = to_device(objective.collate([examples[i] for i in idx], gen, train=False), device)
        with autocast(device, amp):
            logits = model(batch["input"], batch.get("tgt_in"))
        labels = batch["labels"]
        keep = labels != IGNORE
        total += F.cross_entropy(logits.float()[keep], labels[keep], reduction="sum").item()
        correct += (logits[keep].argmax(-1) == labels[keep]).sum().item()
        count += int(keep.sum())
    model.train(was_training)
    loss = total / max(count, 1)
    out = {"loss": loss, "accuracy": correct / max(count, 1), "n_tokens": count}
    if objective.kind == "lm":
        out["perplexity"] = math.exp(min(loss, 50.0))
    return out


@torch.no_grad()
def greedy_translate(model, sources: list[list[int]], sp: Specials, device: torch.device,
                     amp: torch.dtype | None, batch_size: int = 128, extra_len: int = 10) -> list[list[int]]:
    """Greedy decoding with an MT model: token ids of each source -> token ids of its translation."""
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start:start + batch_size]
        src = pad([[sp.bos, *s, sp.eos] for s in chunk], sp.pad).to(device)
        max_len = min(int(src.shape[1] * 1.5) + extra_len, model.args.n_ctx)
        with autocast(device, amp):
            memory, _ = model.encode(src)
            ys = torch.full((len(chunk), 1), sp.bos, dtype=torch.long, device=device)
            done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
            for _ in range(max_len - 1):
                nxt = model.decode(memory, src, ys)[:, -1].argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, sp.pad), nxt)
                ys = torch.cat([ys, nxt[:, None]], dim=1)
                done |= nxt == sp.eos
                if bool(done.all()):
                    break
        for row in ys[:, 1:].tolist():
            out.append(row[: row.index(sp.eos)] if sp.eos in row else [t for t in row if t != sp.pad])
    model.train(was_training)
    return out


def bleu(model, sources: list[list[int]], references: list[str], tokenizer, sp: Specials,
         device: torch.device, amp: torch.dtype | None) -> float:
    """Corpus BLEU (sacrebleu, default 13a tokenisation) of greedy translations against one reference each."""
    import sacrebleu

    hyps = [tokenizer.decode(ids) for ids in greedy_translate(model, sources, sp, device, amp)]
    return float(sacrebleu.corpus_bleu(hyps, [references]).score)
