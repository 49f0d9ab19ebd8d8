"""Run every probe sentence through a trained stack and store each layer's token states on disk.

    python -m pipeline.dump experiment=default objective=mlm seed=2 [overrides]

Reads `<paths.model>/model.pt` alone (args + weights), the tokenizer in `paths.tokenizer` and
`<paths.data>/probe.txt`; writes to `paths.dump`:
- `layer_00.npy` .. `layer_LL.npy`: one (n_tokens, d_model) array of `dump.dtype` per layer (0 =
  embeddings + positions, l = output of block l), rows in probe order; `np.load(mmap_mode='r')` works;
- `tokens.tsv`: one line per row: sentence_id, position, token_id, token, sentence_length, freq_rank;
- `meta.json`: sizes, dtype, objective, seed, the checkpoint's sha256 and training summary;
- `masked/` (MLM only, `dump.mlm_masked`): the same with the input masked as in training, plus the
  columns masked (0 untouched, 1 [MASK], 2 random, 3 chosen but kept), input_id, label_id and masking:
  the probe set once per masking (`dump.mlm_maskings` independent ones), masking m's rows after
  those of 0 .. m - 1, each with its probe sentence's sentence_id;
- `stage.json`: written last; a dump with the same config and checkpoint is not made again.

`snapshot=N` dumps the weights the training kept after N steps (`<paths.model>/snapshots/step<N>.pt`,
the models of `snapshots.models`) to `<paths.snapshots>/step<N>/` instead, in the same format, its MLM
masked run with `snapshots.mlm_maskings` maskings (the first ones of the finished model's).

`objective=init` (conf/objective/init.yaml) dumps the step-0 control instead: the untrained stack
of `seed`, built by `pipeline.model.build_model` with the experiment's model settings and the
tokenizer's vocabulary, i.e. the same ModelArgs and seed as every trained model of that seed, so its
weights are what each of them started from. No trained checkpoint is read; its weights are written
to `<paths.model>/model.pt` (models/init/seed<n>/, no summary: it was never trained) for the
measurements that rerun the stack (influence). Attention is bidirectional, as in the MT encoder and
the MLM (the LM's step-0 stack has the same weights and only masks the future); no masked/ run.

Every stack sees `[bos] x_1 .. x_n [eos]` (as in training); only the states of x_1 .. x_n are kept.
Sentences longer than n_ctx - 2 tokens are skipped: that depends on the tokenizer and n_ctx only,
so every model of an experiment keeps the same sentences and the rows line up across dumps.
"""
from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.config.compose import to_plain
from pipeline.config.cli import cli
from pipeline.config.grid import snapshot_dump, snapshot_file
from pipeline.config.stages import data_config, init_config, tokenizer_config, train_config
from pipeline.config.grid import INIT
from pipeline.config.checks import check_dump_settings
from pipeline.prepare.corpus import prepare_command, read_lines
from pipeline.model.transformer import Model, ModelArgs, build_model, load_model
from pipeline.model.objectives import Specials, mask_tokens, pad, specials
from pipeline.machine.runtime import resolve_device
from pipeline.records.stage import (input_hashes, read_record, recorded_hash, require_upstream,
                                    stage_problem, write_stage_record)
from pipeline.records.provenance import stage_command
from pipeline.records.locks import one_writer
from pipeline.records.files import (STAGE_RECORD, HashingFile, config_hash, recording,
                                    remove_stale_temporaries, torch_save, write_json)
from pipeline.errors import PipelineError
from pipeline.prepare.tokenizer import FREQ_FILE, MODEL_FILE, Tokenizer, load_frequency_ranks

log = logging.getLogger("pipeline.dump")

TOKENS_FILE = "tokens.tsv"
META_FILE = "meta.json"
MASKED_DIR = "masked"
# The step-0 control is the stack as this objective kind builds it: bidirectional attention.
INIT_BUILT_AS = "mlm"
PARTIAL = ".partial"  # suffix of files being written; never read, removed or overwritten by a rerun
TOKEN_COLUMNS = ("sentence_id", "position", "token_id", "token", "sentence_length", "freq_rank")
MASKED_COLUMNS = (*TOKEN_COLUMNS, "masked", "input_id", "label_id", "masking")
DTYPES = {"float16": np.float16, "float32": np.float32}
_TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def layer_file(layer: int) -> str:
    return f"layer_{layer:02d}.npy"


def partial_path(path: Path) -> Path:
    """The name `path` is written under until the whole dump is complete (hidden, so that no glob
    for `layer_*.npy` ever picks it up)."""
    return path.with_name(f".{path.name}{PARTIAL}")


def is_init(cfg: DictConfig) -> bool:
    """True for the step-0 control (objective.kind init), which is built, not trained."""
    return str(cfg.objective.kind) == INIT


def snapshot_step(cfg: DictConfig) -> int | None:
    """The kept training step this run dumps (`snapshot`), or None for the finished model."""
    step = OmegaConf.select(cfg, "snapshot", default=None)
    return None if step is None else int(step)


def dump_config(cfg: DictConfig) -> dict:
    """What a dump depends on: the trained model's config (the step-0 control: `init_config`) and the
    dump settings (not the device); a snapshot's also its step and its maskings."""
    settings = {k: v for k, v in to_plain(cfg.dump).items() if k != "device"}
    step = snapshot_step(cfg)
    if step is None:
        return {**(init_config(cfg) if is_init(cfg) else train_config(cfg)), "dump": settings}
    settings["mlm_maskings"] = int(cfg.snapshots.mlm_maskings)
    return {**train_config(cfg), "dump": settings, "snapshot": step}


# ---------------------------------------------------------------- the probe set

class SentenceRows:
    """The rows of the kept probe sentences in the layer files: sentence i at offsets[i]:offsets[i + 1]."""

    offsets: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


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


# ---------------------------------------------------------------- files

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


def remove_outputs(folder: Path) -> None:
    """Delete what a previous (finished, stale or killed) dump left in `folder` and `folder/masked`."""
    (folder / STAGE_RECORD).unlink(missing_ok=True)  # first: nothing below may be trusted any more
    for sub in (folder, folder / MASKED_DIR):
        if not sub.is_dir():
            continue
        for path in [*sub.glob("layer_*.npy"), *sub.glob(f".*{PARTIAL}"), sub / TOKENS_FILE, sub / META_FILE]:
            path.unlink(missing_ok=True)
        remove_stale_temporaries(sub / META_FILE)  # what a writer of meta.json killed before its rename left
    if (folder / MASKED_DIR).is_dir() and not any((folder / MASKED_DIR).iterdir()):
        (folder / MASKED_DIR).rmdir()


def publish(out: Path, sets: Sequence[Any]):
    """Only now, with every file of every set complete (`set.written`: the size and sha256 of its layer
    files, then its token table), do the outputs get their final names, and each set its meta.json;
    returns the ledger of them all for the stage record."""
    with recording(out) as ledger:
        for dset in sets:
            for path, (size, sha) in zip([*dset.writer.paths, dset.folder / TOKENS_FILE], dset.written):
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


# ---------------------------------------------------------------- running the model

@dataclass
class DumpSet:
    """One set of outputs: the inputs fed for each kept sentence and where their states go."""

    folder: Path
    inputs: list[np.ndarray]  # copies x kept sentences: copy c of sentence i at c * n_sentences + i
    columns: dict[str, Sequence[Any]]
    meta: dict[str, Any]
    writer: LayerWriter | None = None
    copies: int = 1
    written: list[tuple[int, str]] | None = None  # (size, sha256) of each layer file, then the token table  # the probe set fed this many times (MLM's masked run: one copy per masking)


def write_states(model: Model, dset: DumpSet, probe: Probe, sp: Specials, batch_tokens: int,
                 device: torch.device, dtype: str, progress: bool, desc: str) -> None:
    """Fill `dset.writer` chunk by chunk of consecutive sentences (copy c of the probe set after copies
    0 .. c - 1), each chunk in batches of similar length; rows go back to their place in probe order."""
    from tqdm.auto import tqdm

    out_dtype = _TORCH_DTYPES[dtype]
    lengths, n_sentences, writer = probe.lengths, len(probe.tokens), dset.writer
    spans = chunks(probe.offsets, max(1, CHUNK_BYTES // (writer.row_bytes * len(writer.paths))))
    with tqdm(total=probe.n_tokens * dset.copies, unit="tok", desc=desc, disable=None if progress else True,
              mininterval=2.0) as bar, torch.inference_mode():
        for copy, (a, b) in ((c, span) for c in range(dset.copies) for span in spans):
            offsets = probe.offsets + copy * probe.n_tokens
            writer.begin_chunk(int(offsets[a]), int(offsets[b]))
            for idx in length_batches(lengths[a:b], batch_tokens):
                _write_batch(model, dset, idx + a, offsets, lengths, n_sentences, copy, sp, device, dtype, out_dtype)
                bar.update(int(lengths[idx + a].sum()))
            writer.end_chunk()


def _write_batch(model: Model, dset: DumpSet, idx: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                 n_sentences: int, copy: int, sp: Specials, device: torch.device, dtype: str,
                 out_dtype: torch.dtype) -> None:
    """Run one batch of sentences (copy `copy` of the inputs) and put each layer's rows in place."""
    x = pad([[sp.bos, *dset.inputs[copy * n_sentences + i].tolist(), sp.eos] for i in idx],
            sp.pad).to(device)
    _, states = model.encode(x, return_states=True)  # L + 1 tensors (B, T, d_model)
    # Cast on the device, one layer at a time, dropping each fp32 state at once: no stacked
    # copy of the whole batch, so the peak stays near what the forward pass needs anyway.
    for layer in range(len(states)):
        states[layer] = states[layer].to(out_dtype)
    if not all(bool(torch.isfinite(s).all()) for s in states):
        raise PipelineError(f"states overflow dump.dtype={dtype} in {dset.folder}: use dump.dtype=float32")
    for layer, state in enumerate(states):
        block = state.cpu().numpy()
        for r, i in enumerate(idx):
            # rows 1 .. n of the padded input: x_1 .. x_n without bos, eos and padding
            dset.writer.write(layer, int(offsets[i]), block[r, 1:1 + int(lengths[i])])
    del states, block


def _token_columns(probe: Probe, tok: Tokenizer, ranks: np.ndarray) -> dict[str, Sequence[Any]]:
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


def _load_checkpoint(cfg: DictConfig, path: Path) -> tuple[Model, dict]:
    if not path.is_file():
        raise PipelineError(f"{path} not found: train it first: python -m pipeline.train "
                            f"experiment={cfg.experiment_name} objective={cfg.objective.name} seed={cfg.seed}")
    try:
        model, ckpt = load_model(path, map_location="cpu")
    except PipelineError:  # read_checkpoint's own line: code it would run, or no checkpoint at all
        raise
    except Exception as e:  # a truncated or foreign file: name it rather than show a pickle trace
        raise PipelineError(f"{path} is not a model checkpoint of this pipeline ({type(e).__name__}: {e})") from None
    expected = config_hash(train_config(cfg))
    if ckpt.get("config_hash") not in (None, expected):
        raise PipelineError(f"{path} was trained with another config than the one given: train it first "
                            f"with the same overrides (python -m pipeline.train ...)")
    retrain = stage_command("pipeline.train")
    tokenizer = Path(str(cfg.paths.tokenizer)) / MODEL_FILE
    trained_with, given = ckpt.get("tokenizer_sha256"), recorded_hash(tokenizer)
    if trained_with is not None and trained_with != given:
        raise PipelineError(f"{path} was trained with the tokenizer of sha256 {trained_with[:12]}.., but {tokenizer} "
                            f"is {str(given)[:12]}..: it was remade since; retrain the model with `{retrain}`")
    data = Path(str(cfg.paths.data))
    split, now = ckpt.get("data_digest"), (read_record(data) or {}).get("digest")
    if split is not None and split != now:
        raise PipelineError(f"{path} was trained on another data split than the one in {data} (whose probe set "
                            f"this dump would read): it was remade since; retrain the model with `{retrain}`")
    return model, ckpt


def initial_model(cfg: DictConfig, tok: Tokenizer) -> Model:
    """The untrained model of `cfg.seed` whose stack every objective of that seed starts from: the
    ModelArgs train.py builds (the tokenizer's vocabulary and padding id, then cfg.model), built as
    INIT_BUILT_AS (bidirectional); on the CPU, so that the weights do not depend on the device."""
    try:
        args = ModelArgs(d_vocab=tok.vocab_size, pad_id=tok.pad_id, **to_plain(cfg.model))
    except (TypeError, ValueError) as e:
        raise PipelineError(f"settings model.*: {e}") from None
    return build_model(INIT_BUILT_AS, args, int(cfg.seed)).eval()


def _save_initial(cfg: DictConfig, tok: Tokenizer, path: Path) -> tuple[Model, dict]:
    """Build the step-0 model of cfg.seed and write it to `path` as train.py writes a checkpoint,
    with no summary (it was never trained)."""
    model = initial_model(cfg, tok)
    tokenizer = Path(str(cfg.paths.tokenizer)) / MODEL_FILE
    ckpt = {"model": model.checkpoint_args(), "state_dict": model.state_dict(),
            "config": OmegaConf.to_container(cfg, resolve=True), "config_hash": config_hash(init_config(cfg)),
            "tokenizer": str(cfg.paths.tokenizer), "tokenizer_sha256": recorded_hash(tokenizer),
            "summary": None, "step": 0}
    (path.parent / STAGE_RECORD).unlink(missing_ok=True)
    with recording(path.parent) as ledger:
        torch_save(ckpt, path)
    write_stage_record(path.parent, "init", init_config(cfg), ledger=ledger, root=cfg.paths.results, inputs=input_hashes([tokenizer]),
                       command=stage_command("pipeline.dump"))
    return model, ckpt


def dump(cfg: DictConfig) -> Path:
    """Dump the layer states of `cfg.objective` / `cfg.seed` over the probe set into cfg.paths.dump
    (a snapshot's: its own folder), one dump at a time per folder."""
    check_dump_settings(cfg)
    step = snapshot_step(cfg)
    with one_writer(cfg.paths.dump if step is None or is_init(cfg) else snapshot_dump(cfg, step)):
        return _dump(cfg)


def _dump(cfg: DictConfig) -> Path:
    """`dump` once it holds its folder's lock (its settings checked)."""
    step = snapshot_step(cfg)
    initial = is_init(cfg)
    model_folder = Path(str(cfg.paths.model))
    out, ckpt_path = Path(str(cfg.paths.dump)), model_folder / "model.pt"
    if step is not None:
        if initial:
            raise PipelineError(f"setting snapshot={step}: the step-0 control ({INIT}) has no snapshots; "
                                "its one state is step 0 of every objective")
        out, ckpt_path = snapshot_dump(cfg, step), snapshot_file(cfg, step)
    stage_cfg = dump_config(cfg)
    # The dump reads what other stages made; made with other settings or damaged, they are theirs to
    # rebuild (the message names the setting or the file, and the command).
    for folder, config in ((Path(str(cfg.paths.data)), data_config(cfg)),
                           (Path(str(cfg.paths.tokenizer)), tokenizer_config(cfg))):
        if not require_upstream(folder, config, prepare_command()):
            raise PipelineError(f"{folder} holds no finished stage: run `{prepare_command()}` first")
    if not initial and ckpt_path.is_file():
        require_upstream(model_folder, train_config(cfg), stage_command("pipeline.train"), reader="pipeline.dump")
    if step is not None and not ckpt_path.is_file():
        summary = (read_record(model_folder) or {}).get("summary") or {}
        raise PipelineError(
            f"{ckpt_path} not found: the training of {cfg.objective.name} seed {cfg.seed} kept no snapshot of step "
            f"{step} (kept: {summary.get('snapshots', 'none recorded')}; only models of snapshots.models keep "
            f"the steps of snapshots.keep they reach, model.pt is at step {summary.get('best_step', '?')})")
    problem = stage_problem(out, stage_cfg)
    # the step-0 checkpoint is the dump's own output (influence reads it): it must be intact too
    if problem is None and initial:
        problem = stage_problem(model_folder, init_config(cfg))
    if problem is None:
        log.info("%s is already dumped with this config and checkpoint; nothing to do", out)
        return out
    if read_record(out) is not None:
        log.info("dumping again: %s", problem)

    batch_tokens, dtype = int(cfg.dump.batch_tokens), str(cfg.dump.dtype)
    mask_seed, maskings = int(cfg.dump.mask_seed), int(stage_cfg["dump"]["mlm_maskings"])
    device = resolve_device(str(cfg.dump.device), "dump.device")
    tok = Tokenizer.load(cfg.paths.tokenizer)
    model, ckpt = _save_initial(cfg, tok, ckpt_path) if initial else _load_checkpoint(cfg, ckpt_path)
    model_kind = INIT if initial else model.kind
    checkpoint_sha = recorded_hash(ckpt_path)
    model.to(device)
    if tok.vocab_size != model.args.d_vocab:
        raise PipelineError(f"{ckpt_path} has a vocabulary of {model.args.d_vocab}, the tokenizer in "
                            f"{cfg.paths.tokenizer} one of {tok.vocab_size}: they were not made together")
    sp = specials(tok)
    ranks = load_frequency_ranks(cfg.paths.tokenizer)
    n_ctx, n_layers, d_model = model.args.n_ctx, model.args.n_layers, model.args.d_model
    probe_path = Path(str(cfg.paths.data)) / "probe.txt"
    probe = select_probe(read_lines(probe_path), tok, n_ctx)
    log.info("%s: %d of %d probe sentences, %d tokens; skipped %d longer than n_ctx - 2 = %d tokens "
             "and %d empty", probe_path, len(probe.tokens), probe.n_lines, probe.n_tokens, probe.n_too_long,
             n_ctx - 2, probe.n_empty)
    if probe.n_tokens == 0:
        raise PipelineError(f"{probe_path}: no sentence with 1 to {n_ctx - 2} tokens to dump")

    train_cfg = ckpt.get("config") or {}
    objective = train_cfg.get("objective") or to_plain(cfg.objective)
    meta = {"n_tokens": probe.n_tokens, "n_sentences": len(probe.tokens), "n_probe_lines": probe.n_lines,
            "n_skipped_too_long": probe.n_too_long, "n_skipped_empty": probe.n_empty,
            "max_sentence_length": n_ctx - 2, "n_layers": n_layers, "n_layer_files": n_layers + 1,
            "d_model": d_model, "dtype": dtype, "objective": objective.get("name", cfg.objective.name),
            "kind": model_kind, "seed": int(train_cfg.get("seed", cfg.seed)), "checkpoint": str(ckpt_path),
            "checkpoint_sha256": checkpoint_sha, "config_hash": ckpt.get("config_hash"),
            "summary": ckpt.get("summary"), "step": ckpt.get("step"), "input": "[bos] x_1 .. x_n [eos]; rows are x_1 .. x_n",
            "masked": False, "columns": list(TOKEN_COLUMNS)}
    columns = _token_columns(probe, tok, ranks)
    sets = [DumpSet(out, probe.tokens, columns, meta)]
    if model_kind == "mlm" and bool(cfg.dump.mlm_masked):
        # `maskings` independent maskings (seeds mask_seed, mask_seed + 1, ..), one copy of the probe
        # set each, so that the masked targets have enough rows; sentence_id stays the probe
        # sentence's, so every resample over sentences draws all of its maskings together
        masks = [mask_probe(probe, sp, int(mask_seed) + m, objective) for m in range(int(maskings))]
        inputs = [sentence for sentence_inputs, _ in masks for sentence in sentence_inputs]
        kind = np.concatenate([k for _, k in masks])
        masked_columns = {**{name: np.tile(np.asarray(col, dtype=object if name == "token" else None), len(masks))
                             for name, col in columns.items()},
                          "masked": kind, "input_id": np.concatenate(inputs),
                          "label_id": np.tile(columns["token_id"], len(masks)),
                          "masking": np.repeat(np.arange(len(masks)), probe.n_tokens)}
        masked_meta = {**meta, "n_tokens": probe.n_tokens * len(masks), "masked": True,
                       "columns": list(MASKED_COLUMNS), "mask_seed": int(mask_seed), "maskings": len(masks),
                       "mask_prob": objective.get("mask_prob"), "mask_token_prob": objective.get("mask_token_prob"),
                       "random_token_prob": objective.get("random_token_prob"),
                       "chosen_share": float((kind > 0).mean())}
        sets.append(DumpSet(out / MASKED_DIR, inputs, masked_columns, masked_meta, copies=len(masks)))

    inputs = input_hashes([ckpt_path, Path(str(cfg.paths.tokenizer)) / MODEL_FILE,
                           Path(str(cfg.paths.tokenizer)) / FREQ_FILE, probe_path])
    remove_outputs(out)
    log.info("%s seed %d (%s) on %s: batches of at most %d tokens", meta["objective"], meta["seed"], model_kind,
             device, batch_tokens)
    progress = bool(OmegaConf.select(cfg, "train.progress", default=True))
    try:
        for dset in sets:
            dset.writer = LayerWriter(dset.folder, n_layers + 1, probe.n_tokens * dset.copies, d_model, DTYPES[dtype])
            table = write_token_table(partial_path(dset.folder / TOKENS_FILE), dset.columns)
            write_states(model, dset, probe, sp, batch_tokens, device, dtype, progress,
                         f"{meta['objective']} seed {meta['seed']}{' masked' if dset.meta['masked'] else ''}")
            dset.written = [*dset.writer.close(), table]
        ledger = publish(out, sets)
    except BaseException:
        discard(out, sets)
        raise
    write_stage_record(out, "dump", stage_cfg, ledger=ledger, root=cfg.paths.results, inputs=inputs, command=stage_command("pipeline.dump"),
                       checkpoint_sha256=checkpoint_sha, n_tokens=probe.n_tokens, n_sentences=len(probe.tokens))
    log.info("wrote %d layers x %d tokens x %d to %s%s", n_layers + 1, probe.n_tokens, d_model, out,
             " (+ masked/)" if len(sets) > 1 else "")
    return out


main = cli(dump)

if __name__ == "__main__":
    main()
