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
- `readout.npz` (LM; MLM: in masked/): the logit lens, each layer through the model's head
  (pipeline.dump.readout; `dump.readout`);
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

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.config.checks import check_dump_settings
from pipeline.config.cli import cli
from pipeline.config.compose import to_plain
from pipeline.config.grid import INIT
from pipeline.config.layout import snapshot_dump, snapshot_file
from pipeline.config.stages import (
    data_config,
    dump_config,
    init_config,
    is_init,
    snapshot_step,
    tokenizer_config,
    train_config,
)
from pipeline.dump.format import (
    DTYPES,
    MASKED_COLUMNS,
    MASKED_DIR,
    TOKEN_COLUMNS,
    TOKENS_FILE,
    partial_path,
)
from pipeline.dump.probe import Probe, mask_probe, select_probe, token_columns
from pipeline.dump.readout import Readout, add_sentences, attach, our_lens
from pipeline.dump.tuned_lens import FIT_SOURCE, Translators, fit_lines, tuned
from pipeline.dump.writer import (
    _TORCH_DTYPES,
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
from pipeline.model.objectives import Specials, pad, specials
from pipeline.model.transformer import Model, ModelArgs, build_model, load_model
from pipeline.prepare.corpus import prepare_command, read_lines
from pipeline.prepare.tokenizer import FREQ_FILE, MODEL_FILE, Tokenizer, load_frequency_ranks
from pipeline.records.files import (
    STAGE_RECORD,
    config_hash,
    recording,
    torch_save,
)
from pipeline.records.locks import one_writer
from pipeline.records.provenance import stage_command
from pipeline.records.stage import (
    input_hashes,
    read_record,
    recorded_hash,
    require_upstream,
    stage_problem,
    write_stage_record,
)

log = logging.getLogger("pipeline.dump")

# The step-0 control is the stack as this objective kind builds it: bidirectional attention.
INIT_BUILT_AS = "mlm"


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
    written: list[tuple[int, str]] | None = None  # (size, sha256) of each layer file, the token table, the readout
    readout: Readout | None = None  # the logit lens of this set's rows with a target (pipeline.dump.readout)


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
    add_sentences(dset.readout, states, idx, offsets, lengths)  # read through the head before the cast
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


def fit_tuned_lens(cfg: DictConfig, model: Model, tok: Tokenizer, sp: Specials, sets, device) -> None:
    """Fit the tuned lens on `dump.tuned_lens` training sentences and give it to every set's readout
    (pipeline.dump.tuned_lens); nothing when the setting is 0 or no set has a readout."""
    n = int(cfg.dump.tuned_lens)
    readouts = [d for d in sets if d.readout is not None]
    if not n or not readouts:
        return
    lines = fit_lines(n, read_lines(Path(str(cfg.paths.data)) / FIT_SOURCE), seed=0)
    fit = select_probe(lines, tok, model.args.n_ctx)
    translators = Translators(model.args.n_layers, model.args.d_model)
    with torch.inference_mode():
        for idx in length_batches(fit.lengths, int(cfg.dump.batch_tokens)):
            x = pad([[sp.bos, *fit.tokens[i].tolist(), sp.eos] for i in idx], sp.pad).to(device)
            _, states = model.encode(x, return_states=True)
            n_tokens = fit.lengths[idx]
            translators.add([h.cpu() for h in states], np.repeat(np.arange(len(idx)), n_tokens),
                            np.concatenate([np.arange(1, k + 1) for k in n_tokens]))
    lens = tuned(our_lens(model), translators.solve(), model.args.n_layers, device)
    for d in readouts:
        d.readout.tuned = lens
        d.meta["readout"]["tuned_lens"] = {"sentences": len(lines), "tokens": translators.n, "source": FIT_SOURCE}


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
    split, now = ckpt.get("data_digest"), getattr(read_record(data), "digest", None)
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
        summary = getattr(read_record(model_folder), "extra", {}).get("summary") or {}
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
    columns = token_columns(probe, tok, ranks)
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

    attach(sets, model_kind, lambda: our_lens(model), n_layers, bool(cfg.dump.readout), eos_id=sp.eos,
           sentences=cfg.dump.readout_sentences)
    fit_tuned_lens(cfg, model, tok, sp, sets, device)
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
            dset.written = [*dset.writer.close(), table, *([dset.readout.close()] if dset.readout else [])]
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
