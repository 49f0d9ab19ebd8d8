"""Command line: `python -m pipeline.verify experiment=<name> [overrides]` checks every artifact of an
experiment against the records its stages left: each output's size and sha256 (hashed in full), each
input's recorded hash against the one its maker recorded, and for the user's corpus files their
sha256 now. It changes nothing. One line per record; for each problem, the command that repairs it.

Exit code 0 when everything matches, 1 when something does not (2: bad settings, as every stage).
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from pipeline.config.cli import cli
from pipeline.records.provenance import rebased_command
from pipeline.records.stage import input_path, owner_record, read_record, recorded_hash, records_under, stage_problem

log = logging.getLogger("pipeline.verify")


def verify(roots: list[Path]) -> list[tuple[Path, str | None, int, int]]:
    """(record file, problem or None, outputs, bytes) for every record under `roots`."""
    found = []
    for root in roots:
        for record_file in records_under(root):
            record = read_record(record_file)
            outputs = (record.outputs if record is not None else None) or {}
            target = record_file.parent if record_file.name == "stage.json" else record_file
            found.append((record_file, stage_problem(target, full=True), len(outputs),
                          sum(entry.size for entry in outputs.values())))
    return found


def repair(record_file: Path) -> str:
    """The command that repairs a damaged or stale record: its own command; for a stage whose input was
    remade since (a model retrained with other settings, say), that command with the settings the
    input was remade with, so that it reads the input as it is now instead of asking to remake it."""
    record = read_record(record_file)
    if record is None:
        return "the stage that made it"
    own = record.command or "the stage that made it"
    for key, recorded in record.inputs.items():
        path = input_path(key, record_file.parent, record)
        if recorded_hash(path) in (None, recorded):
            continue
        maker = read_record(path) if path.is_dir() else (owner_record(path) or (None, None, None))[1]
        rebased = maker and rebased_command(own, maker.command, getattr(maker, "config", None))
        if rebased:
            return rebased
    return own


def _label(record_file: Path) -> Path:
    """What a record stands for: its stage folder (stage.json), else its first output (a table's CSV, beside
    its replicates; the report's page)."""
    if record_file.name == "stage.json":
        return record_file.parent
    outputs = sorted(getattr(read_record(record_file), "outputs", None) or {})
    return record_file.parent / outputs[0] if outputs else record_file


def run(cfg: DictConfig) -> None:
    roots = [Path(str(cfg.paths.results)), Path(str(cfg.paths.report))]
    started = time.perf_counter()
    found = verify([root for root in roots if root.is_dir()])
    bad = [(f, p) for f, p, _, _ in found if p]
    n_files, n_bytes = sum(n for _, _, n, _ in found), sum(b for _, _, _, b in found)
    for record_file, problem, n, size in found:
        if problem:
            print(f"DAMAGED {record_file.parent}: {problem}; repair: {repair(record_file)}")
        else:
            print(f"ok      {_label(record_file)} ({n} files, {size / 1e6:.1f} MB)")
    print(f"{len(found)} records, {n_files} files, {n_bytes / 1e6:.1f} MB hashed in "
          f"{time.perf_counter() - started:.1f} s: {len(bad) or 'no'} problem{'s' if len(bad) != 1 else ''}")
    if not found:
        print(f"nothing to verify under {', '.join(map(str, roots))}")
    if bad:
        sys.exit(1)


main = cli(run)

if __name__ == "__main__":
    main()
