"""What each layer already predicts: the logit lens, read from a dump's readout.npz.

    python -m analysis.measures.readout experiment=default objective=lm seed=1 [overrides]

pipeline.dump wrote, for every row with a target (an LM's next token; an MLM's original token at the
positions its masked run chose) and every layer, the loss, top-1 hit and KL to the last layer of that
layer's states read through the model's own final norm and output head (pipeline/dump/readout.py). This
averages them per layer:

- `loss`: mean cross-entropy of the target (nats); compare the MI with the output label, which asks
  the same question of the states' clusters;
- `accuracy`: share of rows whose target is the lens's most likely token;
- `kl`: mean KL(last layer || layer), nats: 0 at the last layer.

Each row has its bootstrap interval over probe sentences (analysis.bootstrap, table `readout`: the shared
plan, so a difference between two layers or models on the same sentences takes the paired replicates in
`seed<n>.npz`), its number of target rows and of sentences. A model without a readout (an MT encoder, the
step-0 control, `dump.readout=false`, a head the dump could not read) gets no rows; the table's record
says why. Writes `<paths.metrics>/readout/<model>/seed<n>.csv` with the columns
`objective, seed, layer, lens, quantity, target, value, ci_low, ci_high, n_tokens, n_sentences`: lens `logit`,
and `tuned` where the dump fitted a tuned lens (`dump.tuned_lens`, pipeline/dump/tuned_lens.py).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from analysis.io.tables import write_table
from analysis.stats import bootstrap
from pipeline.config.analysis import setting
from pipeline.config.cli import cli
from pipeline.config.layout import dump_folder, part_path
from pipeline.config.stages import section
from pipeline.dump.format import MASKED_DIR, META_FILE, read_readout, read_tokens
from pipeline.records.files import read_json

log = logging.getLogger("analysis.readout")

QUANTITIES = ("loss", "accuracy", "kl")
_ARRAY = {"loss": "loss", "accuracy": "top1", "kl": "kl"}


def source(folder: Path) -> tuple[Path | None, str]:
    """(the folder of a dump that holds its readout, its target: next | masked), or (None, why not)."""
    for sub, target in ((folder, "next"), (folder / MASKED_DIR, "masked")):
        if (sub / "readout.npz").is_file():
            return sub, target
    meta = folder / META_FILE
    why = (read_json(meta).get("readout") or {}).get("why") if meta.is_file() else None
    return None, why or "the dump holds no readout (made before pipeline.dump measured one: dump it again)"


def layer_rows(folder: Path, boot: bootstrap.Plan, quantities=QUANTITIES, maskings: int | None = None,
               lenses: tuple[str, ...] = ("logit", "tuned")):
    """(lens, quantity, target, layer, value, replicates, n_tokens, n_sentences) of every layer of the dump
    in `folder` (its readout in it or in masked/), for each of `lenses` it holds (the tuned lens where the
    dump fitted one); an MLM's rows only those of the first `maskings` maskings when given (what every step
    of a model shares). None and the reason when there is no readout."""
    sub, target = source(folder)
    if sub is None:
        return None, target
    r = read_readout(sub)
    tokens = read_tokens(sub)
    keep = np.ones(len(r["rows"]), dtype=bool)
    if maskings is not None and "masking" in tokens:
        keep = tokens["masking"][r["rows"]] < maskings
    rows = r["rows"][keep]
    sentences = tokens["sentence_id"][rows]
    unit, draws = boot.units(sentences), boot.draws()
    out = []
    for lens in lenses:
        prefix = "" if lens == "logit" else "tuned_"
        if f"{prefix}loss" not in r:
            continue
        for quantity in quantities:
            values = r[prefix + _ARRAY[quantity]][:, keep].astype(np.float64)
            for layer in range(values.shape[0]):
                value = float(values[layer].mean())
                reps = bootstrap.weighted_means(values[layer], unit, draws) if draws is not None else None
                out.append((lens, quantity, target, layer, value, reps, len(rows), len(np.unique(sentences))))
    return out, None


def run(cfg: DictConfig) -> Path:
    started = time.perf_counter()
    model, seed = str(cfg.label), int(cfg.seed)
    boot = bootstrap.plan(cfg, "readout")
    quantities = [str(q) for q in setting(cfg, "analysis.readout.quantities")]
    measured, why = layer_rows(dump_folder(cfg, model, seed), boot, quantities)
    rows = [{"objective": model, "seed": seed, "layer": layer, "lens": lens, "quantity": quantity, "target": target,
             "value": value, **boot.summary(value, reps), "n_tokens": n, "n_sentences": n_sentences,
             "replicates": {"value": reps}}
            for lens, quantity, target, layer, value, reps, n, n_sentences in measured or []]
    if why:
        log.info("%s seed %d: no readout: %s", model, seed, why)
    path = write_table(part_path(cfg, "readout"), "readout", rows, section(cfg, "readout"), started,
                       model=f"{model}/seed{seed}", not_measured=why, bootstrap=boot.describe())
    log.info("wrote %s (%d rows)", path, len(rows))
    return path


main = cli(run)

if __name__ == "__main__":
    main()
