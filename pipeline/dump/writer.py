"""Writing a dump: layer files in chunks, the token table, and publishing a finished set of files at once (a killed dump leaves only .partial files, which nothing reads)."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pipeline.dump.format import MASKED_DIR, META_FILE, PARTIAL, READOUT_FILE, TOKENS_FILE, layer_file, partial_path
from pipeline.records.files import STAGE_RECORD, HashingFile, recording, remove_stale_temporaries, write_json

_TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


class SentenceRows:
    """The rows of the kept probe sentences in the layer files: sentence i at offsets[i]:offsets[i + 1]."""

    offsets: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def length_batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Indices sorted by length, cut so that rows x (longest + 2) <= batch_tokens (a sentence longer
    than that goes alone). Sorting keeps padding small; it is deterministic and, since padding never
    reaches a real token, what a sentence's states are does not depend on the batching."""
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (lengths[order[end]] + 2) * (end + 1 - start) <= batch_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


class LayerWriter:
    """The layer files of one dump, written front to back under partial names, one chunk of rows at a
    time, and hashed (sha256) as they are written: the record needs no second pass over them.

    `write` puts one block of rows into the chunk under way (in any order: batches are sorted by
    length); `end_chunk` appends the chunk to every file. At most one chunk of every layer is in
    memory, whatever the size of the probe set.
    """

    def __init__(self, folder: Path, n_layers: int, n_rows: int, d_model: int, dtype: np.dtype) -> None:
        self.paths = [folder / layer_file(l) for l in range(n_layers)]
        self.dtype, self.d_model, self.n_rows = np.dtype(dtype), d_model, n_rows
        self.files: list[HashingFile] = []
        self._raw: list[Any] = []
        self.written = 0  # rows appended so far to every file
        self.chunk: tuple[int, int] | None = None
        self.buffers: list[np.ndarray] = []
        folder.mkdir(parents=True, exist_ok=True)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": (n_rows, d_model)})
        try:
            for path in self.paths:
                raw = open(partial_path(path), "wb")
                self._raw.append(raw)
                self.files.append(HashingFile(raw))
                self.files[-1].write(header.getvalue())
        except BaseException:  # a full disk at the first bytes: the files opened so far are closed
            self.discard()
            raise

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * self.d_model

    def begin_chunk(self, start: int, stop: int) -> None:
        """The next rows to fill: [start, stop), which must follow the rows already written."""
        assert start == self.written and stop <= self.n_rows, (start, stop, self.written)
        self.chunk = (start, stop)
        self.buffers = [np.empty((stop - start, self.d_model), dtype=self.dtype) for _ in self.paths]

    def write(self, layer: int, row: int, values: np.ndarray) -> None:
        """Put `values` (rows x d_model) at `row` of `layer` (a row of the chunk under way)."""
        start = self.chunk[0]
        self.buffers[layer][row - start:row - start + len(values)] = values

    def end_chunk(self) -> None:
        for f, buffer in zip(self.files, self.buffers):
            f.write(memoryview(np.ascontiguousarray(buffer)).cast("B"))
        self.written, self.chunk, self.buffers = self.chunk[1], None, []

    def close(self) -> list[tuple[int, str]]:
        """Flush to disk (a renamed file must hold its data even if the machine stops right after);
        returns (size, sha256) of each file."""
        assert self.written == self.n_rows, (self.written, self.n_rows)
        for raw in self._raw:
            raw.flush()
            os.fsync(raw.fileno())
            raw.close()
        self._raw = []
        return [(f.size, f.sha256) for f in self.files]

    def discard(self) -> None:
        """Close every file without keeping what is left in its buffer (on a full disk the flush of a
        close fails: the file is closed all the same, and the next one must be too)."""
        for raw in self._raw:
            try:
                raw.close()
            except OSError:
                pass
        self._raw = []


# Rows per chunk of a dump: this many bytes over all layer files together, the memory the chunk takes
# (bench/dump_memory.py: a chunk adds its size to the peak). At d_model 128, float16 and 7 layer files
# that is ~18,700 tokens, ~1,500 probe sentences, batched by length within the chunk.
CHUNK_BYTES = 32 << 20


def chunks(offsets: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """Consecutive sentence ranges [a, b) of at most `max_rows` tokens each (a longer sentence alone)."""
    out, a, n = [], 0, len(offsets) - 1
    while a < n:
        b = a + 1
        while b < n and offsets[b + 1] - offsets[a] <= max_rows:
            b += 1
        out.append((a, b))
        a = b
    return out


def write_token_table(path: Path, columns: dict[str, Sequence[Any]]) -> tuple[int, str]:
    """A TSV with a header; no escaping: a value (e.g. a sentencepiece piece) holds no tab or newline.
    Returns its size and sha256 (hashed while written)."""
    names = list(columns)
    values = [c.tolist() if isinstance(c, np.ndarray) else c for c in columns.values()]  # python ints print faster
    with open(path, "wb") as raw:
        f = HashingFile(raw)
        f.write(("\t".join(names) + "\n").encode("utf-8"))
        block: list[str] = []
        for row in zip(*values):
            block.append("\t".join(map(str, row)) + "\n")
            if len(block) == 4096:
                f.write("".join(block).encode("utf-8"))
                block = []
        f.write("".join(block).encode("utf-8"))
    return f.size, f.sha256


def remove_outputs(folder: Path) -> None:
    """Delete what a previous (finished, stale or killed) dump left in `folder` and `folder/masked`."""
    (folder / STAGE_RECORD).unlink(missing_ok=True)  # first: nothing below may be trusted any more
    for sub in (folder, folder / MASKED_DIR):
        if not sub.is_dir():
            continue
        for path in [*sub.glob("layer_*.npy"), *sub.glob(f".*{PARTIAL}"), sub / TOKENS_FILE, sub / READOUT_FILE,
                     sub / META_FILE]:
            path.unlink(missing_ok=True)
        remove_stale_temporaries(sub / META_FILE)  # what a writer of meta.json killed before its rename left
    if (folder / MASKED_DIR).is_dir() and not any((folder / MASKED_DIR).iterdir()):
        (folder / MASKED_DIR).rmdir()


def publish(out: Path, sets: Sequence[Any]):
    """Only now, with every file of every set complete (`set.written`: the size and sha256 of its layer
    files, then its token table, then its readout when it has one), do the outputs get their final names, and each set its meta.json;
    returns the ledger of them all for the stage record."""
    with recording(out) as ledger:
        for dset in sets:
            readout = [dset.readout.path] if getattr(dset, "readout", None) is not None else []
            for path, (size, sha) in zip([*dset.writer.paths, dset.folder / TOKENS_FILE, *readout], dset.written,
                                         strict=True):
                os.replace(partial_path(path), path)
                ledger.add(path, size, sha)
            write_json(dset.folder / META_FILE, dset.meta)
    return ledger


def discard(out: Path, sets: Sequence[Any]) -> None:
    """A failed or killed dump leaves nothing behind, partial or final (the partial files are removed
    even when closing them fails: on a full disk they hold the space the user must get back)."""
    try:
        for dset in sets:
            if dset.writer is not None:
                dset.writer.discard()
    finally:
        remove_outputs(out)
