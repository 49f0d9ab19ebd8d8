"""The metric tables every measurement writes: CSV files under `paths.metrics`, written atomically,
each with a `<name>.json` record beside it (the settings, versions and wall time that made it) and a
`<name>.npz` of its rows' bootstrap replicates (`REPLICATED`)."""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pipeline.config.compose import to_plain
from pipeline.config.grid import INIT
from pipeline.errors import PipelineError
from pipeline.records.files import config_hash, recording, write_bytes, write_text
from pipeline.records.locks import one_writer
from pipeline.records.provenance import hydra_overrides, stage_command
from pipeline.records.stage import checked_file, inputs_read, make_record, note_input, write_record
from pipeline.records.stage import read_record as read_stage_record
from pipeline.records.types import TableRecord

# Columns of every table, in order (the report and the tests read them by name). `shuffled`: the same
# distance with one view's rows permuted, at the same n (the no-correspondence level). `ci_low`,
# `ci_high`: the bootstrap interval (analysis.bootstrap.method) over probe sentences of the row's estimate
# (analysis.bootstrap; nan where none was drawn); MI's `corrected_ci_*` is that of mi_corrected, and
# `mi_sd`, `mi_corrected_sd` the spread over k-means restarts (analysis.mi.restarts).
INTERVAL_COLUMNS = ("ci_low", "ci_high")
MI_INTERVAL_COLUMNS = INTERVAL_COLUMNS + ("corrected_ci_low", "corrected_ci_high")
MI_SPREAD_COLUMNS = ("mi_sd", "mi_corrected_sd")  # standard deviation over k-means restarts (nan: one restart)
COLUMNS: dict[str, tuple[str, ...]] = {
    "similarity": ("measure", "objective_a", "seed_a", "objective_b", "seed_b", "pair", "layer", "distance", "shuffled",
                   "n_tokens") + INTERVAL_COLUMNS + ("layer_a", "layer_b"),
    "change": ("measure", "objective", "seed", "layer_from", "layer_to", "bucket", "distance", "shuffled",
               "n_tokens") + INTERVAL_COLUMNS,
    "influence": ("measure", "objective", "seed", "layer", "bucket", "affected", "distance", "shuffled", "n_pairs",
                  "n_influencers") + INTERVAL_COLUMNS,
    "mi": ("objective", "seed", "layer", "target", "n_clusters", "mi", "mi_shuffled", "mi_corrected",
           "n_tokens") + MI_INTERVAL_COLUMNS + MI_SPREAD_COLUMNS,
    "neighbours": ("objective", "seed", "layer", "property", "k", "metric", "value", "n_queries") + INTERVAL_COLUMNS,
    "evolution": ("objective", "seed", "step", "final", "quantity", "measure", "target", "layer", "value",
                  "ci_low", "ci_high", "n_tokens"),
    "readout": ("objective", "seed", "layer", "lens", "quantity", "target", "value") + INTERVAL_COLUMNS
               + ("n_tokens", "n_sentences"),
    "revisions": ("objective", "seed", "step", "final", "revision", "commit", "weights_sha256", "states_sha256",
                  "same_weights_as", "same_states_as"),
    "tsne": ("set", "objective", "seed", "layer", "x", "y", "token", "position", "sentence_id", "masked", "pieces"),
    # the neighbours explorer (analysis.measures.examples): per query occurrence and layer, the query (rank 0)
    # and its k nearest neighbours, each with its sentence (`pieces`) and what it shares with the query
    "examples": ("objective", "seed", "layer", "query", "word", "rank", "sentence_id", "position", "token",
                 "similarity", "same_token", "same_position", "same_left", "same_right", "pieces"),
    # the report's verdicts (analysis.report.claims): one row per judged contrast, each with its claim's and
    # part's verdicts; a claim without contrasts (not measured) has one row with its reason
    "claims": ("claim", "statement", "verdict", "numbers", "part", "part_verdict", "seed", "seed_verdict", "contrast",
               "estimate", "ci_low", "ci_high", "level", "margin", "outcome", "n", "basis", "reason"),
}
_OPTIONAL = set(MI_INTERVAL_COLUMNS + MI_SPREAD_COLUMNS)  # a row or an older table without them: nan (no interval)
# Columns added to a table later, which an older table (or a row) without them reads (is written) with this
# default: {table: {column: value}} (tsne's `pieces`, each point's sentence: "" in a table made before it).
_ADDED: dict[str, dict[str, str]] = {"tsne": {"pieces": ""}}
# Similarity between models of different depths compares them at the same relative depth: `layer` is the
# step 1..L_min, `layer_a` / `layer_b` each model's own layer there. A row or an older table without
# them: both are `layer` (models of one depth).
_SAME_AS = {"layer_a": "layer", "layer_b": "layer"}


# The statistics whose bootstrap replicates (the value under each resample of the shared plan,
# analysis.bootstrap) are kept beside a table, in `<table>.npz`: one (rows, B) float64 array per column,
# row i for the CSV's row i, nan where a row has none (the MI sweep's rows; the first B' of B where a row
# has fewer). B = 0: the table was made with resamples switched off. Every table has the file (tsne's holds
# no array), so that a table made before replicates were kept is missing an output and is made again.
# A row carries its replicates in memory under REPLICATES: {column: (B,) array, or None}.
REPLICATED: dict[str, tuple[str, ...]] = {"similarity": ("distance",), "change": ("distance",),
                                          "influence": ("distance",), "mi": ("mi", "mi_corrected"),
                                          "neighbours": ("value",), "evolution": ("value",), "readout": ("value",),
                                          "revisions": (), "tsne": (), "examples": ()}
REPLICATES = "replicates"


# Column `pair` of the similarity table: which kind of pair of models a row compares.
SAME_INIT = "same_init"            # two objectives, one seed: the study's design (only the objective differs)
DIFFERENT_INIT = "different_init"  # two objectives, two seeds: the initialisation differs too
SEED_BASELINE = "seed_baseline"    # one objective, two seeds: the "init." baseline
INIT_PAIR = "init"                 # the step-0 control against a trained model or another seed's control
PRETRAINED_PAIR = "pretrained"     # a pretrained model against any other: data, size and architecture differ too
PAIRS = (SAME_INIT, DIFFERENT_INIT, SEED_BASELINE, INIT_PAIR, PRETRAINED_PAIR)


def pair_kind(a: tuple[str, int], b: tuple[str, int], pretrained: Iterable[str] = ()) -> str:
    """The kind of pair of two (objective, seed) models: PRETRAINED_PAIR when either is one of the
    `pretrained` labels (nothing about them is controlled), INIT_PAIR when either is the step-0
    control (against a trained model of its seed: how far training moved the stack), else
    SEED_BASELINE for one objective, SAME_INIT / DIFFERENT_INIT for two by their seeds."""
    if a[0] in set(pretrained) or b[0] in set(pretrained):
        return PRETRAINED_PAIR
    if INIT in (a[0], b[0]):
        return INIT_PAIR
    if a[0] == b[0]:
        if a[1] == b[1]:
            raise ValueError(f"{a[0]} seed {a[1]} is paired with itself")
        return SEED_BASELINE
    return SAME_INIT if a[1] == b[1] else DIFFERENT_INIT


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return "nan" if math.isnan(value) else repr(value)  # repr: the shortest exact round trip
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def to_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str], added: dict[str, str] | None = None) -> str:
    """The CSV text of `rows`; a row without an optional column gets nan, without one of `added` its default."""
    added = added or {}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        missing = [c for c in columns if c not in row and c not in _OPTIONAL and c not in _SAME_AS and c not in added]
        if missing:
            raise ValueError(f"row {row} lacks the columns {missing}")
        writer.writerow([_cell(row[c] if c in row else row[_SAME_AS[c]] if c in _SAME_AS else
                               added[c] if c in added else float("nan")) for c in columns])
    return out.getvalue()


def _command() -> str:
    """This process's command line (`python -m <module> ...`): what remakes the table it writes."""
    import shlex
    import sys

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # run as `python -m <module>`
    if spec is not None:
        module = spec.name
    else:  # a script's path: its module's name from the packages around it
        path = Path(sys.argv[0]).resolve().with_suffix("")
        parts = [path.name]
        while (path.parent / "__init__.py").is_file():
            path = path.parent
            parts.insert(0, path.name)
        module = ".".join(parts)
    module = module.removesuffix(".__main__").removesuffix(".stage")
    if hydra_overrides() is not None:
        return stage_command(module)
    return " ".join(["python -m", module, *map(shlex.quote, sys.argv[1:])])


def replicates_path(path: str | Path) -> Path:
    """The replicates file of the table at `path` (a CSV): the same name, `.npz`."""
    return Path(path).with_suffix(".npz")


def replicate_arrays(rows: Sequence[dict[str, Any]], table: str) -> dict[str, np.ndarray]:
    """The (rows, B) replicates of every REPLICATED column of `table`, from each row's REPLICATES
    (nan where a row has none or fewer)."""
    out = {}
    for column in REPLICATED[table]:
        values = [(row.get(REPLICATES) or {}).get(column) for row in rows]
        width = max((len(v) for v in values if v is not None), default=0)
        array = np.full((len(rows), width), np.nan)
        for i, v in enumerate(values):
            if v is not None:
                array[i, :len(v)] = v
        out[column] = array
    return out


def write_table(path: str | Path, table: str, rows: Iterable[dict[str, Any]], settings: Any,
                started: float | None = None, command: str | None = None, **extra: Any) -> Path:
    """Write `rows` as `path` (a CSV with the columns of `table`), their replicates as `path.npz`
    (`REPLICATED`), and the record `path.json`: the settings it was made with (and their hash), the
    command, the inputs this process read (their recorded hashes), both files' sizes and sha256,
    versions, wall time since `started`."""
    path = Path(path)
    rows = list(rows)
    text = to_csv(rows, COLUMNS[table], _ADDED.get(table))
    with one_writer(path):  # the CSV, its replicates and its record from one writer
        with recording(path.parent) as ledger:
            write_text(path, text)
            if table in REPLICATED:
                buffer = io.BytesIO()
                np.savez_compressed(buffer, **replicate_arrays(rows, table))
                write_bytes(replicates_path(path), buffer.getvalue())
        outputs = dict(sorted(ledger.files.items()))
        # the experiment's results folder: the one above metrics/
        root = next((folder.parent for folder in path.parents if folder.name == "metrics"), None)
        record = make_record(TableRecord, path.parent, outputs, inputs_read(), root, table=table,
                             rows=text.count("\n") - 1,
                             settings=to_plain(settings), config_hash=config_hash(to_plain(settings)),
                             command=command or _command(), **extra)
        if started is not None:
            record.wall_time_s = round(time.perf_counter() - started, 2)
        write_record(path.with_suffix(".json"), record)
    return path


def read_table(path: str | Path, table: str | None = None) -> list[dict[str, str]]:
    """The rows of a metric CSV as dicts of strings; checks the header against `table`'s columns. A
    table written before the intervals existed (no ci columns) reads with them as "nan", one written before
    a column of `_ADDED` with its default."""
    path = Path(path)
    if not path.is_file() and not path.with_suffix(".json").is_file():
        raise PipelineError(f"{path} not found: run its measurement first")
    note_input(checked_file(path))
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    if table is None:
        return rows
    header, columns = tuple(reader.fieldnames or ()), COLUMNS[table]
    added = _ADDED.get(table, {})
    if header != columns and not (set(header) <= set(columns)
                                  and set(columns) - set(header) <= _OPTIONAL | set(_SAME_AS) | set(added)):
        raise PipelineError(f"{path}, line 1: expected the columns {','.join(columns)}")
    return [{c: row[c] if c in row else row[_SAME_AS[c]] if c in _SAME_AS else added.get(c, "nan") for c in columns}
            for row in rows]


def read_replicates(path: str | Path, table: str, n_rows: int) -> dict[str, np.ndarray] | None:
    """The replicates beside the table at `path` ({column: (n_rows, B) array}); None when the table has
    no replicates file (made before they were kept). A file of other rows or columns fails, naming it."""
    npz = replicates_path(path)
    if not npz.is_file():
        return None
    note_input(checked_file(npz))
    try:
        with np.load(npz, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
    except (OSError, ValueError) as e:
        raise PipelineError(f"{npz} is not a readable replicates file ({e}): make its table again") from None
    for column in REPLICATED[table]:
        array = arrays.get(column)
        if array is None or array.ndim != 2 or array.shape[0] != n_rows:
            shape = None if array is None else array.shape
            raise PipelineError(f"{npz}: replicates of column {column!r} have the shape {shape}, but {path} has "
                                f"{n_rows} rows: make the table again")
    return arrays


def with_replicates(rows: list[dict[str, Any]], arrays: dict[str, np.ndarray] | None) -> list[dict[str, Any]]:
    """`rows` with each row's replicates (REPLICATES: {column: (B,) array}) from `arrays` (read_replicates);
    unchanged when there are none."""
    if arrays is not None:
        for i, row in enumerate(rows):
            row[REPLICATES] = {column: array[i] for column, array in arrays.items()}
    return rows


def read_record(path: str | Path) -> dict:
    """The `.json` record beside a table (settings, versions, wall time), as JSON: read through
    pipeline.records (ValueError when there is none or it is no record)."""
    record = read_stage_record(Path(path).with_suffix(".json"))
    if record is None:
        raise ValueError(f"{Path(path).with_suffix('.json')} holds no readable record")
    return record.to_json()


# ---------------------------------------------------------------- per-model parts of a table


def merge_parts(parts: Sequence[str | Path], out: str | Path, table: str) -> Path:
    """Concatenate per-model part tables (same columns) into `out`, with a record listing the
    parts, their wall times and (change, influence) the buckets each left out."""
    started = time.perf_counter()
    rows: list[dict[str, str]] = []
    records = []
    for part in parts:
        part_rows = read_table(part, table)
        arrays = read_replicates(part, table, len(part_rows))
        if arrays is None:
            raise PipelineError(f"{part} has no replicates beside it ({replicates_path(part).name}): it was made "
                                "before they were kept; run its measurement again")
        rows += with_replicates(part_rows, arrays)
        if not Path(part).with_suffix(".json").is_file():
            raise PipelineError(f"{part} has no record beside it ({Path(part).with_suffix('.json').name}): its "
                                "measurement did not finish; run it again")
        record = read_record(part)
        records.append({"part": str(part), "wall_time_s": record.get("wall_time_s"),
                        "config_hash": record.get("config_hash"),
                        **{key: record[key] for key in ("model", "floor", "left_out", "bootstrap",
                                                        "short_of_candidates") if key in record}})
    settings = {"merged": [str(p) for p in parts]}
    return write_table(out, table, rows, settings, started, parts=records)
