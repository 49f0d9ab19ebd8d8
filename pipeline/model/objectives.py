"""Training objectives: what goes into the stack, what it predicts, and how a batch is formed.

Every objective feeds its stack `[bos] x_1 .. x_n [eos]` (the LM drops the final eos from its input:
it predicts it), so a token x_t sits at the same position t in every model.
- mt: the stack encodes the source; a decoder predicts `y_1 .. y_m [eos]` from `[bos] y_1 .. y_m`.
- lm: from the state of x_{t-1} predict x_t (causal stack).
- mlm: 15% of the tokens are chosen; of those 80% -> [MASK], 10% -> a random token, 10% kept; the
  chosen positions are predicted (Devlin et al. 2019).
Token dropout (mt_td, lm_td): every input token is replaced by a random token with probability p.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100  # label of positions without a prediction


@dataclass(frozen=True)
class Specials:
    pad: int
    bos: int
    eos: int
    mask: int
    n_special: int  # ids below this are special; random replacements come from [n_special, d_vocab)
    d_vocab: int


def specials(tok) -> Specials:
    """The special ids of a `pipeline.prepare.tokenizer.Tokenizer`."""
    return Specials(pad=tok.pad_id, bos=tok.bos_id, eos=tok.eos_id, mask=tok.mask_id,
                    n_special=tok.n_special, d_vocab=tok.vocab_size)


def make_batches(lengths: np.ndarray, max_tokens: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Token-count batching: indices grouped by length so that rows x longest <= max_tokens.

    Deterministic in (lengths, max_tokens, seed, epoch): a resumed run rebuilds the same batches.
    Ties in length are broken randomly per epoch, and the order of batches is shuffled.
    """
    rng = np.random.default_rng([seed, epoch])
    order = np.lexsort((rng.random(len(lengths)), lengths))
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and lengths[order[end]] * (end + 1 - start) <= max_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    rng.shuffle(batches)
    return batches


def pad(rows: list[list[int]], pad_id: int) -> Tensor:
    out = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def ordinary(tokens: Tensor, sp: Specials) -> Tensor:
    """True where a token is an ordinary (non-special) token."""
    return tokens >= sp.n_special


def random_tokens(shape, sp: Specials, gen: torch.Generator) -> Tensor:
    return torch.randint(sp.n_special, sp.d_vocab, shape, generator=gen)


def token_dropout(tokens: Tensor, p: float, sp: Specials, gen: torch.Generator) -> Tensor:
    """Replace every ordinary token by a random ordinary token with probability p."""
    if p <= 0:
        return tokens
    hit = (torch.rand(tokens.shape, generator=gen) < p) & ordinary(tokens, sp)
    return torch.where(hit, random_tokens(tokens.shape, sp, gen), tokens)


def mask_tokens(tokens: Tensor, sp: Specials, gen: torch.Generator, mask_prob: float = 0.15,
                mask_token_prob: float = 0.8, random_token_prob: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """BERT-style masking of ordinary tokens. tokens (B, T) ->
    (inputs (B, T), labels (B, T) with IGNORE where not chosen, kind (B, T) int8: 0 untouched,
    1 [MASK], 2 random token, 3 chosen but kept)."""
    chosen = (torch.rand(tokens.shape, generator=gen) < mask_prob) & ordinary(tokens, sp)
    u = torch.rand(tokens.shape, generator=gen)
    to_mask = chosen & (u < mask_token_prob)
    to_random = chosen & (u >= mask_token_prob) & (u < mask_token_prob + random_token_prob)
    inputs = torch.where(to_mask, torch.full_like(tokens, sp.mask), tokens)
    inputs = torch.where(to_random, random_tokens(tokens.shape, sp, gen), inputs)
    labels = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE))
    kind = chosen.to(torch.int8) * 3
    kind[to_mask], kind[to_random] = 1, 2
    return inputs, labels, kind


class Objective:
    """Turns examples (token-id lists) into batches, and batches into a loss."""

    kind: str

    def __init__(self, cfg, sp: Specials) -> None:
        self.cfg, self.sp = cfg, sp
        self.token_dropout = float(cfg.get("token_dropout", 0.0))
        self.label_smoothing = float(cfg.get("label_smoothing", 0.0))

    def length(self, example) -> int:
        raise NotImplementedError

    def collate(self, examples: list, gen: torch.Generator, train: bool) -> dict[str, Tensor]:
        raise NotImplementedError

    def wrap(self, ids: list[int]) -> list[int]:
        return [self.sp.bos, *ids, self.sp.eos]

    def loss(self, model, batch: dict[str, Tensor], smoothing: float | None = None) -> tuple[Tensor, Tensor]:
        """(mean loss over predicted tokens, number of predicted tokens)."""
        logits = model(batch["input"], batch.get("tgt_in"))
        labels = batch["labels"]
        eps = self.label_smoothing if smoothing is None else smoothing
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                               label_smoothing=eps)
        return loss, (labels != IGNORE).sum()


class MT(Objective):
    kind = "mt"

    def length(self, ex) -> int:
        return max(len(ex[0]), len(ex[1])) + 2

    def collate(self, examples, gen, train):
        src = pad([self.wrap(s) for s, _ in examples], self.sp.pad)
        if train:
            src = token_dropout(src, self.token_dropout, self.sp, gen)
        tgt_in = pad([[self.sp.bos, *t] for _, t in examples], self.sp.pad)
        labels = pad([[*t, self.sp.eos] for _, t in examples], IGNORE)
        return {"input": src, "tgt_in": tgt_in, "labels": labels}


class LM(Objective):
    kind = "lm"

    def length(self, ex) -> int:
        return len(ex) + 1

    def collate(self, examples, gen, train):
        inputs = pad([[self.sp.bos, *x] for x in examples], self.sp.pad)
        if train:
            inputs = token_dropout(inputs, self.token_dropout, self.sp, gen)
        labels = pad([[*x, self.sp.eos] for x in examples], IGNORE)
        return {"input": inputs, "labels": labels}


class MLM(Objective):
    kind = "mlm"

    def length(self, ex) -> int:
        return len(ex) + 2

    def collate(self, examples, gen, train):
        tokens = pad([self.wrap(x) for x in examples], self.sp.pad)
        inputs, labels, _ = mask_tokens(tokens, self.sp, gen, float(self.cfg.mask_prob),
                                        float(self.cfg.mask_token_prob), float(self.cfg.random_token_prob))
        if train:
            inputs = token_dropout(inputs, self.token_dropout, self.sp, gen)
        return {"input": inputs, "labels": labels}

    def loss(self, model, batch, smoothing=None):
        """Only the chosen positions are projected to the vocabulary: the output layer and its
        softmax cost 15% of what they would over every position (the loss is the same)."""
        labels = batch["labels"]
        chosen = labels != IGNORE
        out, _ = model.encode(batch["input"])
        logits = model.head(out[chosen])  # (n_chosen, d_vocab)
        eps = self.label_smoothing if smoothing is None else smoothing
        return F.cross_entropy(logits.float(), labels[chosen], label_smoothing=eps), chosen.sum()


def make_objective(cfg, sp: Specials) -> Objective:
    kinds = {"mt": MT, "lm": LM, "mlm": MLM}
    if cfg.kind not in kinds:
        raise ValueError(f"objective.kind={cfg.kind!r}: expected one of {sorted(kinds)}")
    return kinds[cfg.kind](cfg, sp)
