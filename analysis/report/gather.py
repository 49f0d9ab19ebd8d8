"""Everything the report reads from an experiment's folders, each piece with the reason it is missing.

Under `paths.results`: the metric tables `metrics/<name>.csv`, the study's six, `evolution`, `readout` and
`revisions` (the pretrained grids' revisions checked, analysis/measures/revisions.py; no replicates), `tsne`
and `examples` (the neighbours explorer's queries and neighbours, analysis/measures/examples.py)
(+ their `.json` records), every model's `models/<objective>/seed<n>/summary.json` and `log.jsonl`, `data/stage.json`,
`tokenizer/stage.json`, `dumps/<objective>/seed<n>/meta.json` and Snakemake's `benchmarks/**.tsv`.
Nothing here fails on a missing or unreadable input: it records why, and the report says so.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from analysis.io.tables import COLUMNS, read_record, read_replicates, read_table, replicates_path, with_replicates
from pipeline.config import layout
from pipeline.config.grid import INIT, model_grid, pretrained_grid
from pipeline.config.layout import table_path
from pipeline.config.pretrained import HFSpec, specs
from pipeline.dump.format import META_FILE
from pipeline.errors import PipelineError
from pipeline.machine.cpu import cpu_flags
from pipeline.records.files import STAGE_RECORD, read_json
from pipeline.train.convergence import convergence

# similarity, change, influence, mi, neighbours, evolution, readout, revisions, tsne, examples
TABLES = tuple(t for t in COLUMNS if t != "claims")
_INT = {"seed", "seed_a", "seed_b", "layer", "layer_a", "layer_b", "layer_from", "layer_to", "n_tokens", "n_pairs", "n_influencers",
        "n_clusters", "k", "n_queries", "position", "sentence_id", "masked", "step", "final", "n_sentences",
        "rank", "same_token", "same_position", "same_left", "same_right"}
_FLOAT = {"distance", "shuffled", "mi", "mi_shuffled", "mi_corrected", "value", "x", "y", "ci_low", "ci_high",
          "corrected_ci_low", "corrected_ci_high", "mi_sd", "mi_corrected_sd", "similarity"}


@dataclass
class Table:
    """One metric table: typed rows, or None with the reason in `missing`."""

    name: str
    rows: list[dict[str, Any]] | None = None
    record: dict | None = None
    missing: str | None = None
    no_replicates: str | None = None  # why its rows carry no bootstrap replicates (analysis.tables.REPLICATES)


@dataclass
class ModelRun:
    """One trained model: its summary.json and log.jsonl (either may be missing)."""

    objective: str
    seed: int
    summary: dict | None = None
    log: list[dict] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """mt | lm | mlm (the summary's, else the objective name before any `_td`)."""
        return str((self.summary or {}).get("kind") or self.objective.split("_")[0])

    @property
    def convergence(self) -> dict | None:
        """`pipeline.train.convergence.convergence` of its dev-loss log and stop reason; None without a log."""
        if not self.log:
            return None
        return convergence(self.log, (self.summary or {}).get("stop_reason"))


@dataclass
class BenchmarkJob:
    """One Snakemake `benchmark:` file: its stage (the first path part), wall time and peak memory."""

    stage: str
    seconds: float | None
    max_rss_mb: float | None


@dataclass
class Experiment:
    cfg: DictConfig
    results: Path
    tables: dict[str, Table]
    models: list[ModelRun]  # the trained models (not the step-0 control)
    objectives: list[str]   # every objective measured, `init` (the step-0 control) included
    n_layers: int
    data_stage: dict | None
    tokenizer_stage: dict | None
    dumps: dict[tuple[str, int], dict]
    benchmarks: list[BenchmarkJob]
    hardware: dict[str, Any]
    # the pretrained models (pipeline/model/hf.py): label -> their dump's meta.json (with its `pretrained` record)
    pretrained: dict[str, dict] = field(default_factory=dict)
    # the pretrained models with a grid of published revisions (pretrained.models.<label>.revisions): label -> spec
    grids: dict[str, HFSpec] = field(default_factory=dict)

    def rows(self, name: str) -> list[dict[str, Any]] | None:
        return self.tables[name].rows

    def as_tables(self) -> dict[str, list[dict[str, Any]] | None]:
        return {name: table.rows for name, table in self.tables.items()}


# ---------------------------------------------------------------- metric tables

def _typed(row: dict[str, str], path: Path, line: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, text in row.items():
        try:
            if key in _INT:
                out[key] = int(text)
            elif key in _FLOAT:
                out[key] = float(text)
            else:
                out[key] = text
        except ValueError:
            raise PipelineError(f"{path}, line {line}: column {key} holds {text!r}, not a "
                                "number") from None
    return out


def load_table(path: str | Path, name: str) -> Table:
    """Read `metrics/<name>.csv` with typed columns; a missing, empty or malformed table is kept as
    `missing` (the reason) rather than raised."""
    path = Path(path)
    table = Table(name)
    if not path.is_file():
        table.missing = f"{path} not found: its measurement has not run (snakemake {path})"
        return table
    try:
        rows = [_typed(row, path, i + 2) for i, row in enumerate(read_table(path, name))]
    except PipelineError as e:
        table.missing = str(e)
        return table
    if not rows:
        table.missing = f"{path} has no rows"
        return table
    table.rows = rows
    try:
        arrays = read_replicates(path, name, len(rows))
        if arrays is None:
            table.no_replicates = f"{replicates_path(path)} not found: {path} was made before replicates were kept"
        with_replicates(rows, arrays)
    except PipelineError as e:
        table.no_replicates = str(e)
    try:
        table.record = read_record(path)
    except (OSError, ValueError):
        table.record = None  # the table is usable without its record; provenance says it is absent
    return table


# ---------------------------------------------------------------- models, stages, dumps

def _read_json(path: Path) -> dict | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _read_log(path: Path) -> list[dict]:
    entries = []
    if not path.is_file():
        return entries
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by a killed run; the rest of the curve is still worth drawing
        if isinstance(entry, dict) and "step" in entry:
            entries.append(entry)
    return entries


def load_model(cfg: DictConfig, objective: str, seed: int) -> ModelRun:
    folder = layout.model_folder(cfg, objective, seed)
    return ModelRun(objective, seed, _read_json(folder / "summary.json"), _read_log(folder / "log.jsonl"))




def _found_in_tables(tables: Iterable[Table]) -> list[tuple[str, int]]:
    found = set()
    for table in tables:
        for row in table.rows or ():
            for o, s in (("objective", "seed"), ("objective_a", "seed_a"), ("objective_b", "seed_b")):
                if o in row:
                    found.add((row[o], row[s]))
    return sorted(found)


# ---------------------------------------------------------------- benchmarks and hardware

def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def read_benchmark(path: Path, root: Path) -> BenchmarkJob | None:
    """A Snakemake benchmark TSV (s, h:m:s, max_rss, ...; one line per repeat: their mean/max)."""
    try:
        lines = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return None
    if len(lines) < 2:
        return None
    header = lines[0]
    cols = {name: [_number(row[i]) for row in lines[1:] if i < len(row)] for i, name in enumerate(header)}

    def mean(name):
        values = [v for v in cols.get(name, []) if v is not None]
        return sum(values) / len(values) if values else None

    rss = [v for v in cols.get("max_rss", []) if v is not None]
    stage = path.relative_to(root).parts[0].removesuffix(".tsv")
    return BenchmarkJob(stage, mean("s"), max(rss) if rss else None)


def read_benchmarks(root: Path) -> list[BenchmarkJob]:
    if not root.is_dir():
        return []
    jobs = (read_benchmark(p, root) for p in sorted(root.rglob("*.tsv")))
    return [job for job in jobs if job is not None]


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> str:
    if shutil.which("nvidia-smi") is None:
        return "none found (no nvidia-smi)"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown (nvidia-smi failed)"
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return "; ".join(names) if out.returncode == 0 and names else "none found"


def hardware() -> dict[str, Any]:
    """The machine making the report (models record their own device in summary.json)."""
    return {"cpu": cpu_flags(), "cores": os.cpu_count(), "ram_gib": _ram_gib(), "gpu": _gpus(),
            "platform": platform.platform()}


# ---------------------------------------------------------------- everything

def collect(cfg: DictConfig, probe_hardware: bool = True) -> Experiment:
    """Read every input of the report under `cfg.paths.results`."""
    results = Path(str(cfg.paths.results))
    tables = {name: load_table(table_path(cfg, name), name) for name in TABLES}
    keys = list(dict.fromkeys([*model_grid(cfg), *_found_in_tables(tables.values())]))
    objectives = list(dict.fromkeys([o for o, _ in keys]))
    dumps = {}
    for o, s in keys:
        meta = _read_json(layout.dump_folder(cfg, o, s) / META_FILE)
        if meta is not None:
            dumps[(o, s)] = meta
    labels = {o for o, _ in pretrained_grid(cfg)}
    pretrained = {o: dumps.get((o, s)) or {"objective": o, "pretrained": None} for o, s in keys if o in labels}
    # neither the step-0 control nor a pretrained model is trained here
    models = [load_model(cfg, o, s) for o, s in keys if o != INIT and o not in labels]
    layers = {int(m["n_layers"]) for m in dumps.values() if "n_layers" in m}
    n_layers = max(layers) if layers else int(cfg.model.n_layers)
    return Experiment(cfg=cfg, results=results, tables=tables, models=models, objectives=objectives,
                      n_layers=n_layers, data_stage=_read_json(Path(str(cfg.paths.data)) / STAGE_RECORD),
                      tokenizer_stage=_read_json(Path(str(cfg.paths.tokenizer)) / STAGE_RECORD), dumps=dumps,
                      benchmarks=read_benchmarks(results / "benchmarks"),
                      hardware=hardware() if probe_hardware else {}, pretrained=pretrained,
                      grids={label: spec for label, spec in specs(cfg).items() if spec.revisions})
