"""The record every stage leaves beside its outputs (stage.json), and the checks that read it.

Every stage records, beside its outputs, what it read (the content hash the stage that wrote each
input recorded, or the sha256 of a user's file) and what it wrote (size, sha256 and mtime of each
output, hashed while written). A stage is current when its settings, its inputs' hashes and its
outputs' sizes match the record (an output whose mtime moved is hashed again); `pipeline.verify`
checks every hash.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable

from pipeline.errors import PipelineError
from pipeline.records.files import STAGE_RECORD, Ledger, config_hash, read_json, sha256_file, write_json
from pipeline.records.provenance import _flatten, rebased_command, stage_command, versions
from pipeline.records.types import Output, Record, StageRecord

log = logging.getLogger(__name__)


_INPUTS_READ: dict[str, str | None] = {}


def note_input(path: str | os.PathLike) -> None:
    """Remember that this process read `path` (a stage folder or a file), with its recorded hash, for
    the records it writes later (`inputs_read`)."""
    _INPUTS_READ[str(path)] = recorded_hash(path)


def inputs_read() -> dict[str, str | None]:
    return dict(sorted(_INPUTS_READ.items()))


def outputs_digest(outputs: dict[str, Output]) -> str:
    """One hash of a stage's outputs (their names, sizes and sha256s): what its consumers record."""
    return config_hash({key: [entry.size, entry.sha256] for key, entry in outputs.items()})


_RECORDS: dict[tuple[str, int, int], Record | None] = {}


def read_record(path: str | os.PathLike) -> Record | None:
    """A record (a folder's stage.json, or the path of a record file): a StageRecord, or a TableRecord
    for a table's; None when there is none or it is unreadable or malformed (a stage without a
    readable record is not done). The one place records are read."""
    path = Path(path)
    if path.is_dir():
        path = path / STAGE_RECORD
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _RECORDS:
        try:
            _RECORDS[key] = Record.from_json(read_json(path))
        except (OSError, ValueError, TypeError):
            _RECORDS[key] = None
    return _RECORDS[key]


def owner_record(path: str | os.PathLike) -> tuple[Path, Record, str] | None:
    """(record file, record, key) of the stage that lists `path` among its outputs: the stage.json of
    its folder or of the folder above (a dump's masked/), or a table's `<name>.json`."""
    path = Path(path)
    candidates = [path.with_suffix(".json")] if path.suffix != ".json" else []
    candidates += [path.parent / STAGE_RECORD, path.parent.parent / STAGE_RECORD]
    for record_file in candidates:
        record = read_record(record_file)
        if record is None or record.outputs is None:
            continue
        key = os.path.relpath(path, record_file.parent).replace(os.sep, "/")
        if key in record.outputs:
            return record_file, record, key
    return None


def recorded_hash(path: str | os.PathLike) -> str | None:
    """The content hash of `path` as its maker recorded it: a stage folder's digest, an output's
    sha256; for a file no stage made (the user's corpus) its sha256 now; None when absent."""
    path = Path(path)
    if path.is_dir():
        record = read_record(path)
        return record.digest if record else None
    owner = owner_record(path)
    if owner is not None:
        return owner[1].outputs[owner[2]].sha256
    return sha256_file(path) if path.is_file() else None


def input_hashes(paths: Iterable[str | os.PathLike]) -> dict[str, str | None]:
    return {str(path): recorded_hash(path) for path in paths}


# An input inside the experiment's results folder is recorded relative to it (the record keeps the
# way from its own folder to that root), so a results folder moved or copied as a whole stays valid.
RESULTS_PREFIX = "<results>/"


def portable_inputs(inputs: dict[str, Any], root: str | os.PathLike | None) -> dict[str, Any]:
    if root is None:
        return dict(inputs)
    base = os.path.abspath(root)
    out = {}
    for key, value in inputs.items():
        path = os.path.abspath(key)
        inside = os.path.commonpath([path, base]) == base
        out[RESULTS_PREFIX + Path(os.path.relpath(path, base)).as_posix() if inside else key] = value
    return out


def input_path(key: str, record_folder: Path, record: Record) -> Path:
    """The file or folder an input key of `record` (found in `record_folder`) names."""
    if key.startswith(RESULTS_PREFIX) and record.results is not None:
        return Path(os.path.normpath(record_folder / record.results / key[len(RESULTS_PREFIX):]))
    return Path(key)


def output_problem(path: Path, entry: Output, full: bool = False, size_only: bool = False) -> str | None:
    """Why the output at `path` is not the one recorded in `entry` (None: it is). Size first; the
    sha256 when the mtime moved (or always, with `full`; never, with `size_only`)."""
    try:
        st = path.stat()
    except OSError:
        return f"{path} is missing"
    if st.st_size != entry.size:
        return f"{path} is {st.st_size} bytes, but its record says {entry.size}"
    if size_only:
        return None
    if (full or st.st_mtime_ns != entry.mtime_ns) and sha256_file(path) != entry.sha256:
        return f"{path} was altered (its sha256 is not the recorded one)"
    return None


def config_difference(made_with: Any, wanted: Any) -> str:
    """'data.format='parallel' there, 'archive' here' for the first differing setting (dotted key),
    and how many more differ."""
    normal = lambda obj: json.loads(json.dumps(obj, sort_keys=True, default=str))  # noqa: E731
    a, b = _flatten(normal(made_with or {})), _flatten(normal(wanted or {}))
    missing = "<unset>"
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]
    if not keys:
        return "the same settings as far as recorded"
    key = keys[0]
    more = f" (and {len(keys) - 1} more: {', '.join(keys[1:4])}{', ..' if len(keys) > 4 else ''})" if keys[1:] else ""
    return f"{key}={a.get(key, missing)!r} there, {key}={b.get(key, missing)!r} in this run{more}"


def stage_problem(folder: str | os.PathLike, config: Any = None, full: bool = False) -> str | None:
    """Why `folder` does not hold a current stage made from `config` (None: it does): no record,
    other settings, an input whose recorded hash moved, or an output missing, resized or altered.
    `folder` may also be a record file (a table's `<name>.json`); outputs are relative to its folder."""
    folder = Path(folder)
    record = read_record(folder)
    if not folder.is_dir() and folder.suffix == ".json":
        folder = folder.parent
    if record is None:
        return f"{folder} holds no finished stage (no readable {STAGE_RECORD})"
    if record.outputs is None:
        return f"{folder} was made before stages recorded their outputs (no sizes or hashes to check)"
    if config is not None and record.config_hash != config_hash(config):
        return f"{folder} was made with other settings: {config_difference(getattr(record, 'config', None), config)}"
    for key, recorded in record.inputs.items():
        path = input_path(key, folder, record)
        now = recorded_hash(path)
        if now is None:
            return f"{path}, an input of {folder}, is gone"
        if now != recorded:
            return f"{folder} was made from another {path} than the one there now"
    for key, entry in record.outputs.items():
        problem = output_problem(folder / key, entry, full)
        if problem:
            return problem
    return None


def records_under(root: str | os.PathLike) -> list[Path]:
    """Every record file under `root`: the stage.json of each stage folder, and each other `.json` that
    lists outputs (a table's, the report's), in path order."""
    return sorted(path for path in Path(root).rglob("*.json")
                  if path.name == STAGE_RECORD or getattr(read_record(path), "outputs", None) is not None)


def damaged_outputs(root: str | os.PathLike) -> list[tuple[Path, str, list[Path]]]:
    """(record file, what is wrong, the outputs it lists) for every stage under `root` with an output
    missing or of another size than recorded: the cheap check (one stat per file)."""
    found = []
    for record_file in records_under(root):
        record = read_record(record_file)
        if record is None or record.outputs is None:
            found.append((record_file, f"{record_file} was made before stages recorded their outputs", []))
            continue
        for key, entry in record.outputs.items():
            problem = output_problem(record_file.parent / key, entry, size_only=True)
            if problem:
                found.append((record_file, problem, [record_file.parent / k for k in record.outputs]))
                break
    return found


def stage_is_current(folder: str | os.PathLike, config: Any) -> bool:
    """True when `folder` holds a finished stage made from exactly this config and these inputs,
    its outputs intact."""
    return stage_problem(folder, config) is None


def require_upstream(folder: str | os.PathLike, config: Any, command: str, reader: str | None = None) -> bool:
    """For a stage about to read `folder`, made by another stage: False when nothing was made there
    yet; True when it holds a current stage of `config`; else one line naming what differs (the
    setting and both values, or the damaged file) and the `command` that rebuilds it with this run's
    settings, and, for the stage `reader` (its module), the command that reads it as it is. Never
    rebuilds."""
    record = read_record(folder)
    if record is None:
        return False
    problem = stage_problem(folder, config)
    if problem:
        as_it_is = reader and record.config_hash != config_hash(config) and rebased_command(
            stage_command(reader), record.command, getattr(record, "config", None))
        alternative = f"; or read it as it is, with `{as_it_is}`" if as_it_is else ""
        raise PipelineError(f"{problem}; it is not rebuilt from here: rebuild it with `{command}`{alternative}")
    return True


def checked_file(path: str | os.PathLike) -> Path:
    """`path`, once its size matches its stage's record (cheap: one stat); a missing or resized
    output fails naming it and the command that repairs it."""
    path = Path(path)
    owner = owner_record(path)
    if owner is not None:
        record_file, record, key = owner
        entry = record.outputs[key]
        try:
            size = path.stat().st_size
        except OSError:
            size = None
        if size != entry.size:
            state = "missing" if size is None else f"{size} bytes"
            raise PipelineError(f"{path} is {state}, but {record_file} recorded {entry.size} bytes: it is "
                                f"damaged; repair it with `{record.command or 'the stage that made it'}`")
    return path


def make_record(kind: type[Record], folder: str | os.PathLike, outputs: dict[str, Output],
                inputs: dict[str, Any] | None, root: str | os.PathLike | None, **fields: Any) -> Record:
    """A record of `kind` (StageRecord, TableRecord) for the outputs of `folder`: `fields` (those `kind`
    does not name go to its `extra`), the inputs (portable under `root`, the experiment's results
    folder), the outputs and their digest, versions, time."""
    names = {f.name for f in dataclasses.fields(kind)} - {"extra"}
    record = kind(**{key: value for key, value in fields.items() if key in names},
                  extra={key: value for key, value in fields.items() if key not in names})
    record.inputs = portable_inputs(inputs or {}, root)
    record.outputs = dict(sorted(outputs.items()))
    record.digest = outputs_digest(outputs)
    record.versions = versions()
    record.finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if root is not None:
        record.results = Path(os.path.relpath(os.path.abspath(root), os.path.abspath(folder))).as_posix()
    return record


def write_record(path: str | os.PathLike, record: Record) -> None:
    """The one place records are written (atomically, as JSON with sorted keys)."""
    write_json(path, record.to_json())


def write_stage_record(folder: str | os.PathLike, stage: str, config: Any, ledger: Ledger | None = None,
                       inputs: dict[str, str | None] | None = None, command: str | None = None,
                       root: str | os.PathLike | None = None, **extra: Any) -> None:
    """Record what made the outputs of `folder`: the stage, its config and hash, the command, its
    inputs' hashes, its outputs (from `ledger`) and their digest, versions, time.

    Written last, after every output: its presence with matching hashes means the stage is done.
    """
    record = make_record(StageRecord, folder, ledger.files if ledger is not None else {}, inputs, root, stage=stage,
                         config_hash=config_hash(config), config=config, command=command, **extra)
    write_record(Path(folder) / STAGE_RECORD, record)


def _declared_outputs(record: Path, outputs: list[Path]) -> list[Path]:
    """The files of a damaged stage whose absence makes the workflow rerun it: its record, and the
    outputs its rule declares besides (a model's model.pt, a table's CSV)."""
    declared = [path for path in outputs if path.name == "model.pt" or path.suffix == ".csv"]
    if record.name == STAGE_RECORD and record.parent.parent.parent.name == "models":  # a record of no outputs
        declared.append(record.parent / "model.pt")
    return [record, *declared]


def set_aside_damaged(root: str | os.PathLike) -> list[str]:
    """Delete the record of every stage under `root` whose outputs are damaged (missing, or of another
    size than recorded: a truncated layer file, a garbage model.pt), and the damaged files its rule
    declares, so that the workflow redoes that stage; returns what was wrong with each."""
    problems = []
    for record, problem, outputs in damaged_outputs(root):
        problems.append(problem)
        for path in _declared_outputs(record, outputs):
            path.unlink(missing_ok=True)
    return problems
