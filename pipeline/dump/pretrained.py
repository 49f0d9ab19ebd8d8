"""Dump the layer states of a pretrained Hugging Face model over the probe sentences, in the format of
`pipeline.dump`, so that every analysis reads it as it reads our own models' dumps.

    python -m pipeline.dump.pretrained experiment=pretrained objective=mlm label=bert seed=0

`label` is the model's label in `pretrained.models` (pipeline/model/hf.py) and `objective` its
role (mlm | lm | mt: the objective config whose masking probabilities the MLM's masked run uses);
seed is 0. Reads `<paths.data>/probe.txt` and, for the frequency ranks, `<paths.data>/train.src` (the
training source side), both tokenised with the model's own tokenizer; writes to
`dumps/<label>/seed0/`:
- `layer_00.npy` .. `layer_LL.npy`: `output_hidden_states` of the analysed stack (the base encoder of
  an mlm, the decoder of an lm, the encoder of an mt model), layer 0 the embeddings, as
  (n_tokens, d_model) arrays of `dump.dtype`; the model runs in its own dtype
  (`pretrained.models.<label>.dtype`, else its config's) on `dump.device`;
- `tokens.tsv`: the columns of pipeline.dump (sentence_id, position, token_id, token, sentence_length,
  freq_rank) in the model's vocabulary, plus `word`: which whitespace-separated word of the probe line
  (0-based) the subword belongs to, -1 for the rows of a sentence whose subwords could not be mapped
  to its words; the model's special tokens ([CLS], </s>, ...) are fed but not kept as rows;
- `masked/` (role mlm, `dump.mlm_masked`): `dump.mlm_maskings` maskings as in pipeline.dump, with the
  model's own mask token, random replacements drawn from its non-special vocabulary, and the column
  `predicted_id`: the MLM head's top prediction at each row (meta.json: its accuracy on the rows
  replaced by the mask token, a check that the weights loaded as trained);
- `readout.npz` (lm; mlm: in masked/): the logit lens (pipeline.dump.readout), each layer through the
  model's final norm and head, checked on the first batch against the model's own logits;
- `meta.json` (+ `pretrained`: name, role, source folder, revision, weight files with sha256) and
  `stage.json`, written last. An lm's meta also holds its head's next-token accuracy on the probe.

Sentences whose input (special tokens included) exceeds the model's position table are skipped and
counted in meta.json; different tokenizers keep different sentences, which the word-level comparisons
(analysis/io/words.py) align by (sentence, word).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.config import pretrained
from pipeline.config.checks import check_dump_settings
from pipeline.config.cli import cli
from pipeline.config.layout import snapshot_dump
from pipeline.config.stages import data_config, pretrained_dump_config, snapshot_step
from pipeline.dump.format import (
    DTYPES,
    HF_COLUMNS,
    HF_MASKED_COLUMNS,
    MASKED_DIR,
    TOKENS_FILE,
    partial_path,
)
from pipeline.dump.pretrained_probe import FREQ_SOURCE, HFProbe, mask_probe, select_probe, source_ranks, token_string
from pipeline.dump.readout import NoReadout, Readout, attach, hf_lens, not_measured
from pipeline.dump.tuned_lens import FIT_SOURCE, Translators, fit_lines, tuned
from pipeline.dump.writer import (
    CHUNK_BYTES,
    LayerWriter,
    chunks,
    discard,
    length_batches,
    publish,
    remove_outputs,
    write_token_table,
)
from pipeline.errors import PipelineError
from pipeline.machine.runtime import resolve_device
from pipeline.model import hf
from pipeline.prepare.corpus import prepare_command, read_lines
from pipeline.records.locks import one_writer
from pipeline.records.provenance import stage_command
from pipeline.records.stage import input_hashes, read_record, require_upstream, stage_problem, write_stage_record

log = logging.getLogger("pipeline.hf_dump")

_STORED = {"float16": torch.float16, "float32": torch.float32}


# ---------------------------------------------------------------- running the model

@dataclass
class HFSet:
    """One set of outputs: the inputs fed (copy c of sentence i at c * k + i) and where they go."""

    folder: Path
    inputs: list[np.ndarray]
    columns: dict[str, Sequence[Any]]
    meta: dict[str, Any]
    copies: int = 1
    predict: bool = False            # keep the head's top prediction of every row (masked run)
    writer: LayerWriter | None = None
    written: list[tuple[int, str]] | None = None
    predicted: np.ndarray | None = None
    readout: Readout | None = None   # the logit lens of the rows with a target (pipeline.dump.readout)


def forward(model, stack, role: str, ids: torch.Tensor, attention: torch.Tensor, logits: bool):
    """(hidden states of layers 0..L of the analysed stack, the head's logits or None)."""
    if logits and role in ("mlm", "lm"):
        out = model(input_ids=ids, attention_mask=attention, output_hidden_states=True)
        return out.hidden_states, out.logits
    out = stack(input_ids=ids, attention_mask=attention, output_hidden_states=True)
    return out.hidden_states, None


def write_states(model, stack, role: str, dset: HFSet, probe: HFProbe, pad_id: int, batch_tokens: int,
                 device: torch.device, dtype: str, progress: bool, desc: str,
                 next_token: list | None = None) -> None:
    """Fill `dset.writer` chunk by chunk, each chunk in batches of similar input length (right
    padded, the padding masked out); rows go back to probe order. `next_token` (lm): collects
    (hits, count) of the head's next-token prediction."""
    from tqdm.auto import tqdm

    k, writer = len(probe.inputs), dset.writer
    input_len = np.asarray([len(x) for x in probe.inputs])
    spans = chunks(probe.offsets, max(1, CHUNK_BYTES // (writer.row_bytes * len(writer.paths))))
    predicted = np.full(probe.n_tokens * dset.copies, -1, dtype=np.int64) if dset.predict else None
    want_logits = dset.predict or next_token is not None or dset.readout is not None
    checked = False
    with tqdm(total=probe.n_tokens * dset.copies, unit="tok", desc=desc, disable=None if progress else True,
              mininterval=2.0) as bar, torch.inference_mode():
        for copy, (a, b) in ((c, span) for c in range(dset.copies) for span in spans):
            base = copy * probe.n_tokens
            writer.begin_chunk(int(probe.offsets[a] + base), int(probe.offsets[b] + base))
            for idx in length_batches(input_len[a:b] - 2, batch_tokens):
                idx = idx + a
                T = int(input_len[idx].max())
                ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
                attention = torch.zeros((len(idx), T), dtype=torch.long)
                for r, i in enumerate(idx):
                    x = dset.inputs[copy * k + i]
                    ids[r, :len(x)] = torch.from_numpy(x)
                    attention[r, :len(x)] = 1
                states, logits = forward(model, stack, role, ids.to(device), attention.to(device), want_logits)
                if dset.readout is not None:
                    checked = _readout(dset, states, logits, idx, probe, base, checked)
                stored = [s.to(_STORED[dtype]) for s in states]
                if not all(bool(torch.isfinite(s).all()) for s in stored):
                    raise PipelineError(f"states overflow dump.dtype={dtype} in {dset.folder}: use dump.dtype=float32")
                blocks = [s.cpu().numpy() for s in stored]
                top = logits.argmax(-1).cpu().numpy() if logits is not None else None
                for r, i in enumerate(idx):
                    row, kept = int(probe.offsets[i]) + base, probe.kept[i]
                    for layer, block in enumerate(blocks):
                        writer.write(layer, row, block[r, kept])
                    if predicted is not None:
                        predicted[row:row + len(kept)] = top[r, kept]
                    if next_token is not None:  # logits at row t predict the token of row t + 1
                        tokens = dset.inputs[i][kept]
                        hits = top[r, kept[:-1]] == tokens[1:]
                        next_token[0] += int(hits.sum())
                        next_token[1] += len(hits)
                bar.update(int(probe.lengths[idx].sum()))
                del states, stored, blocks, logits
            writer.end_chunk()
    dset.predicted = predicted


def fit_tuned_lens(cfg: DictConfig, model, stack, role: str, tokenizer, sets, device, max_length: int,
                   pad_id: int, n_layers: int, d_model: int) -> None:
    """`dump.tuned_lens` training sentences through the model, the tuned lens fitted on their states and
    given to every set's readout (pipeline.dump.tuned_lens); nothing when 0 or no set has a readout."""
    n = int(cfg.dump.tuned_lens)
    readouts = [d for d in sets if d.readout is not None]
    if not n or not readouts:
        return
    lines = fit_lines(n, read_lines(Path(str(cfg.paths.data)) / FIT_SOURCE), seed=0)
    fit = select_probe(lines, tokenizer, max_length)
    translators = Translators(n_layers, d_model)
    input_len = np.asarray([len(x) for x in fit.inputs])
    with torch.inference_mode():
        for idx in length_batches(input_len, int(OmegaConf.select(cfg, "pretrained.batch_tokens", default=2048))):
            ids = torch.full((len(idx), int(input_len[idx].max())), pad_id, dtype=torch.long)
            attention = torch.zeros_like(ids)
            for r, i in enumerate(idx):
                ids[r, :len(fit.inputs[i])] = torch.from_numpy(fit.inputs[i])
                attention[r, :len(fit.inputs[i])] = 1
            states, _ = forward(model, stack, role, ids.to(device), attention.to(device), False)
            translators.add([h.cpu() for h in states], np.repeat(np.arange(len(idx)), fit.lengths[idx]),
                            np.concatenate([fit.kept[i] for i in idx]))
    lens = tuned(hf_lens(model, n_layers), translators.solve(), n_layers, device)
    for d in readouts:
        d.readout.tuned = lens
        d.meta["readout"]["tuned_lens"] = {"sentences": len(lines), "tokens": translators.n, "source": FIT_SOURCE}


def _readout(dset: HFSet, states, logits, idx: np.ndarray, probe: HFProbe, base: int, checked: bool) -> bool:
    """Read the batch's kept rows through the lens; on the first batch, check first that its last layer
    gives the model's own logits (else the set keeps no readout, and its meta says why)."""
    n = probe.lengths[idx]
    batch = np.repeat(np.arange(len(idx)), n)
    positions = np.concatenate([probe.kept[i] for i in idx])
    rows = np.repeat(probe.offsets[idx] + base, n) + np.concatenate([np.arange(k) for k in n])
    if not checked:
        try:
            dset.readout.check(logits, states, batch, positions, f"{dset.folder}")
        except NoReadout as e:
            log.warning("no readout in %s: %s", dset.folder, e)
            not_measured(dset, str(e))
            return True
    dset.readout.add(states, batch, positions, rows)
    return True


def _columns(probe: HFProbe, tokenizer, ranks: np.ndarray) -> dict[str, Sequence[Any]]:
    flat = np.concatenate([probe.tokens(i) for i in range(len(probe.inputs))])
    lengths = probe.lengths
    names: dict[int, str] = {}
    for t in np.unique(flat):
        names[int(t)] = token_string(tokenizer, int(t))
    return {"sentence_id": np.repeat(probe.sentence_ids, lengths),
            "position": np.concatenate([np.arange(n) for n in lengths]),
            "token_id": flat,
            "token": [names[int(t)] for t in flat],
            "sentence_length": np.repeat(lengths, lengths),
            "freq_rank": ranks[flat],
            "word": np.concatenate(probe.words)}


def vocabulary_size(model, tokenizer) -> int:
    """Ids run over the larger of the tokenizer's (added tokens included) and the embedding table."""
    return max(len(tokenizer), int(model.get_input_embeddings().weight.shape[0]))


def dump(cfg: DictConfig) -> Path:
    """Dump pretrained model `cfg.label` over the probe set into cfg.paths.dump (`snapshot=N`: its
    revision of grid step N into <paths.snapshots>/step<N>/), one dump at a time per folder."""
    check_dump_settings(cfg)
    step = snapshot_step(cfg)
    with one_writer(cfg.paths.dump if step is None else snapshot_dump(cfg, step)):
        return _dump(cfg)


def _dump(cfg: DictConfig) -> Path:
    label, step = str(cfg.label), snapshot_step(cfg)
    spec = pretrained.spec_of(cfg, label).of(int(cfg.seed), step)  # its seed's repository, the revision of `step`
    batch_tokens = OmegaConf.select(cfg, "pretrained.batch_tokens", default=2048)
    if not isinstance(batch_tokens, int) or isinstance(batch_tokens, bool) or batch_tokens < 1:
        raise PipelineError(f"setting pretrained.batch_tokens={batch_tokens!r}: expected a positive integer")
    data = Path(str(cfg.paths.data))
    if not require_upstream(data, data_config(cfg), prepare_command()):
        raise PipelineError(f"{data} holds no finished stage: run `{prepare_command()}` first")
    out = Path(str(cfg.paths.dump)) if step is None else snapshot_dump(cfg, step)
    # the role as stated, or as the last dump of this folder recorded it: checked before the cache is read
    known = spec.role or (getattr(read_record(out), "extra", {}).get("pretrained") or {}).get("role")
    if known is not None:
        _check_role(cfg, label, known)
    stage_cfg = pretrained_dump_config(cfg, label)
    problem = stage_problem(out, stage_cfg)  # before the cache is read: an evicted revision's dump stays done
    if problem is None:
        log.info("%s is already dumped with this config and these weights; nothing to do", out)
        return out
    folder, fetched = hf.fetch(spec, cfg)  # a model not at hand stops here, before anything is removed
    evict = fetched and bool(OmegaConf.select(cfg, "pretrained.evict", default=False))
    config = hf.read_config(folder)
    role = hf.choose_role(spec, config)
    _check_role(cfg, label, role)
    probe_path, source_path = data / "probe.txt", data / FREQ_SOURCE
    weights = hf.weight_files(folder)
    if read_record(out) is not None:
        log.info("dumping again: %s", problem)
    # the weights' sha256 once; files this run fetched and evicts are no inputs (they will be gone): the
    # record keeps their sha256 (`pretrained.weights`) to check them against later
    hashed = input_hashes([probe_path, source_path, folder / "config.json", *weights])
    inputs = {key: value for key, value in hashed.items() if not evict or key in (str(probe_path), str(source_path))}

    dtype = str(cfg.dump.dtype)
    device = resolve_device(str(cfg.dump.device), "dump.device")
    run_dtype = hf.torch_dtype(spec, config)
    model, stack, tokenizer = hf.load(spec, folder, role, device, run_dtype)
    vocab = vocabulary_size(model, tokenizer)
    max_length = hf.max_input_length(model, tokenizer)
    probe = select_probe(read_lines(probe_path), tokenizer, max_length)
    log.info("%s (%s, %s): %d of %d probe sentences, %d tokens; skipped %d longer than %d input tokens and %d "
             "empty; %d not mapped to words", label, spec.name, role, len(probe.inputs), probe.n_lines,
             probe.n_tokens, probe.n_too_long, max_length, probe.n_empty, len(probe.unaligned))
    if probe.n_tokens == 0:
        raise PipelineError(f"{probe_path}: no sentence fits {spec.name}'s {max_length} input tokens")
    ranks = source_ranks(tokenizer, read_lines(source_path), vocab)
    widths = hidden_sizes(stack, tokenizer, device)
    if len(set(widths)) != 1:
        raise PipelineError(f"{spec.name}: hidden states of different widths {widths} cannot be dumped as layers")
    n_layers, d_model = len(widths) - 1, widths[0]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    record = hf.describe(spec, folder, role, config, hashed)
    meta = {"n_tokens": probe.n_tokens, "n_sentences": len(probe.inputs), "n_probe_lines": probe.n_lines,
            "n_skipped_too_long": probe.n_too_long, "n_skipped_empty": probe.n_empty,
            "max_input_length": max_length, "n_layers": n_layers, "n_layer_files": n_layers + 1, "d_model": d_model,
            "dtype": dtype, "model_dtype": str(run_dtype).replace("torch.", ""), "objective": label, "kind": role,
            "seed": int(cfg.seed), "pretrained": record, "checkpoint": str(folder),
            "checkpoint_sha256": ",".join(w["sha256"] for w in record["weights"]), "summary": None,
            "step": pretrained.spec_of(cfg, label).final_step if step is None else step,
            "input": "the tokenizer's own input (special tokens included); rows are its non-special tokens",
            "masked": False, "columns": list(HF_COLUMNS), "vocab_size": vocab,
            "unaligned_sentences": len(probe.unaligned), "freq_source": FREQ_SOURCE}
    columns = _columns(probe, tokenizer, ranks)
    sets = [HFSet(out, probe.inputs, columns, meta)]
    if role == "mlm" and bool(cfg.dump.mlm_masked):
        masking, seed0, maskings = stage_cfg["masking"], int(cfg.dump.mask_seed), int(stage_cfg["dump"]["mlm_maskings"])
        masks = [mask_probe(probe, tokenizer, vocab, seed0 + m, masking) for m in range(maskings)]
        fed = [sentence for sentence_inputs, _ in masks for sentence in sentence_inputs]
        kind = np.concatenate([k for _, k in masks])
        input_ids = np.concatenate([np.concatenate([ids[probe.kept[i]] for i, ids in enumerate(m)]) for m, _ in masks])
        masked_columns = {**{name: np.tile(np.asarray(col, dtype=object if name == "token" else None), maskings)
                             for name, col in columns.items()},
                          "masked": kind, "input_id": input_ids, "label_id": np.tile(columns["token_id"], maskings),
                          "masking": np.repeat(np.arange(maskings), probe.n_tokens)}
        masked_meta = {**meta, "n_tokens": probe.n_tokens * maskings, "masked": True,
                       "columns": list(HF_MASKED_COLUMNS), "mask_seed": seed0, "maskings": maskings, **masking,
                       "mask_token": tokenizer.mask_token, "chosen_share": float((kind > 0).mean())}
        sets.append(HFSet(out / MASKED_DIR, fed, masked_columns, masked_meta, copies=maskings, predict=True))

    attach(sets, role, lambda: hf_lens(model, n_layers), n_layers, bool(cfg.dump.readout),
           sentences=cfg.dump.readout_sentences)
    fit_tuned_lens(cfg, model, stack, role, tokenizer, sets, device, max_length, pad_id, n_layers, d_model)
    remove_outputs(out)
    log.info("%s on %s in %s: batches of at most %d tokens", label, device, meta["model_dtype"], batch_tokens)
    progress = bool(OmegaConf.select(cfg, "train.progress", default=True))
    try:
        for dset in sets:
            dset.writer = LayerWriter(dset.folder, n_layers + 1, probe.n_tokens * dset.copies, d_model, DTYPES[dtype])
            next_token = [0, 0] if role == "lm" and not dset.meta["masked"] else None
            write_states(model, stack, role, dset, probe, pad_id, int(batch_tokens), device, dtype, progress,
                         f"{label}{' masked' if dset.meta['masked'] else ''}", next_token)
            if next_token is not None:
                dset.meta["head_next_token_accuracy"] = next_token[0] / max(next_token[1], 1)
                dset.meta["head_next_token_n"] = next_token[1]
            if dset.predict:
                dset.columns["predicted_id"] = dset.predicted
                hit = dset.columns["masked"] == 1
                dset.meta["head_mask_accuracy"] = float((dset.predicted[hit] == dset.columns["label_id"][hit]).mean()) \
                    if hit.any() else None
                dset.meta["head_mask_n"] = int(hit.sum())
            table = write_token_table(partial_path(dset.folder / TOKENS_FILE), dset.columns)
            dset.written = [*dset.writer.close(), table, *([dset.readout.close()] if dset.readout else [])]
        ledger = publish(out, sets)
    except BaseException:
        discard(out, sets)
        raise
    write_stage_record(out, "hf_dump", stage_cfg, ledger=ledger, root=cfg.paths.results, inputs=inputs,
                       command=stage_command("pipeline.dump.pretrained"), checkpoint_sha256=meta["checkpoint_sha256"],
                       n_tokens=probe.n_tokens, n_sentences=len(probe.inputs), pretrained=record, evicted=evict)
    if evict:  # the dump is complete and recorded: the files this run fetched go
        try:
            log.info("removed %s (%s) from the cache: %.1f MB freed", spec.name, spec.revision or "its revision",
                     hf.evict(spec, folder) / 1e6)
        except Exception as e:  # the dump stands; the disk is the user's to free
            log.warning("could not remove %s from the Hugging Face cache (%s: %s)", folder, type(e).__name__, e)
    log.info("wrote %d layers x %d tokens x %d of %s to %s%s", n_layers + 1, probe.n_tokens, d_model, spec.name, out,
             " (+ masked/)" if len(sets) > 1 else "")
    return out


def _check_role(cfg: DictConfig, label: str, role: str) -> None:
    if str(cfg.objective.kind) != role:
        raise PipelineError(f"{label} plays role {role}: run with objective={role} label={label} "
                            f"(the setting objective={cfg.objective.kind} picks the masking config of another role)")


def hidden_sizes(stack, tokenizer, device) -> list[int]:
    """The width of each hidden state (layers 0..L) the stack returns, from one short forward pass."""
    ids = tokenizer("a", return_tensors="pt")["input_ids"].to(device)
    with torch.inference_mode():
        states = stack(input_ids=ids, output_hidden_states=True).hidden_states
    return [int(s.shape[-1]) for s in states]


main = cli(dump)

if __name__ == "__main__":
    main()
