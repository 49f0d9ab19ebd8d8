"""Pictures of a few words' occurrences: t-SNE per layer (METHODS.md §8).

    python -m analysis.measures.tsne experiment=default objective=mlm seed=1 [overrides]

Sets of rows (occurrences), each embedded in 2-d separately at every layer 0..L by t-SNE (van der
Maaten and Hinton 2008) with openTSNE (Poličar, Stražar and Zupan 2024; Barnes-Hut gradients, PCA
initialisation, seeded):
- `verbs`: occurrences of `tsne.words` (is, are, was, were), coloured by token;
- `verbs_masked` (MLM only): the same occurrences with the input masked as in training (the
  `masked/` run); the `masked` column tells which were masked (1), replaced (2) or chosen but kept (3);
- the position word's set, named after it (`it`): its occurrences, coloured by position.
A word is matched as one whole-word sentencepiece piece, "▁" + word (in a pretrained model's dump: as
one subword of its own, whatever its tokenizer's marks, analysis/io/words.py). A word the tokenizer splits
into several pieces, or that does not occur in the probe set, gets no rows and a logged message
saying which. At most `max_per_word` occurrences per word (a seeded subset, the same for every model).
Every point carries its sentence (`pieces`: the dump's pieces joined by single spaces, in position order,
so that `pieces.split(" ")[position]` is the point's piece); the masked set's as the model saw it
(`input_pieces`: the mask piece where masked, the replacement where replaced).
Writes `<paths.metrics>/tsne/<objective>/seed<n>.csv`.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from analysis.io.dumps import Dump, check_aligned, load_dump, sample_rows, sentence_pieces
from analysis.io.tables import write_table
from analysis.io.words import bare, occurrences
from pipeline.config.analysis import setting
from pipeline.config.cli import cli
from pipeline.config.layout import dump_folder, part_path
from pipeline.config.stages import section
from pipeline.dump.format import MASKED_DIR
from pipeline.prepare.tokenizer import MASK_PIECE

log = logging.getLogger("analysis.tsne")

WORD_START = "\u2581"  # sentencepiece's mark of a piece that begins a word
VERBS, VERBS_MASKED = "verbs", "verbs_masked"
MIN_POINTS = 5  # fewer occurrences than this make no picture
REPLACED = "[RANDOM]"  # a random replacement whose id the probe set never holds (its piece is not known here)


def split_forms(tokens: dict[str, np.ndarray], word: str) -> Counter:
    """How often `word` occurs in the probe set as a run of several pieces of one word ("▁i" + "s",
    "▁" + "is"), counted by the tuple of pieces: the reason a whole-word piece may be missing."""
    target = WORD_START + word
    pieces, sid = np.asarray(tokens["token"], dtype=str), tokens["sentence_id"]
    forms: Counter = Counter()
    prefixes = [target[:j] for j in range(1, len(target))]  # "▁", "▁i", ...: a split word's first piece
    for i in np.flatnonzero(np.isin(pieces, prefixes)):
        run, j = [str(pieces[i])], i + 1
        while (j < len(pieces) and sid[j] == sid[i] and not str(pieces[j]).startswith(WORD_START)
               and target.startswith("".join(run) + str(pieces[j]))):
            run.append(str(pieces[j]))
            j += 1
        ends_word = j == len(pieces) or sid[j] != sid[i] or str(pieces[j]).startswith(WORD_START)
        if "".join(run) == target and ends_word and len(run) > 1:
            forms[tuple(run)] += 1
    return forms


def word_rows(tokens: dict[str, np.ndarray], word: str, max_per_word: int | None, seed: int) -> np.ndarray:
    """Sorted rows whose piece is the whole word "▁" + word, at most `max_per_word` (seeded subset);
    in a pretrained model's dump (a `word` column, another tokenizer) the rows where the word is one
    subword of its own (analysis.io.words.occurrences). None found: logs whether the word occurs split
    into pieces or not at all, and returns no rows."""
    if "word" in tokens:
        rows = occurrences(tokens, word)
        if len(rows) == 0:
            log.warning("t-SNE: %r does not occur as one subword of its own in the probe set; no rows for it", word)
        return rows[sample_rows(len(rows), max_per_word, seed)]
    rows = np.flatnonzero(np.asarray(tokens["token"], dtype=str) == WORD_START + word)
    if len(rows) == 0:
        forms = split_forms(tokens, word)
        if forms:
            shown = ", ".join(f"{' + '.join(f)} ({n}x)" for f, n in forms.most_common(3))
            log.warning("t-SNE: %r is not one piece %r in the probe set; it occurs split into subwords: %s; "
                        "no rows for it", word, WORD_START + word, shown)
        else:
            log.warning("t-SNE: %r does not occur in the probe set (no piece %r); no rows for it", word,
                        WORD_START + word)
        return rows
    return rows[sample_rows(len(rows), max_per_word, seed)]


def input_pieces(masked: Dump) -> np.ndarray:
    """The pieces of an MLM's masked run as the model saw them: the mask piece (the pretrained tokenizer's
    `mask_token`, else ours) where masked (1), the piece of the replacement id where replaced at random
    (2; REPLACED when the probe set never holds that id), the token's own piece elsewhere."""
    tokens = masked.tokens
    pieces = np.asarray(tokens["token"], dtype=object)
    kind, inputs = np.asarray(tokens["masked"]), np.asarray(tokens["input_id"])
    ids, first = np.unique(np.asarray(tokens["token_id"]), return_index=True)
    out = pieces.copy()
    out[kind == 1] = str(masked.meta.get("mask_token") or MASK_PIECE)
    replaced = np.flatnonzero(kind == 2)
    at = np.minimum(np.searchsorted(ids, inputs[replaced]), len(ids) - 1)
    known = ids[at] == inputs[replaced]
    out[replaced] = np.where(known, pieces[first[at]], REPLACED)
    return out


def embed(states: np.ndarray, perplexity: float, seed: int, n_jobs: int = 1) -> np.ndarray:
    """2-d t-SNE embedding (n, 2) of states (n, d) with openTSNE (Barnes-Hut, PCA initialisation,
    `seed`); the perplexity is lowered to (n - 1) / 3 for small sets, as t-SNE needs 3 perplexity
    neighbours per point."""
    from openTSNE import TSNE

    n = len(states)
    if n < MIN_POINTS:
        raise ValueError(f"t-SNE of {n} points: at least {MIN_POINTS} are needed")
    perplexity = min(float(perplexity), (n - 1) / 3.0)
    tsne = TSNE(n_components=2, perplexity=perplexity, initialization="pca", negative_gradient_method="bh",
                random_state=int(seed), n_jobs=n_jobs, verbose=False)
    return np.asarray(tsne.fit(np.asarray(states, dtype=np.float32)), dtype=np.float64)


def _threads() -> int:
    """The threads this job may use: torch's count, which honours OMP_NUM_THREADS (the workflow sets
    it to the rule's `threads`). Each CPU of the machine instead oversubscribed it when several jobs
    ran at once: four t-SNE jobs on a 16-core machine, each with 16 threads, had not finished after
    five minutes (one takes 10-18 s alone)."""
    return max(1, torch.get_num_threads())


def run(cfg: DictConfig) -> Path:
    """t-SNE of the word sets at every layer of cfg.objective / cfg.seed's dump: its `tsne` part."""
    started = time.perf_counter()
    logging.getLogger("openTSNE").setLevel(logging.WARNING)  # one INFO line per fit otherwise
    words = setting(cfg, "analysis.tsne.words")
    position_word = setting(cfg, "analysis.tsne.position_word")
    max_per_word = setting(cfg, "analysis.tsne.max_per_word")
    perplexity = setting(cfg, "analysis.tsne.perplexity")
    seed = int(setting(cfg, "analysis.tsne.seed"))
    sample_seed = int(cfg.analysis.sample_seed)
    objective = str(cfg.label)
    dump = load_dump(dump_folder(cfg, objective, int(cfg.seed)))
    masked = None
    if dump.kind == "mlm":
        if (dump.folder / MASKED_DIR).is_dir():
            masked = dump.masked()
            check_aligned([dump, masked])
        else:
            log.warning("%s has no masked/ run: no %s set", dump.folder, VERBS_MASKED)

    verb_rows = np.sort(np.concatenate([word_rows(dump.tokens, w, max_per_word, sample_seed) for w in words]
                                       or [np.zeros(0, dtype=np.int64)]))
    sets = [(VERBS, dump, verb_rows)]
    if masked is not None:
        sets.append((VERBS_MASKED, masked, verb_rows))
    if position_word is not None:
        sets.append((position_word, dump, word_rows(dump.tokens, position_word, max_per_word, sample_seed)))
    n_jobs = _threads()
    rows = []
    for name, source, picked in sets:
        if len(picked) < MIN_POINTS:
            log.warning("t-SNE set %s: %d occurrences, fewer than %d; no rows for it", name, len(picked), MIN_POINTS)
            continue
        t = time.perf_counter()
        tokens = source.tokens
        kind = tokens["masked"][picked] if "masked" in tokens else np.zeros(len(picked), dtype=np.int64)
        words_of = np.asarray([bare(t) for t in tokens["token"][picked].astype(str)])
        sentences = sentence_pieces(tokens, picked, input_pieces(source) if name == VERBS_MASKED else None)
        for layer in range(dump.n_layers + 1):
            xy = embed(source.states(layer, picked), perplexity, seed, n_jobs)
            for i, r in enumerate(picked):
                rows.append({"set": name, "objective": objective, "seed": int(cfg.seed), "layer": layer,
                             "x": float(xy[i, 0]), "y": float(xy[i, 1]), "token": str(words_of[i]),
                             "position": int(tokens["position"][r]), "sentence_id": int(tokens["sentence_id"][r]),
                             "masked": int(kind[i]), "pieces": sentences[i]})
        log.info("set %s: %d occurrences x %d layers in %.1f s", name, len(picked), dump.n_layers + 1,
                 time.perf_counter() - t)
    path = write_table(part_path(cfg, "tsne"), "tsne", rows, section(cfg, "tsne"), started)
    log.info("wrote %s (%d rows) in %.1f s", path, len(rows), time.perf_counter() - started)
    return path


main = cli(run)

if __name__ == "__main__":
    main()
