"""Reading the activation dumps that `pipeline.dump` writes, and choosing rows of them.

A dump folder holds `layer_00.npy .. layer_LL.npy` (n_tokens x d_model, memory-mapped here),
`tokens.tsv` (sentence_id, position, token_id, token, sentence_length, freq_rank; MLM's `masked/`
adds masked, input_id, label_id) and `meta.json`. Every model of an experiment is run over the
same probe tokens in the same order, so row i means the same token occurrence in every dump.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from pipeline.config.analysis import setting
from pipeline.config.grid import model_grid
from pipeline.config.layout import dump_folder
from pipeline.dump.format import MASKED_DIR, META_FILE, layer_file, read_tokens
from pipeline.errors import PipelineError
from pipeline.records.files import STAGE_RECORD, read_json
from pipeline.records.stage import checked_file, note_input


@dataclass(frozen=True)
class Dump:
    """One model's dump: `tokens` columns (int64 arrays; `token` an array of str) and its layers."""

    folder: Path
    meta: dict
    tokens: dict[str, np.ndarray]

    @property
    def objective(self) -> str:
        return str(self.meta["objective"])

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])

    @property
    def kind(self) -> str:
        """mt | lm | mlm: what the model was trained to do (mt_td is an mt, lm_td an lm)."""
        return str(self.meta["kind"])

    @property
    def n_layers(self) -> int:
        """L: the layers are 0 (embeddings + positions) .. L."""
        return int(self.meta["n_layers"])

    @property
    def d_model(self) -> int:
        return int(self.meta["d_model"])

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    def layer(self, layer: int) -> np.ndarray:
        """The (n_tokens, d_model) states of `layer`, memory-mapped (dtype as stored: float16 or 32)."""
        if not 0 <= layer <= self.n_layers:
            raise IndexError(f"{self.folder} has layers 0..{self.n_layers}, not {layer}")
        return _open_layer(self.folder / layer_file(layer))

    def states(self, layer: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Rows of `layer` as a float32 array in memory (all rows when `rows` is None)."""
        data = self.layer(layer)
        return np.asarray(data if rows is None else data[rows], dtype=np.float32)

    def masked(self) -> "Dump":
        """The MLM dump with the input masked as in training (the `masked/` subfolder)."""
        return load_dump(self.folder / MASKED_DIR)


@functools.lru_cache(maxsize=64)
def _open_layer(path: Path) -> np.ndarray:
    checked_file(path)  # missing or resized: names the file and the command that redoes the dump
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise PipelineError(f"{path} is not a readable layer file ({e}): the dump is damaged; redo it with "
                            "`python -m pipeline.dump` for this model") from None


def load_dump(folder: str | Path) -> Dump:
    """Open a finished dump (or its `masked/` subfolder); fails naming the folder otherwise."""
    folder = Path(folder)
    top = folder.parent if folder.name == MASKED_DIR else folder
    if not (top / STAGE_RECORD).is_file() or not (folder / META_FILE).is_file():
        raise PipelineError(f"{folder} holds no finished dump: run `python -m pipeline.dump` "
                            "(or the workflow's dump rule) first")
    note_input(top)  # its digest goes into the record of what this process writes
    meta = read_json(checked_file(folder / META_FILE))
    checked_file(folder / "tokens.tsv")
    tokens = read_tokens(folder)
    n = len(tokens["token_id"])
    if n != int(meta["n_tokens"]):
        raise PipelineError(f"{folder}/tokens.tsv has {n} rows but meta.json says {meta['n_tokens']}")
    return Dump(folder, meta, tokens)


# ---------------------------------------------------------------- the models of an experiment

def grid(cfg: DictConfig) -> list[tuple[str, int]]:
    """(objective, seed) of every model of the experiment: workflow.objectives x workflow.seeds, then
    the step-0 control `init` of every seed in use (`pipeline.config.model_grid`)."""
    return model_grid(cfg)


def load_grid(cfg: DictConfig, aligned: bool = True) -> dict[tuple[str, int], Dump]:
    """Every model's dump, checked (`aligned`) to cover the same token occurrences in the same order;
    unchecked, models with other tokenizers (pretrained ones) compare by words (analysis/io/words.py)."""
    dumps = {key: load_dump(dump_folder(cfg, *key)) for key in grid(cfg)}
    if aligned:
        check_aligned(list(dumps.values()))
    return dumps


def check_aligned(dumps: list[Dump]) -> None:
    """Fail unless every dump has the same rows (sentence, position, token) in the same order; an
    MLM masked run of several maskings holds those rows once per masking."""
    first = dumps[0]
    for other in dumps[1:]:
        copies = int(other.meta.get("maskings", 1)) if other.meta.get("masked") else 1
        for column in ("sentence_id", "position", "token_id"):
            if not np.array_equal(np.tile(first.tokens[column], copies), other.tokens[column]):
                raise PipelineError(f"{other.folder} and {first.folder} do not hold the same probe tokens "
                                    f"(column {column} differs): dump them again with the same data and tokenizer")


# ---------------------------------------------------------------- choosing rows

def bucket_edges(cfg: DictConfig) -> list[int]:
    return [int(e) for e in setting(cfg, "analysis.buckets")]


def bucket_labels(edges: list[int]) -> list[str]:
    """'1-10', '10-25', ...: bucket i holds the ranks [edges[i], edges[i+1])."""
    return [f"{lo}-{hi}" for lo, hi in zip(edges, edges[1:])]


def bucket_index(ranks: np.ndarray, edges: list[int]) -> np.ndarray:
    """The bucket of each rank (index into bucket_labels), -1 outside [edges[0], edges[-1])."""
    ranks = np.asarray(ranks)
    index = np.searchsorted(np.asarray(edges), ranks, side="right") - 1
    index[(ranks < edges[0]) | (ranks >= edges[-1])] = -1
    return index


def sample_rows(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of `limit` of `n` rows (all rows when limit is None
    or not smaller than n): the same subset for every model of an experiment."""
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(limit), replace=False))


# ---------------------------------------------------------------- the sentence of a row

def sentence_pieces(tokens: dict[str, np.ndarray], rows: np.ndarray, pieces: np.ndarray | None = None) -> np.ndarray:
    """(len(rows),) object array: each row's whole sentence, its pieces (`pieces`, by default the token
    table's `token`) joined by single spaces in position order, so that `text.split(" ")[position]` is
    the row's piece (pieces hold no space: sentencepiece writes "▁", GPT-2 "Ġ", WordPiece "##"; one that
    did would get "▁" in its place). A sentence is a run of consecutive rows of one sentence_id whose
    positions count up from 0 (an MLM masked run holds each sentence once per masking); each sentence
    needed is joined once."""
    sid, pos = np.asarray(tokens["sentence_id"]), np.asarray(tokens["position"])
    pieces = np.asarray(tokens["token"] if pieces is None else pieces, dtype=str)
    if len(pieces) and (np.char.find(pieces, " ") >= 0).any():
        pieces = np.char.replace(pieces, " ", "\u2581")
    starts = np.ones(len(sid), dtype=bool)
    starts[1:] = (sid[1:] != sid[:-1]) | (pos[1:] != pos[:-1] + 1)
    run = np.cumsum(starts) - 1                       # each row's sentence run
    begin = np.flatnonzero(starts)
    end = np.append(begin[1:], len(sid))
    needed, inverse = np.unique(run[np.asarray(rows, dtype=np.int64)], return_inverse=True)
    texts = [" ".join(pieces[begin[r]:end[r]].tolist()) for r in needed]
    return np.asarray(texts, dtype=object)[inverse.reshape(-1)]
