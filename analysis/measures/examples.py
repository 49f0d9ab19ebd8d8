"""Examples for the report's neighbours explorer: a few occurrences of frequent words and, at every layer,
their nearest neighbours with their sentences.

    python -m analysis.measures.examples experiment=default objective=lm seed=1 [overrides]

Queries: `per_word` occurrences of each of the `words` most frequent whole words of the probe set (by
their count in the dump's token table, ties by the word). A word is alphabetic and matched as in
analysis/measures/tsne.py: one whole-word sentencepiece piece "▁" + word, here also not continued by the
next piece (a piece after it that starts without "▁" with a letter or digit makes it part of a longer
word); in a pretrained model's dump (a `word` column, another tokenizer) as one subword of its own
(analysis.io.words.occurrences). A query is named `<sentence_id>:<word>:<n>`, the n-th (0-based) such
occurrence of the word in its sentence, and chosen by a seeded hash of that name alone
(analysis.sample_seed): every model that shares a tokenizer (every trained model and the step-0 control)
gets the same queries, and a pretrained model the same wherever it finds the same occurrences.

Per layer 0..L, each query's k nearest neighbours among every probe token of the layer (the query
excluded) by analysis.neighbours.metric, found as the neighbours measure finds them
(analysis.measures.neighbours.nearest_neighbours). Rows: rank 0 the query itself, ranks 1..k its
neighbours nearest first, each with its piece, its sentence (`pieces`: the sentence's pieces joined by
single spaces, `pieces.split(" ")[position] == token`), its `similarity` to the query (cosine similarity,
or minus the Euclidean distance) and what it shares with the query as the neighbours measure defines it:
the same token id, the same position, the same left (right) token id, never where either has none (a
sentence's first or last token; so the query's own row, whose similarity is 1 under cosine and 0 under
euclidean, has every flag 1 but same_left / same_right at its sentence's edges). Writes `<paths.metrics>/examples/<objective>/seed<n>.csv`.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from analysis.io.dumps import Dump, load_dump, sentence_pieces
from analysis.io.tables import write_table
from analysis.io.words import bare, occurrences
from analysis.measures.neighbours import NO_TOKEN, context_tokens, nearest_neighbours
from analysis.measures.tsne import WORD_START
from pipeline.config.analysis import setting
from pipeline.config.cli import cli
from pipeline.config.layout import dump_folder, part_path
from pipeline.config.stages import section
from pipeline.errors import PipelineError
from pipeline.machine.runtime import resolve_device

log = logging.getLogger("analysis.examples")



# ---------------------------------------------------------------- the words and their occurrences

def word_finder(tokens: dict[str, np.ndarray]) -> tuple[Counter, Callable[[str], np.ndarray]]:
    """(bound, rows_of): for every alphabetic candidate word, an upper bound of its whole-word
    occurrences (its pieces, bare), and the function giving a word's whole-word rows (sorted)."""
    token = np.asarray(tokens["token"], dtype=str)
    if "word" in tokens:  # another tokenizer: the word as one subword of its own
        words = np.asarray([bare(t) for t in token.tolist()], dtype=str)
        bound = Counter(words[np.char.isalpha(words)].tolist())
        return bound, lambda word: occurrences(tokens, word)
    sid, pos = np.asarray(tokens["sentence_id"]), np.asarray(tokens["position"])
    starts = np.char.startswith(token, WORD_START)
    first = np.asarray([t[:1] for t in token.tolist()], dtype=str)
    continues = ~starts & np.char.isalnum(first)  # a piece inside a word, going on with a letter or digit
    continued = np.zeros(len(token), dtype=bool)
    continued[:-1] = (sid[1:] == sid[:-1]) & (pos[1:] == pos[:-1] + 1) & continues[1:]
    rest = np.asarray([t[1:] for t in token[starts].tolist()], dtype=str)
    bound = Counter(rest[np.char.isalpha(rest)].tolist())

    def rows_of(word: str) -> np.ndarray:
        rows = np.flatnonzero(token == WORD_START + word)
        return rows[~continued[rows]]

    return bound, rows_of


def frequent_words(tokens: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The `n` most frequent alphabetic whole words (by count, ties by the word), most frequent first,
    each with its rows. Exact: words are counted in the order of their upper bounds until no word left
    can reach the n-th count."""
    bound, rows_of = word_finder(tokens)
    found: dict[str, np.ndarray] = {}
    for word, most in sorted(bound.items(), key=lambda item: (-item[1], item[0])):
        if len(found) >= n:
            last = sorted(found.items(), key=lambda item: (-len(item[1]), item[0]))[n - 1]
            if (-most, word) > (-len(last[1]), last[0]):
                break
        rows = rows_of(word)
        if len(rows):
            found[word] = rows
    chosen = sorted(found.items(), key=lambda item: (-len(item[1]), item[0]))[:n]
    return dict(chosen)


def occurrence_index(sentence_ids: np.ndarray) -> np.ndarray:
    """For rows (in row order) of one word, the index of each among the word's rows of its sentence."""
    sid = np.asarray(sentence_ids)
    order = np.argsort(sid, kind="stable")
    s = sid[order]
    start = np.ones(len(s), dtype=bool)
    start[1:] = s[1:] != s[:-1]
    at = np.arange(len(s))
    out = np.empty(len(s), dtype=np.int64)
    out[order] = at - np.maximum.accumulate(np.where(start, at, 0))
    return out


def query_key(sentence_id: int, word: str, n: int) -> str:
    return f"{int(sentence_id)}:{word}:{int(n)}"


def _score(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{int(seed)}|{key}".encode(), digest_size=8).digest(), "big")


def choose_queries(tokens: dict[str, np.ndarray], words: int, per_word: int, seed: int) -> list[tuple[str, str, int]]:
    """(key, word, row) of every query: per word (most frequent first), the `per_word` occurrences whose
    keys hash lowest under `seed`, in sentence order; the choice depends only on the keys (sentence ids,
    words, occurrence indices), not on the model."""
    out = []
    for word, rows in frequent_words(tokens, words).items():
        sid = np.asarray(tokens["sentence_id"])[rows]
        keys = [query_key(s, word, n) for s, n in zip(sid.tolist(), occurrence_index(sid).tolist())]
        picked = sorted(range(len(rows)), key=lambda i: (_score(seed, keys[i]), keys[i]))[:per_word]
        out += [(keys[i], word, int(rows[i])) for i in sorted(picked, key=lambda i: int(rows[i]))]
    return out


# ---------------------------------------------------------------- neighbours and what they share

def similarities(states: np.ndarray, queries: np.ndarray, found: np.ndarray, metric: str) -> np.ndarray:
    """(q, K) similarity of each row of `found` (q, K) to its query: the cosine similarity, or minus
    the Euclidean distance (float64)."""
    x = np.asarray(states[queries], dtype=np.float64)[:, None, :]
    y = np.asarray(states[found], dtype=np.float64)
    if metric == "cosine":
        norms = np.maximum(np.linalg.norm(x, axis=-1), 1e-12) * np.maximum(np.linalg.norm(y, axis=-1), 1e-12)
        return (x * y).sum(-1) / norms
    return -np.sqrt(((x - y) ** 2).sum(-1))


def shared(found: np.ndarray, queries: np.ndarray, tokens: dict[str, np.ndarray],
           context: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """(q, K) 0/1 of what each row of `found` shares with its query: the neighbours measure's identity,
    the same position, and its left_token / right_token (a missing left or right token never matches)."""
    ids, pos = np.asarray(tokens["token_id"]), np.asarray(tokens["position"])
    left, right = context
    q = np.asarray(queries)[:, None]
    out = {"same_token": ids[found] == ids[q], "same_position": pos[found] == pos[q]}
    for name, ctx in (("same_left", left), ("same_right", right)):
        out[name] = (ctx[found] == ctx[q]) & (ctx[q] != NO_TOKEN)
    return {name: flags.astype(np.int64) for name, flags in out.items()}


def example_rows(dump: Dump, queries: list[tuple[str, str, int]], k: int, metric: str,
                 device) -> Iterator[dict]:
    """Per layer and query: the query (rank 0) and its k nearest neighbours, nearest first (the rows of
    the table but their objective and seed)."""
    tokens = dump.tokens
    rows = np.asarray([r for _, _, r in queries], dtype=np.int64)
    context = context_tokens(tokens)
    token, sid, pos = np.asarray(tokens["token"], dtype=str), tokens["sentence_id"], tokens["position"]
    for layer in range(dump.n_layers + 1):
        t = time.perf_counter()
        states = dump.states(layer)
        found = np.concatenate([rows[:, None], nearest_neighbours(states, rows, k, metric, device)], axis=1)
        sim = similarities(states, rows, found, metric)
        order = np.argsort(-sim[:, 1:], axis=1, kind="stable") + 1  # nearest first, by the exact similarity
        found[:, 1:] = np.take_along_axis(found, order, 1)
        sim[:, 1:] = np.take_along_axis(sim, order, 1)
        sim[:, 0] = 1.0 if metric == "cosine" else 0.0  # the query itself
        flags = shared(found, rows, tokens, context)
        pieces = sentence_pieces(tokens, found.ravel()).reshape(found.shape)
        for i, (key, word, _) in enumerate(queries):
            for rank, r in enumerate(found[i].tolist()):
                yield {"layer": layer, "query": key, "word": word, "rank": rank,
                       "sentence_id": int(sid[r]), "position": int(pos[r]), "token": str(token[r]),
                       "similarity": float(sim[i, rank]), **{name: int(f[i, rank]) for name, f in flags.items()},
                       "pieces": pieces[i, rank]}
        log.info("layer %d done in %.1f s", layer, time.perf_counter() - t)


def run(cfg: DictConfig) -> Path:
    """The neighbours explorer's examples of cfg.objective / cfg.seed's dump: its `examples` part."""
    started = time.perf_counter()
    words = int(setting(cfg, "analysis.examples.words"))
    per_word = int(setting(cfg, "analysis.examples.per_word"))
    k = int(setting(cfg, "analysis.examples.k"))
    metric = setting(cfg, "analysis.neighbours.metric")
    device = resolve_device(str(cfg.analysis.device), "analysis.device")
    objective, seed = str(cfg.label), int(cfg.seed)
    dump = load_dump(dump_folder(cfg, objective, seed))
    if k >= dump.n_tokens:
        raise PipelineError(f"setting analysis.examples.k={k}: the dump in {dump.folder} has only "
                            f"{dump.n_tokens} tokens")
    queries = choose_queries(dump.tokens, words, per_word, int(cfg.analysis.sample_seed))
    if not queries:
        log.warning("%s: no alphabetic whole word in the probe set; no examples", dump.folder)
    log.info("%s seed %s on %s: %d queries (%d words), pool %d tokens, k=%d, %s", objective, seed, device,
             len(queries), len({w for _, w, _ in queries}), dump.n_tokens, k, metric)
    rows = [{"objective": objective, "seed": seed, **row} for row in example_rows(dump, queries, k, metric, device)]
    path = write_table(part_path(cfg, "examples"), "examples", rows, section(cfg, "examples"), started,
                       device=str(device))
    log.info("wrote %s (%d rows) in %.1f s", path, len(rows), time.perf_counter() - started)
    return path


main = cli(run)

if __name__ == "__main__":
    main()
