"""The probe sentences as a pretrained model's own tokenizer cuts them: its pieces, the words they make up (a word's state is its first piece's, or the mean of its pieces), their frequency ranks, and an MLM's maskings."""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pipeline.dump.writer import (
    SentenceRows,
)
from pipeline.errors import PipelineError
from pipeline.prepare.tokenizer import frequency_ranks

FREQ_SOURCE = "train.src"


WORD_START = "\u2581"  # a sentencepiece piece that begins a word


@dataclass(frozen=True)
class HFProbe(SentenceRows):
    """The probe sentences that fit the model, tokenised by it, with their rows in the layer files."""

    sentence_ids: np.ndarray       # (k,) line numbers in probe.txt of the kept sentences
    inputs: list[np.ndarray]       # k arrays: the whole input fed, special tokens included
    kept: list[np.ndarray]         # k arrays: positions in `inputs` that are rows (not special tokens)
    words: list[np.ndarray]        # k arrays: the word of each row (-1: sentence not mapped to words)
    offsets: np.ndarray            # (k + 1,) first row of each kept sentence
    n_lines: int
    n_too_long: int
    n_empty: int
    unaligned: list[int]           # sentence ids whose subwords do not cover their words one to one

    def tokens(self, i: int) -> np.ndarray:
        return self.inputs[i][self.kept[i]]


def word_spans(line: str) -> list[tuple[int, int]]:
    """(start, end) of every whitespace-separated word of `line`: the words all models share."""
    return [m.span() for m in re.finditer(r"\S+", line)]


def words_from_offsets(line: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """The word of each subword from its character offsets: the word holding the subword's first
    non-space character; a subword without one (an empty span) joins the word before it."""
    spans = word_spans(line)
    starts = [s for s, _ in spans]
    out, last = [], 0
    for start, end in offsets:
        p = start
        while p < end and line[p].isspace():
            p += 1
        if p < end:
            w = bisect.bisect_right(starts, p) - 1
            last = w if w >= 0 and p < spans[w][1] else last
        out.append(last)
    return out


def words_from_pieces(pieces: Sequence[str]) -> list[int]:
    """The word of each sentencepiece piece: a new word at every piece that begins with "▁" (and at
    the first piece)."""
    out, w = [], -1
    for i, piece in enumerate(pieces):
        if i == 0 or piece.startswith(WORD_START):
            w += 1
        out.append(max(w, 0))
    return out


def _covers(words: Sequence[int], n_words: int) -> bool:
    """Every word 0..n_words-1 has subwords, in order (non-decreasing, no word skipped)."""
    return (len(words) > 0 and words[0] == 0 and words[-1] == n_words - 1
            and all(b - a in (0, 1) for a, b in zip(words, words[1:])))


def encode(tokenizer, lines: Sequence[str]) -> list[tuple[list[int], list[bool], list[int]]]:
    """Per line: (input ids with the model's special tokens, which of them are special, the word of
    each id — meaningful for the non-special ones). Fast tokenizers map subwords to words by character
    offsets; slow sentencepiece ones (Marian) by the pieces' "▁"."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(list(lines), add_special_tokens=True, return_offsets_mapping=True,
                        return_special_tokens_mask=True, return_attention_mask=False)
        return [(ids, [bool(s) for s in special], words_from_offsets(line, offsets))
                for line, ids, special, offsets in zip(lines, enc["input_ids"], enc["special_tokens_mask"],
                                                       enc["offset_mapping"])]
    out = []
    for line in lines:
        ids = tokenizer(line, add_special_tokens=True)["input_ids"]
        special = [bool(s) for s in tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)]
        pieces = tokenizer.convert_ids_to_tokens(ids)
        content = [p for p, s in zip(pieces, special) if not s]
        if content and not any(p.startswith(WORD_START) for p in content):
            raise PipelineError(f"{type(tokenizer).__name__} gives neither character offsets nor sentencepiece "
                                "word marks: its subwords cannot be mapped to words")
        words = iter(words_from_pieces(content))
        out.append((ids, special, [-1 if s else next(words) for s in special]))
    return out


def select_probe(lines: Sequence[str], tokenizer, max_length: int) -> HFProbe:
    """Tokenise the probe lines; keep those with at least one non-special token whose whole input
    fits `max_length`."""
    encoded = encode(tokenizer, lines)
    keep, inputs, kept, words, unaligned = [], [], [], [], []
    n_empty = n_too_long = 0
    for i, (line, (ids, special, word)) in enumerate(zip(lines, encoded)):
        rows = np.flatnonzero(~np.asarray(special, dtype=bool))
        if len(rows) == 0:
            n_empty += 1
            continue
        if len(ids) > max_length:
            n_too_long += 1
            continue
        w = np.asarray(word, dtype=np.int64)[rows]
        if not _covers(w.tolist(), len(word_spans(line))):
            unaligned.append(i)
            w = np.full(len(rows), -1, dtype=np.int64)
        keep.append(i)
        inputs.append(np.asarray(ids, dtype=np.int64))
        kept.append(rows)
        words.append(w)
    offsets = np.concatenate([[0], np.cumsum([len(k) for k in kept], dtype=np.int64)]).astype(np.int64)
    return HFProbe(np.asarray(keep, dtype=np.int64), inputs, kept, words, offsets, len(lines), n_too_long, n_empty,
                   unaligned)


def token_string(tokenizer, i: int) -> str:
    """A vocabulary entry as the token table stores it: tab, newline and carriage return escaped."""
    s = tokenizer.convert_ids_to_tokens(int(i))
    s = "" if s is None else str(s)
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def source_ranks(tokenizer, lines: Sequence[str], vocab: int) -> np.ndarray:
    """Frequency rank (1 = most frequent) of every id of the model's vocabulary in `lines` tokenised
    by it (special tokens not counted), ties broken by the smaller id."""
    counts = np.zeros(vocab, dtype=np.int64)
    for start in range(0, len(lines), 2048):
        batch = tokenizer(list(lines[start:start + 2048]), add_special_tokens=False,
                          return_attention_mask=False)["input_ids"]
        flat = np.fromiter((t for ids in batch for t in ids), dtype=np.int64)
        counts += np.bincount(flat, minlength=vocab)[:vocab]
    return frequency_ranks(counts)


def mask_probe(probe: HFProbe, tokenizer, vocab: int, seed: int, masking: dict[str, float]
               ) -> tuple[list[np.ndarray], np.ndarray]:
    """The probe inputs masked as BERT was trained: each row (non-special token) chosen with
    mask_prob; of those, mask_token_prob become the model's mask token, random_token_prob a random
    non-special token, the rest stay. One generator over the whole probe set in order, so the masks
    depend on `seed` and the kept sentences only. Returns (inputs per sentence, kind per row:
    0 untouched, 1 mask token, 2 random, 3 chosen but kept)."""
    if tokenizer.mask_token_id is None:
        raise PipelineError(f"{type(tokenizer).__name__} has no mask token: the model cannot be an mlm "
                            "(set its role to lm or mt)")
    special = set(int(i) for i in tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(vocab) if i not in special], dtype=torch.long)
    gen = torch.Generator().manual_seed(int(seed))
    n = probe.n_tokens
    chosen = torch.rand(n, generator=gen) < masking["mask_prob"]
    u = torch.rand(n, generator=gen)
    to_mask = chosen & (u < masking["mask_token_prob"])
    to_random = chosen & (u >= masking["mask_token_prob"]) & (u < masking["mask_token_prob"] + masking["random_token_prob"])
    randoms = ordinary[torch.randint(len(ordinary), (n,), generator=gen)]
    kind = chosen.to(torch.int64) * 3
    kind[to_mask], kind[to_random] = 1, 2
    kind = kind.numpy()
    randoms = randoms.numpy()
    inputs = []
    for i in range(len(probe.inputs)):
        ids = probe.inputs[i].copy()
        a = int(probe.offsets[i])
        rows = probe.kept[i]
        k = kind[a:a + len(rows)]
        ids[rows[k == 1]] = tokenizer.mask_token_id
        ids[rows[k == 2]] = randoms[a:a + len(rows)][k == 2]
        inputs.append(ids)
    return inputs, kind
