"""Dumps in the exact on-disk format of `pipeline.dump`, made from given arrays (no model run), for
tests of the analyses; untrained checkpoints; the short training settings the training tests share."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from omegaconf import OmegaConf

from pipeline.config.compose import to_plain
from pipeline.config.stages import train_config
from pipeline.train.convergence import read_log  # noqa: F401  (the tests read training logs through it)
from pipeline.dump.writer import write_token_table
from pipeline.dump.format import MASKED_COLUMNS, MASKED_DIR, TOKEN_COLUMNS, layer_file
from pipeline.model.transformer import ModelArgs, build_model
from pipeline.records.stage import outputs_digest, owner_record, write_record, write_stage_record
from pipeline.records.files import config_hash, recording, torch_save, write_json, write_text


# Overrides that make a smoke-config training short enough for a unit test (4 dev evaluations).
FAST_TRAINING = ["train.max_steps=40", "train.eval_every=10", "train.patience=100", "train.dev_sentences=100",
                 "train.bleu_sentences=20"]




def replace_output(path: Path, text: str) -> None:
    """Rewrite a stage's output (a smaller probe.txt, say) and its entry in the stage's record, as if
    the stage had written it so: the tests' way to shape an input without it reading as damage."""
    record_file, record, key = owner_record(path)
    with recording(record_file.parent) as ledger:
        write_text(path, text)
    record.outputs[key] = ledger.files[key]
    record.digest = outputs_digest(record.outputs)
    write_record(record_file, record)


def token_columns(lengths, token_ids, ranks_of_id, pieces_of_id=None) -> dict:
    """tokens.tsv columns for sentences of `lengths` holding `token_ids` (flat), ranks by id."""
    lengths = np.asarray(lengths, dtype=np.int64)
    token_ids = np.asarray(token_ids, dtype=np.int64)
    assert len(token_ids) == lengths.sum()
    pieces = [pieces_of_id[i] if pieces_of_id is not None else f"t{i}" for i in token_ids]
    return {"sentence_id": np.repeat(np.arange(len(lengths)), lengths),
            "position": np.concatenate([np.arange(n) for n in lengths]),
            "token_id": token_ids, "token": pieces,
            "sentence_length": np.repeat(lengths, lengths),
            "freq_rank": np.asarray(ranks_of_id)[token_ids]}


def write_fake_dump(folder: Path, states: list[np.ndarray], columns: dict, objective: str = "lm", seed: int = 1,
                    kind: str | None = None, masked: tuple[list[np.ndarray], dict] | None = None,
                    dtype=np.float16) -> Path:
    """A finished dump in `folder`: one layer file per array of `states` (layer 0..L), tokens.tsv,
    meta.json, stage.json; `masked` = (states, extra columns masked/input_id/label_id) for MLM."""
    kind = kind or objective.split("_")[0]
    sets = [(folder, states, columns, TOKEN_COLUMNS)]
    if masked is not None:
        sets.append((folder / MASKED_DIR, masked[0], {"masking": np.zeros(len(columns["token_id"]), dtype=np.int64),
                                                      **columns, **masked[1]}, MASKED_COLUMNS))  # one masking
    for sub, arrays, cols, names in sets:
        sub.mkdir(parents=True, exist_ok=True)
        n, d = arrays[0].shape
        for layer, array in enumerate(arrays):
            assert array.shape == (n, d)
            np.save(sub / layer_file(layer), np.asarray(array, dtype=dtype))
        write_token_table(sub / "tokens.tsv", {c: cols[c] for c in names})
        write_json(sub / "meta.json", {"n_tokens": n, "n_layers": len(arrays) - 1, "d_model": d,
                                       "dtype": np.dtype(dtype).name, "objective": objective, "seed": seed,
                                       "kind": kind, "masked": sub != folder, "columns": list(names)})
    write_stage_record(folder, "dump", {"fake": True, "objective": objective, "seed": seed})
    return folder


def save_untrained(cfg, tok) -> Path:
    """model.pt as train.py writes it, with the untrained weights (enough to test the dump)."""
    args = ModelArgs(d_vocab=tok.vocab_size, pad_id=tok.pad_id, **to_plain(cfg.model))
    model = build_model(cfg.objective.kind, args, int(cfg.seed)).eval()
    path = Path(cfg.paths.model) / "model.pt"
    torch_save({"model": model.checkpoint_args(), "state_dict": model.state_dict(),
                "config": OmegaConf.to_container(cfg, resolve=True), "config_hash": config_hash(train_config(cfg)),
                "tokenizer": str(cfg.paths.tokenizer), "summary": {"steps": 0, "note": "untrained (test)"}}, path)
    return path
