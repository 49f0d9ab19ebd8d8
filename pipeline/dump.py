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

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .config import INIT, cli, init_config, is_int, positive_int, require, to_plain, train_config
from .corpus import read_lines
from .model import Model, ModelArgs, build_model, load_model
from .objectives import Specials, mask_tokens, pad, specials
from .runtime import resolve_device
from .store import (STAGE_RECORD, PipelineError, config_hash, read_json, sha256_file, stage_is_current,
                    torch_save, write_json, write_stage_record)
from .tokenizer import Tokenizer, load_frequency_ranks

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


def dump_config(cfg: DictConfig) -> dict:
    """What a dump depends on: the trained model's config (the step-0 control: `init_config`) and the
    dump settings (not the device)."""
    settings = {k: v for k, v in to_plain(cfg.dump).items() if k != "device"}
    return {**(init_config(cfg) if is_init(cfg) else train_config(cfg)), "dump": settings}


# ---------------------------------------------------------------- the probe set

@dataclass(frozen=True)
class Probe:
    """The probe sentences that fit the model, as token ids, with their rows in the layer files."""

    sentence_ids: np.ndarray  # (k,) 0-based line numbers in probe.txt of the kept sentences
    tokens: list[np.ndarray]  # k arrays of token ids (no bos/eos)
    offsets: np.ndarray  # (k + 1,) first row of each kept sentence; offsets[-1] = n_tokens
    n_lines: int
    n_too_long: int
    n_empty: int

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


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
    """The layer files of one dump, preallocated under partial names and filled row block by row block.

    Rows are written with `os.pwrite` rather than through a memory map: the dirty pages of a mapped
    file count towards the process's resident memory until unmapped, so filling a memmap would make
    peak RSS grow with the probe set. This way at most one batch of states is ever in memory.
    """

    def __init__(self, folder: Path, n_layers: int, n_rows: int, d_model: int, dtype: np.dtype) -> None:
        self.paths = [folder / layer_file(l) for l in range(n_layers)]
        self.dtype, self.row_bytes = np.dtype(dtype), np.dtype(dtype).itemsize * d_model
        self.fds: list[int] = []
        self.data_offset = 0
        folder.mkdir(parents=True, exist_ok=True)
        for path in self.paths:
            tmp = partial_path(path)
            # open_memmap writes the .npy header and sizes the (sparse) file; its map is dropped at once.
            m = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=(n_rows, d_model))
            self.data_offset = int(m.offset)
            del m
            self.fds.append(os.open(tmp, os.O_RDWR))

    def write(self, layer: int, row: int, values: np.ndarray) -> None:
        """Write `values` (rows x d_model, of this writer's dtype) starting at `row` of `layer`."""
        data = memoryview(np.ascontiguousarray(values, dtype=self.dtype)).cast("B")
        pos = self.data_offset + row * self.row_bytes
        while data:  # pwrite may write less than asked (e.g. interrupted); write the rest
            done = os.pwrite(self.fds[layer], data, pos)
            data, pos = data[done:], pos + done

    def close(self) -> None:
        """Flush to disk: a renamed file must hold its data even if the machine stops right after."""
        for fd in self.fds:
            os.fsync(fd)
            os.close(fd)
        self.fds = []

    def discard(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def write_token_table(path: Path, columns: dict[str, Sequence[Any]]) -> None:
    """A TSV with a header; no escaping: a value (e.g. a sentencepiece piece) holds no tab or newline."""
    names = list(columns)
    values = [c.tolist() if isinstance(c, np.ndarray) else c for c in columns.values()]  # python ints print faster
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(names) + "\n")
        for row in zip(*values):
            f.write("\t".join(map(str, row)) + "\n")


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


def _remove_outputs(folder: Path) -> None:
    """Delete what a previous (finished, stale or killed) dump left in `folder` and `folder/masked`."""
    (folder / STAGE_RECORD).unlink(missing_ok=True)  # first: nothing below may be trusted any more
    for sub in (folder, folder / MASKED_DIR):
        if not sub.is_dir():
            continue
        for path in [*sub.glob("layer_*.npy"), *sub.glob(f".*{PARTIAL}"), sub / TOKENS_FILE, sub / META_FILE]:
            path.unlink(missing_ok=True)
    if (folder / MASKED_DIR).is_dir() and not any((folder / MASKED_DIR).iterdir()):
        (folder / MASKED_DIR).rmdir()


# ---------------------------------------------------------------- running the model

@dataclass
class DumpSet:
    """One set of outputs: the inputs fed for each kept sentence and where their states go."""

    folder: Path
    inputs: list[np.ndarray]  # copies x kept sentences: copy c of sentence i at c * n_sentences + i
    columns: dict[str, Sequence[Any]]
    meta: dict[str, Any]
    writer: LayerWriter | None = None
    copies: int = 1  # the probe set fed this many times (MLM's masked run: one copy per masking)


def write_states(model: Model, dset: DumpSet, probe: Probe, sp: Specials, batches: list[np.ndarray],
                 device: torch.device, dtype: str, progress: bool, desc: str) -> None:
    """Fill `dset.writer` batch by batch; rows go back to their place in probe order (copy c of the
    probe set after copies 0 .. c - 1)."""
    from tqdm.auto import tqdm

    out_dtype = _TORCH_DTYPES[dtype]
    lengths, n_sentences = probe.lengths, len(probe.tokens)
    with tqdm(total=probe.n_tokens * dset.copies, unit="tok", desc=desc, disable=None if progress else True,
              mininterval=2.0) as bar, torch.inference_mode():
        for copy, idx in ((c, idx) for c in range(dset.copies) for idx in batches):
            offsets = probe.offsets + copy * probe.n_tokens
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
            bar.update(int(lengths[idx].sum()))


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
    except Exception as e:  # a truncated or foreign file: name it rather than show a pickle trace
        raise PipelineError(f"{path} is not a model checkpoint of this pipeline ({type(e).__name__}: {e})") from None
    expected = config_hash(train_config(cfg))
    if ckpt.get("config_hash") not in (None, expected):
        raise PipelineError(f"{path} was trained with another config than the one given: train it first "
                            f"with the same overrides (python -m pipeline.train ...)")
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
    ckpt = {"model": model.checkpoint_args(), "state_dict": model.state_dict(),
            "config": OmegaConf.to_container(cfg, resolve=True), "config_hash": config_hash(init_config(cfg)),
            "tokenizer": str(cfg.paths.tokenizer), "summary": None, "step": 0}
    torch_save(ckpt, path)
    return model, ckpt


def dump(cfg: DictConfig) -> Path:
    """Dump the layer states of `cfg.objective` / `cfg.seed` over the probe set into cfg.paths.dump."""
    out = Path(str(cfg.paths.dump))
    ckpt_path = Path(str(cfg.paths.model)) / "model.pt"
    stage_cfg = dump_config(cfg)
    initial = is_init(cfg)
    if stage_is_current(out, stage_cfg) and (out / META_FILE).is_file():
        done_with = read_json(out / STAGE_RECORD).get("checkpoint_sha256")
        # a trained model may have been cleaned away after its dump; the step-0 checkpoint is the
        # dump's own output, which influence reads, so it must be there
        same_checkpoint = ckpt_path.is_file() and done_with == sha256_file(ckpt_path)
        if same_checkpoint or (not ckpt_path.is_file() and not initial):
            log.info("%s is already dumped with this config and checkpoint; nothing to do", out)
            return out

    batch_tokens = require(cfg, "dump.batch_tokens", positive_int, "must be a positive integer")
    dtype = require(cfg, "dump.dtype", lambda v: v in DTYPES, f"expected one of {sorted(DTYPES)}")
    mask_seed = require(cfg, "dump.mask_seed", is_int, "must be an integer")
    maskings = require(cfg, "dump.mlm_maskings", positive_int, "must be a positive integer")
    device = resolve_device(str(cfg.dump.device), "dump.device")
    tok = Tokenizer.load(cfg.paths.tokenizer)
    model, ckpt = _save_initial(cfg, tok, ckpt_path) if initial else _load_checkpoint(cfg, ckpt_path)
    model_kind = INIT if initial else model.kind
    checkpoint_sha = sha256_file(ckpt_path)
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
            "summary": ckpt.get("summary"), "input": "[bos] x_1 .. x_n [eos]; rows are x_1 .. x_n",
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

    _remove_outputs(out)
    batches = length_batches(probe.lengths, int(batch_tokens))
    log.info("%s seed %d (%s) on %s: %d batches of at most %d tokens", meta["objective"], meta["seed"], model_kind,
             device, len(batches), batch_tokens)
    progress = bool(OmegaConf.select(cfg, "train.progress", default=True))
    try:
        for dset in sets:
            dset.writer = LayerWriter(dset.folder, n_layers + 1, probe.n_tokens * dset.copies, d_model, DTYPES[dtype])
            write_token_table(partial_path(dset.folder / TOKENS_FILE), dset.columns)
            write_states(model, dset, probe, sp, batches, device, dtype, progress,
                         f"{meta['objective']} seed {meta['seed']}{' masked' if dset.meta['masked'] else ''}")
            dset.writer.close()
        # Only now, with every file complete, do the outputs get their final names.
        for dset in sets:
            for path in [*dset.writer.paths, dset.folder / TOKENS_FILE]:
                os.replace(partial_path(path), path)
            write_json(dset.folder / META_FILE, dset.meta)
    except BaseException:
        for dset in sets:
            if dset.writer is not None:
                dset.writer.discard()
        _remove_outputs(out)  # a killed dump leaves nothing behind, partial or final
        raise
    write_stage_record(out, "dump", stage_cfg, checkpoint_sha256=checkpoint_sha, n_tokens=probe.n_tokens,
                       n_sentences=len(probe.tokens))
    log.info("wrote %d layers x %d tokens x %d to %s%s", n_layers + 1, probe.n_tokens, d_model, out,
             " (+ masked/)" if len(sets) > 1 else "")
    return out


main = cli(dump)

if __name__ == "__main__":
    main()
