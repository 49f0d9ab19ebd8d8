"""The dump format: what a dump folder holds, and reading its token table. The analyses read dumps
through this module alone (never through the writers, which import torch).

    layer_00.npy .. layer_LL.npy  one (n_tokens, d) array per layer (0 = embeddings), rows in probe order
    tokens.tsv                    one line per row: TOKEN_COLUMNS (a pretrained model's: HF_COLUMNS)
    meta.json                     sizes, dtype, model, seed, the checkpoint's sha256
    masked/                       an MLM's states with the input masked as in training (MASKED_COLUMNS)
    readout.npz                   the logit lens (pipeline.dump.readout): per layer and per row with a target
                                  (an LM's next token; in masked/, an MLM's chosen positions) the loss, top-1
                                  hit and KL to the last layer; absent where not measured (meta.json: why)
    stage.json                    written last: the folder is finished

A file being written is named `.<name>.partial` (partial_path): never read, removed by a rerun.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

TOKENS_FILE = "tokens.tsv"
READOUT_FILE = "readout.npz"
META_FILE = "meta.json"
MASKED_DIR = "masked"
PARTIAL = ".partial"  # suffix of files being written; never read, removed or overwritten by a rerun
TOKEN_COLUMNS = ("sentence_id", "position", "token_id", "token", "sentence_length", "freq_rank")
MASKED_COLUMNS = (*TOKEN_COLUMNS, "masked", "input_id", "label_id", "masking")
DTYPES = {"float16": np.float16, "float32": np.float32}


def layer_file(layer: int) -> str:
    return f"layer_{layer:02d}.npy"


def partial_path(path: Path) -> Path:
    """The name `path` is written under until the whole dump is complete (hidden, so that no glob
    for `layer_*.npy` ever picks it up)."""
    return path.with_name(f".{path.name}{PARTIAL}")


def read_tokens(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """The columns of `<folder>/tokens.tsv`: int64 arrays, and `token` as an array of str."""
    path = Path(folder) / TOKENS_FILE
    if not path.is_file():
        raise PipelineError(f"{path} not found: run `python -m pipeline.dump` first")
    with open(path, encoding="utf-8", newline="") as f:
        # split on "\n" only: a piece may hold characters str.splitlines breaks at (U+2028, \x1c ..)
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    names = lines[0].split("\t")
    values = list(zip(*(line.split("\t") for line in lines[1:]))) or [()] * len(names)
    return {name: np.asarray(col, dtype=str) if name == "token" else np.asarray(col, dtype=np.int64)
            for name, col in zip(names, values)}
HF_COLUMNS = (*TOKEN_COLUMNS, "word")
HF_MASKED_COLUMNS = (*HF_COLUMNS, "masked", "input_id", "label_id", "masking", "predicted_id")


READOUT_ARRAYS = ("rows", "target", "loss", "top1", "kl")
TUNED_ARRAYS = ("tuned_loss", "tuned_top1", "tuned_kl")  # with a tuned lens (dump.tuned_lens > 0)


def read_readout(folder: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The logit lens of the dump in `folder` (READOUT_ARRAYS: `rows` (m,) the dump rows with a target,
    `target` (m,), and `loss`, `top1`, `kl` (L + 1, m); TUNED_ARRAYS the same through a tuned lens, where
    the dump fitted one); None when the dump holds none."""
    path = Path(folder) / READOUT_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            out = {name: f[name] for name in READOUT_ARRAYS}
            out.update({name: f[name] for name in TUNED_ARRAYS if name in f.files})
    except (OSError, ValueError, KeyError) as e:
        raise PipelineError(f"{path} is not a readout of pipeline.dump ({type(e).__name__}: {e}): dump again") from None
    return out
