"""Word-level states: comparing models whose tokenizers cut the same sentences into different subwords.

A word is a whitespace-separated word of a probe line (its 0-based index in the line), the unit every
tokenizer agrees on. A pretrained model's dump says which word each subword row belongs to (column
`word`, pipeline/dump/pretrained.py); our own dumps' sentencepiece pieces say it by their "▁" (a piece that
begins with it begins a word). A word's state at a layer is its first subword's state or the mean of
its subwords' states (`pretrained.word_state`: first | mean).

`align` finds the words every dump holds — the same (sentence, word) pairs, in one order — so that
row i of every model's word states is the same word occurrence, as row i of token-level dumps is the
same token occurrence when every model shares one tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.io.dumps import Dump
from pipeline.errors import PipelineError

WORD_START = "\u2581"
_STRIDE = np.int64(1 << 20)  # words per sentence a key leaves room for


def word_column(dump: Dump) -> np.ndarray:
    """(n_tokens,) the word of every row, -1 where it is not known: the dump's `word` column, or for a
    dump of sentencepiece pieces, a new word at every piece that begins with "▁" (and at each
    sentence's first piece)."""
    t = dump.tokens
    if "word" in t:
        return np.asarray(t["word"], dtype=np.int64)
    starts = np.char.startswith(np.asarray(t["token"], dtype=str), WORD_START)
    first = np.asarray(t["position"]) == 0
    new_word = (starts | first).astype(np.int64)
    counts = np.cumsum(new_word)
    # the count at each sentence's first row restarts the numbering there
    sentence_start = np.flatnonzero(first)
    base = np.repeat(counts[sentence_start], np.diff(np.append(sentence_start, len(counts))))
    return counts - base


def keys_of(dump: Dump) -> np.ndarray:
    """(n_tokens,) one int64 key per row: sentence_id * 2^20 + word (-1 for rows of unknown word)."""
    word = word_column(dump)
    key = np.asarray(dump.tokens["sentence_id"], dtype=np.int64) * _STRIDE + word
    key[word < 0] = -1
    return key


@dataclass(frozen=True)
class WordRows:
    """The words one dump holds: their keys (sorted, unique) and their subword rows."""

    keys: np.ndarray      # (m,) sorted keys
    first: np.ndarray     # (m,) row of each word's first subword (a word's subwords are consecutive rows)
    counts: np.ndarray    # (m,) subwords of each word


def word_rows(dump: Dump) -> WordRows:
    key = keys_of(dump)
    order = np.flatnonzero(key >= 0)
    if np.any(np.diff(key[order]) < 0):  # rows are in sentence order, words in order within them
        order = order[np.argsort(key[order], kind="stable")]
    keys, first_at, counts = np.unique(key[order], return_index=True, return_counts=True)
    return WordRows(keys, order[first_at], counts)


@dataclass(frozen=True)
class Alignment:
    """The words every dump of a set holds, in one order, and how to read each dump's states of them."""

    keys: np.ndarray                      # (m,) the common (sentence, word) keys, sorted
    per_dump: dict[object, tuple[np.ndarray, np.ndarray]]  # name -> (first rows, subword counts) of the common words
    dumps: dict[object, Dump]
    how: str                              # first | mean

    @property
    def n_words(self) -> int:
        return len(self.keys)

    @property
    def sentence_ids(self) -> np.ndarray:
        return self.keys // _STRIDE

    @property
    def words(self) -> np.ndarray:
        return self.keys % _STRIDE

    def states(self, name: object, layer: int, index: np.ndarray | None = None) -> np.ndarray:
        """(m', d) float32 word states of dump `name` at `layer`, for the common words `index` (all
        when None): the first subword's state, or the mean over the word's subwords."""
        first, counts = self.per_dump[name]
        index = np.arange(len(first)) if index is None else np.asarray(index)
        dump = self.dumps[name]
        if self.how == "first":
            return dump.states(layer, first[index])
        rows = np.concatenate([np.arange(f, f + c) for f, c in zip(first[index], counts[index])])
        # a word's subwords are consecutive rows of its sentence (dumps keep sentence order)
        states = dump.states(layer, rows)
        segment = np.repeat(np.arange(len(index)), counts[index])
        out = np.zeros((len(index), states.shape[1]), dtype=np.float64)
        np.add.at(out, segment, states)
        return (out / counts[index][:, None]).astype(np.float32)


def align(dumps: dict[object, Dump], how: str = "first") -> Alignment:
    """The words held by every dump of `dumps` (name -> Dump) and where each dump keeps them."""
    if how not in ("first", "mean"):
        raise PipelineError(f"setting pretrained.word_state={how!r}: expected first or mean")
    rows = {name: word_rows(d) for name, d in dumps.items()}
    common = None
    for r in rows.values():
        common = r.keys if common is None else np.intersect1d(common, r.keys, assume_unique=True)
    if common is None or len(common) == 0:
        raise PipelineError("the dumps " + ", ".join(str(d.folder) for d in dumps.values()) +
                            " share no probe word: were they dumped from the same probe set?")
    per_dump = {}
    for name, r in rows.items():
        at = np.searchsorted(r.keys, common)
        first, counts = r.first[at], r.counts[at]
        if np.any(np.diff(np.asarray(dumps[name].tokens["sentence_id"])) < 0):
            raise PipelineError(f"{dumps[name].folder}: rows are not in sentence order")
        per_dump[name] = (first, counts)
    return Alignment(common, per_dump, dumps, how)


_MARKS = ("\u2581", "\u0120")  # sentencepiece's and GPT-2's byte-level mark of a subword after a space
_CONTINUATION = "##"          # WordPiece's mark of a subword inside a word


def bare(token: str) -> str:
    """A subword without its tokenizer's word marks ("▁is", "Ġis", "##is" -> "is")."""
    token = token[len(_CONTINUATION):] if token.startswith(_CONTINUATION) else token
    return token.lstrip("".join(_MARKS))


def occurrences(tokens: dict[str, np.ndarray], word: str) -> np.ndarray:
    """Rows of a dump with a `word` column where `word` occurs as one subword of its own: the subword,
    bare, is the word, nothing alphanumeric precedes it within its whitespace word, and the subword
    after it in that word (if any) does not continue it with a letter or digit — "is" in "is." and
    '"is', never in "island" or "this"."""
    token = np.asarray(tokens["token"], dtype=str)
    sid, wid = np.asarray(tokens["sentence_id"]), np.asarray(tokens["word"])
    out = []
    for r in np.flatnonzero(np.asarray([bare(t) for t in token]) == word):
        if wid[r] < 0:
            continue
        p = r - 1
        if p >= 0 and sid[p] == sid[r] and wid[p] == wid[r] and any(c.isalnum() for c in bare(token[p])):
            continue
        n = r + 1
        if n < len(token) and sid[n] == sid[r] and wid[n] == wid[r]:
            following = bare(token[n])
            if following[:1].isalnum() and not token[n].startswith(_MARKS):
                continue
        out.append(r)
    return np.asarray(out, dtype=np.int64)
