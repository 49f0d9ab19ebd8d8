"""The probe sentences as the experiment's tokenizer cuts them, the rows of the token table, and an MLM's maskings of the probe."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from pipeline.dump.format import (
    TOKENS_FILE,
)
from pipeline.dump.writer import (
    SentenceRows,
)
from pipeline.model.objectives import Specials, mask_tokens
from pipeline.prepare.tokenizer import Tokenizer


@dataclass(frozen=True)
class Probe(SentenceRows):
    """The probe sentences that fit the model, as token ids, with their rows in the layer files."""

    sentence_ids: np.ndarray  # (k,) 0-based line numbers in probe.txt of the kept sentences
    tokens: list[np.ndarray]  # k arrays of token ids (no bos/eos)
    offsets: np.ndarray  # (k + 1,) first row of each kept sentence; offsets[-1] = n_tokens
    n_lines: int
    n_too_long: int
    n_empty: int


def select_probe(lines: Sequence[str], tok: Tokenizer, n_ctx: int) -> Probe:
    """Tokenise the probe lines and keep those with 1 .. n_ctx - 2 tokens (bos and eos need room)."""
    encoded = tok.encode_batch(lines)
    fits = [i for i, ids in enumerate(encoded) if 0 < len(ids) <= n_ctx - 2]
    n_empty = sum(1 for ids in encoded if not ids)
    tokens = [np.asarray(encoded[i], dtype=np.int64) for i in fits]
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in tokens], dtype=np.int64)]).astype(np.int64)
    return Probe(np.asarray(fits, dtype=np.int64), tokens, offsets, len(lines),
                 len(lines) - len(fits) - n_empty, n_empty)


def mask_probe(probe: Probe, sp: Specials, seed: int, objective: dict) -> tuple[list[np.ndarray], np.ndarray]:
    """MLM inputs of the probe set masked as in training, with the objective's probabilities.

    The whole probe set is masked at once, in probe order, from one generator: the masks depend on
    `seed` and the kept sentences only — not on the batching, nor on the model's seed.
    Returns (input ids per sentence, masking kind per row: 0 untouched, 1 [MASK], 2 random, 3 kept).
    """
    flat = torch.from_numpy(np.concatenate(probe.tokens))[None]  # (1, n_tokens)
    gen = torch.Generator().manual_seed(seed)
    inputs, _, kind = mask_tokens(flat, sp, gen, float(objective.get("mask_prob", 0.15)),
                                  float(objective.get("mask_token_prob", 0.8)),
                                  float(objective.get("random_token_prob", 0.1)))
    inputs = inputs[0].numpy()
    return np.split(inputs, probe.offsets[1:-1]), kind[0].numpy().astype(np.int64)


def token_columns(probe: Probe, tok: Tokenizer, ranks: np.ndarray) -> dict[str, Sequence[Any]]:
    flat = np.concatenate(probe.tokens)
    lengths = probe.lengths
    pieces = [tok.piece(i) for i in range(tok.vocab_size)]
    bad = [p for p in pieces if "\t" in p or "\n" in p or "\r" in p]
    assert not bad, f"pieces with a tab or newline cannot go unescaped into {TOKENS_FILE}: {bad[:3]}"
    return {"sentence_id": np.repeat(probe.sentence_ids, lengths),
            "position": np.concatenate([np.arange(n) for n in lengths]),
            "token_id": flat,
            "token": [pieces[i] for i in flat],
            "sentence_length": np.repeat(lengths, lengths),
            "freq_rank": ranks[flat]}
