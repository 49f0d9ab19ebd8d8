"""Published checkpoints checked for what they claim to be: the revisions of every pretrained grid
(pretrained.models.<label>.revisions) compared by their weights and by their hidden states on the probe.

    python -m analysis.measures.revisions experiment=<name> [overrides]

A release's step branches are sometimes not what their names say: EleutherAI/pythia #195 (Pythia-2.8B the
same from step 0 to 6,300), #205 (76 step branches bit-identical to `main`), allenai/OLMo #915 (three
stage-1 branches with bit-identical hidden states). Every revision's dump records the sha256 of its weight
files and of each layer file it wrote (its stage.json, pipeline.records); this reads those records only,
nothing is rerun, and flags each revision whose weights, or whose states at every layer, equal another's.

Writes `<paths.metrics>/revisions.csv`, one row per revision and model (the final `revision` included,
`final` 1), columns `objective, seed, step, final, revision, commit, weights_sha256, states_sha256,
same_weights_as, same_states_as`: the last two name the other revisions (by revision name, ` ; `
between them) with the same weights / the same states at every layer; empty when there is none.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from analysis.io.tables import write_table
from pipeline.config.cli import cli
from pipeline.config.grid import pretrained_grid
from pipeline.config.layout import dump_folder, snapshot_dump, table_path
from pipeline.config.pretrained import specs
from pipeline.dump.format import layer_file
from pipeline.errors import PipelineError
from pipeline.records.stage import read_record

log = logging.getLogger("analysis.revisions")


def fingerprint(folder: Path) -> dict:
    """(revision, commit, weights sha256, states sha256) of the finished dump in `folder`, from its record:
    the states' hash is one over the sha256 of every unmasked layer file, in layer order."""
    record = read_record(folder)
    if record is None or not record.outputs:
        raise PipelineError(f"{folder} holds no finished dump: run the workflow (or python -m pipeline.dump.pretrained "
                            "... snapshot=N) first")
    model = record.extra.get("pretrained") or {}
    weights = ",".join(w["sha256"] for w in model.get("weights") or [])
    layers = sorted(name for name in record.outputs if name.startswith("layer_") and "/" not in name)
    if not weights or not layers or layers[0] != layer_file(0):
        raise PipelineError(f"{folder / 'stage.json'} records no weights or layer files of a pretrained model's dump")
    states = hashlib.sha256("".join(record.outputs[name].sha256 for name in layers).encode()).hexdigest()
    # a revision is named by its branch, or by its repository where it is one of its own (MultiBERTs' steps)
    return {"revision": model.get("requested_revision") or model.get("name") or "", "commit": model.get("revision") or "",
            "weights_sha256": hashlib.sha256(weights.encode()).hexdigest(), "states_sha256": states}


def revision_rows(cfg: DictConfig) -> list[dict]:
    """One row per revision of every pretrained grid model (module docstring)."""
    grids = {label: spec for label, spec in specs(cfg).items() if spec.revisions}
    rows = []
    for label, seed in pretrained_grid(cfg):
        if label not in grids:
            continue
        spec = grids[label]
        points = [(step, False, snapshot_dump(cfg, step, label, seed)) for step in spec.steps]
        points.append((spec.final_step, True, dump_folder(cfg, label, seed)))
        mine = []
        for step, final, folder in points:
            mine.append({"objective": label, "seed": seed, "step": step, "final": int(final), **fingerprint(folder)})
        for row in mine:
            for key, column in (("weights_sha256", "same_weights_as"), ("states_sha256", "same_states_as")):
                row[column] = " ; ".join(other["revision"] for other in mine
                                         if other is not row and other[key] == row[key])
            if row["same_weights_as"] or row["same_states_as"]:
                log.warning("%s %s: the same weights as [%s], the same states as [%s]", label, row["revision"],
                            row["same_weights_as"], row["same_states_as"])
        rows.extend(mine)
    return rows


def run(cfg: DictConfig) -> Path:
    started = time.perf_counter()
    rows = revision_rows(cfg)
    path = write_table(table_path(cfg, "revisions"), "revisions", rows, {"models": sorted({r["objective"] for r in rows})},
                       started)
    flagged = sum(bool(r["same_weights_as"] or r["same_states_as"]) for r in rows)
    log.info("wrote %s: %d revisions, %d the same as another", path, len(rows), flagged)
    return path


main = cli(run)

if __name__ == "__main__":
    main()
