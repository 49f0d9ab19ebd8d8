"""A finished experiment's results for a notebook: its metric tables, claims and trained models as pandas
DataFrames, each table checked against its record first.

    from analysis.report.results import load_results
    r = load_results("results/default")           # one experiment's results folder
    mi = r.table("mi")                            # a metric table: ints as ints, floats (nan too) as floats
    r.claims[["claim", "verdict", "part", "seed", "contrast", "estimate", "ci_low", "ci_high"]]
    mi[(mi.target == "input") & (mi.n_clusters == 500)].pivot_table("mi_corrected", "layer", "objective")

It reads what the report reads (`analysis.report.gather`: the column types, every model's summary.json,
log.jsonl and convergence by `pipeline.train.convergence`), through the tables' own readers
(`analysis.io.tables`), and refuses a table that is not the one its record describes
(`pipeline.records.stage.output_problem`). pandas is imported only when a frame is made: `pip install -e
'.[notebook]'`; importing this module needs none.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from analysis.io.tables import COLUMNS, REPLICATED, read_replicates, read_table
from analysis.report.gather import _FLOAT, _INT, ModelRun, _read_json, _read_log, _typed
from pipeline.errors import PipelineError
from pipeline.records.stage import output_problem, read_record
from pipeline.records.types import TableRecord
from pipeline.train.convergence import QUALITY

METRICS, MODELS, CLAIMS = "metrics", "models", "claims"
# metrics/claims.csv (the report's verdicts; analysis.report.claims.claim_rows) types its own columns: a claim
# without contrasts has no seed (<NA>); `n` stays text, as it may be one count per layer ("2988/2986/...")
_CLAIM_TYPES = {"claim": "int", "seed": "Int64", "estimate": "float", "ci_low": "float", "ci_high": "float",
                "level": "float", "margin": "float"}
_DTYPES = {"int": "int64", "Int64": "Int64", "float": "float64", "bool": "bool", "boolean": "boolean", "str": str}


class TableNotFound(PipelineError, KeyError):
    """A table that the results folder does not hold; the message lists the ones it does."""

    def __str__(self) -> str:  # a KeyError would print its message quoted
        return str(self.args[0]) if self.args else ""


def _pandas():
    try:
        import pandas
    except ImportError as e:
        raise ImportError("the results API makes pandas DataFrames, and pandas is not installed: "
                          "pip install -e '.[notebook]'") from e
    return pandas


def _series(pd, values: list, kind: str | None):
    """A column of `values` as pandas holds `kind` (int, Int64, float, bool, str); None is missing (<NA>, nan)."""
    if None in values:
        kind = {"int": "Int64", "bool": "boolean"}.get(kind or "str", kind)
        if kind == "float":
            values = [float("nan") if v is None else v for v in values]
    return pd.Series(values, dtype=_DTYPES.get(kind or "str"))


def _frame(pd, rows: list[dict[str, Any]], columns: tuple[str, ...] | list[str], types: dict[str, str]):
    return pd.DataFrame({c: _series(pd, [row[c] for row in rows], types.get(c)) for c in columns},
                        columns=list(columns))


def _claim_row(row: dict[str, str], path: Path, line: int) -> dict[str, Any]:
    out: dict[str, Any] = dict(row)
    for key, kind in _CLAIM_TYPES.items():
        text = row[key]
        try:
            out[key] = None if kind == "Int64" and text == "" else int(text) if kind in ("int", "Int64") else float(text)
        except ValueError:
            raise PipelineError(f"{path}, line {line}: column {key} holds {text!r}, not a number") from None
    return out


def _results_folders_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and ((p / METRICS).is_dir() or (p / MODELS).is_dir()))


class Results:
    """One experiment's results folder (`load_results`): what is in it, as DataFrames.

    - `tables`: the names of the tables present (metrics/<name>.csv; `claims` among them once the report ran)
    - `table(name)`: one table, checked against its record; numeric columns as numbers (ints as int64, floats
      as float64 with nan where no value was drawn), text as strings; intervals in `ci_low`/`ci_high` (MI's
      corrected ones in `corrected_ci_low`/`corrected_ci_high`)
    - `replicates(name)`: {column: (rows, B) array} of its bootstrap replicates, row i for the frame's row i
    - `record(name)`: its record (metrics/<name>.json: settings, command, inputs, outputs, rows) as a dict
    - `claims`: metrics/claims.csv, one row per judged contrast with its seed's, part's and claim's verdicts
    - `models`: one row per trained model, with its dev quality and whether its training converged

    A table whose files differ from its record (a size or sha256 of its CSV or replicates, its row count),
    whose header is not its table's columns, or that has no record is refused with a PipelineError naming
    the file and what differs: it is not the table that was measured. A file only touched (its mtime moved,
    as copying a folder does) is read.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def __repr__(self) -> str:
        models = self._model_folders()
        return (f"Results({str(self.folder)!r}: tables {', '.join(self.tables) or 'none'}; "
                f"{len(models)} trained model{'s' * (len(models) != 1)})")

    # ---------------------------------------------------------------- tables

    @property
    def tables(self) -> list[str]:
        """The names of the tables present (those with a metrics/<name>.csv), in alphabetical order."""
        return sorted(name for name in COLUMNS if (self.folder / METRICS / f"{name}.csv").is_file())

    def path(self, name: str) -> Path:
        """metrics/<name>.csv; a table not there fails (TableNotFound, a KeyError) listing those that are."""
        path = self.folder / METRICS / f"{name}.csv"
        if name in COLUMNS and path.is_file():
            return path
        if name in COLUMNS and path.with_suffix(".json").is_file():
            raise PipelineError(f"{path} is missing, but its record {path.with_suffix('.json')} is there: the table "
                                "was removed or damaged; make it again")
        what = f"no table {name!r} (the tables are {', '.join(COLUMNS)})" if name not in COLUMNS else \
            f"{path} not found: its measurement has not run"
        raise TableNotFound(f"{self.folder}: {what}; the tables present: {', '.join(self.tables) or 'none'}")

    def _checked_record(self, name: str) -> tuple[Path, TableRecord]:
        """The table's CSV and its record, once every output the record lists (the CSV, its replicates) has
        the recorded size and sha256 (whatever its mtime)."""
        path = self.path(name)
        record_file = path.with_suffix(".json")
        record = read_record(record_file)
        if not isinstance(record, TableRecord):
            state = "is missing" if not record_file.is_file() else "is not a table's record"
            raise PipelineError(f"{path} is refused: its record {record_file} {state}, so nothing says how it was "
                                "made or that it is whole; make the table again")
        if record.table != name or record.outputs is None or path.name not in record.outputs:
            listed = "no outputs" if record.outputs is None else ", ".join(record.outputs) or "no outputs"
            raise PipelineError(f"{path} is refused: its record {record_file} is of table {record.table!r} and lists "
                                f"{listed}, not {path.name}; make the table again")
        for key, entry in record.outputs.items():
            problem = output_problem(record_file.parent / key, entry, full=True)
            if problem:
                raise PipelineError(f"{path} is refused: {problem} ({record_file}); it is not the table that was "
                                    f"measured: make it again with `{record.command or 'its measurement'}`")
        return path, record

    def _rows(self, name: str) -> tuple[Path, TableRecord, list[dict[str, Any]]]:
        path, record = self._checked_record(name)
        rows = read_table(path, name)  # checks the header against COLUMNS[name]
        if record.rows is not None and len(rows) != record.rows:
            raise PipelineError(f"{path} is refused: it has {len(rows)} rows, but its record {path.with_suffix('.json')}"
                                f" says {record.rows}; make it again with `{record.command or 'its measurement'}`")
        typed = _claim_row if name == CLAIMS else _typed
        return path, record, [typed(row, path, i + 2) for i, row in enumerate(rows)]

    def table(self, name: str):
        """metrics/<name>.csv as a DataFrame (its columns in the order of analysis.io.tables.COLUMNS), after
        checking it against its record (see the class); row i is the CSV's row i."""
        pd = _pandas()
        _, _, rows = self._rows(name)
        types = _CLAIM_TYPES if name == CLAIMS else {**{c: "int" for c in _INT}, **{c: "float" for c in _FLOAT}}
        return _frame(pd, rows, COLUMNS[name], types)

    def replicates(self, name: str) -> dict:
        """The bootstrap replicates of the table's REPLICATED columns (analysis.io.tables): {column: (rows, B)
        float64 array}, row i for the table's row i, nan where a row has none (or fewer than B); B = 0 when
        resamples were switched off. {} for a table that keeps none (tsne, revisions, claims)."""
        path, _, rows = self._rows(name)
        if not REPLICATED.get(name):
            return {}
        arrays = read_replicates(path, name, len(rows))
        if arrays is None:
            raise PipelineError(f"{path} has no replicates beside it: it was made before they were kept; make it "
                                "again")
        return {column: arrays[column] for column in REPLICATED[name]}

    def record(self, name: str) -> dict:
        """The table's record (metrics/<name>.json) as a dict, after checking the table against it."""
        return self._checked_record(name)[1].to_json()

    @property
    def claims(self):
        """metrics/claims.csv (written by `python -m analysis.report`) as a DataFrame: one row per judged contrast
        (claim, statement, verdict, part, part_verdict, seed, seed_verdict, contrast, estimate, ci_low, ci_high,
        level, margin, outcome, n, basis, reason); a claim that could not be measured has one row, its seed
        <NA> and its numbers nan, with the reason."""
        return self.table(CLAIMS)

    # ---------------------------------------------------------------- models

    def _model_folders(self) -> list[tuple[str, int, Path]]:
        found = []
        for folder in (self.folder / MODELS).glob("*/seed*"):
            match = re.fullmatch(r"seed(\d+)", folder.name)
            if match and ((folder / "summary.json").is_file() or (folder / "log.jsonl").is_file()):
                found.append((folder.parent.name, int(match.group(1)), folder))
        return sorted(found)

    def runs(self) -> list[ModelRun]:
        """The trained models as the report reads them (analysis.report.gather.ModelRun: summary, log,
        convergence), in (objective, seed) order."""
        return [ModelRun(objective, seed, _read_json(folder / "summary.json"), _read_log(folder / "log.jsonl"))
                for objective, seed, folder in self._model_folders()]

    @property
    def models(self):
        """One row per trained model (models/<objective>/seed<n>/): objective, seed, kind, steps, best_step,
        stop_reason, wall_time_s, dev_loss, quality (its name: BLEU, perplexity, masked accuracy) and
        quality_value on the dev set, and from its log.jsonl by pipeline.train.convergence (as the report
        judges it): converged, convergence_reason, last_quarter_improvement, best_dev_loss. A missing summary
        or log leaves its columns missing (<NA>, nan)."""
        pd = _pandas()
        rows = []
        for run in self.runs():
            summary, conv = run.summary or {}, run.convergence or {}
            dev = summary.get("dev") or {}
            quality, key, _ = QUALITY.get(run.kind, ("dev accuracy", "accuracy", ""))
            steps = summary.get("steps", conv.get("steps"))
            rows.append({"objective": run.objective, "seed": run.seed, "kind": run.kind, "steps": steps,
                         "best_step": summary.get("best_step"), "stop_reason": summary.get("stop_reason"),
                         "wall_time_s": summary.get("wall_time_s"), "dev_loss": dev.get("loss"), "quality": quality,
                         "quality_value": dev.get(key), "converged": conv.get("converged"),
                         "convergence_reason": conv.get("reason", "no log.jsonl" if not run.log else None),
                         "last_quarter_improvement": conv.get("last_quarter_improvement"),
                         "best_dev_loss": conv.get("best_dev_loss")})
        types = {"seed": "int", "steps": "int", "best_step": "int", "wall_time_s": "float", "dev_loss": "float",
                 "quality_value": "float", "converged": "bool", "last_quarter_improvement": "float",
                 "best_dev_loss": "float"}
        columns = ["objective", "seed", "kind", "steps", "best_step", "stop_reason", "wall_time_s", "dev_loss",
                   "quality", "quality_value", "converged", "convergence_reason", "last_quarter_improvement",
                   "best_dev_loss"]
        return _frame(pd, rows, columns, types)


def load_results(folder: str | Path) -> Results:
    """The results of one finished experiment, read from its results folder (`results/<experiment>`, the one
    that holds metrics/ and models/), for a notebook:

        r = load_results("results/default")
        r.tables                                      # the tables present: ['change', 'claims', ...]
        mi = r.table("mi")                            # a DataFrame; r.replicates("mi"): its bootstrap replicates
        r.claims[r.claims.verdict != "holds"]         # the claims' verdicts, one row per judged contrast
        mi[(mi.target == "input") & (mi.n_clusters == 500)].pivot_table("mi_corrected", "layer", "objective")

    `r.models` holds one row per trained model (dev quality, converged); `r.record(name)` a table's record.
    A table that is not the one its record describes (another size or sha256 of its CSV or replicates,
    another row count, another header, no record) is refused with a PipelineError naming the file and what
    differs. A folder that is not a results folder fails naming it. DataFrames need pandas:
    `pip install -e '.[notebook]'`."""
    path = Path(folder)
    if not path.is_dir():
        raise PipelineError(f"{path} is not a results folder: there is no such folder")
    if not (path / METRICS).is_dir() and not (path / MODELS).is_dir():
        inside = _results_folders_in(path)
        hint = f"; the results folders in it: {', '.join(inside)}" if inside else ""
        raise PipelineError(f"{path} is not a results folder (it has neither {METRICS}/ nor {MODELS}/): give the folder "
                            f"of one experiment, such as results/default{hint}")
    return Results(path)
