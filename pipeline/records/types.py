"""The records beside every output, as types: a stage's stage.json, a metric table's <table>.json, the
report's report.json. Built, written and read here alone (`to_json`, `from_json`); on disk they are
JSON with sorted keys, and a record written before a field existed still reads.

Every record says what was read (`inputs`: path -> the content hash its maker recorded), what was
written (`outputs`: path relative to the record's folder -> size, sha256, mtime), one `digest` of
the outputs (what consumers record as this stage's hash), the package versions, when, the settings
hash and the command that remakes it. Fields only one kind of record has are named on its class;
what a single stage adds of its own (a training's summary, the corpus counts) is kept in `extra`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Output:
    """One output as it was written."""

    size: int
    sha256: str
    mtime_ns: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"size": self.size, "sha256": self.sha256}
        if self.mtime_ns is not None:
            out["mtime_ns"] = self.mtime_ns
        return out

    @classmethod
    def from_json(cls, data: Any) -> Output:
        if not isinstance(data, dict) or not isinstance(data.get("size"), int) or not isinstance(data.get("sha256"), str):
            raise ValueError(f"an output entry needs an integer size and a sha256: {data!r}")
        mtime = data.get("mtime_ns")
        return cls(int(data["size"]), str(data["sha256"]), int(mtime) if isinstance(mtime, int) else None)


@dataclass
class Record:
    """What every record holds. `outputs` is None for a record written before stages recorded their
    outputs (nothing to check it against)."""

    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Output] | None = None
    digest: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    finished: str | None = None
    config_hash: str | None = None
    command: str | None = None
    results: str | None = None  # the experiment's results folder, relative to the record's folder
    extra: dict[str, Any] = field(default_factory=dict)

    # fields left out of the JSON while they are None (an older record never had them)
    OPTIONAL: ClassVar[tuple[str, ...]] = ("results", "digest", "finished", "outputs")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name in self.OPTIONAL):
                continue
            out[f.name] = ({key: entry.to_json() for key, entry in value.items()}
                           if f.name == "outputs" and value is not None else value)
        return {**self.extra, **out}

    @staticmethod
    def from_json(data: Any) -> Record:
        """The record `data` (parsed JSON) holds: a TableRecord when it names a table, else a
        StageRecord. ValueError when it is no record at all."""
        if not isinstance(data, dict):
            raise ValueError(f"a record is a JSON object, not {type(data).__name__}")
        cls: type[Record] = TableRecord if "table" in data else StageRecord
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {key: value for key, value in data.items() if key in names}
        outputs = known.get("outputs")
        if outputs is not None:
            if not isinstance(outputs, dict):
                raise ValueError("outputs is not an object")
            known["outputs"] = {str(key): Output.from_json(entry) for key, entry in outputs.items()}
        if not isinstance(known.get("inputs", {}), dict):
            raise ValueError("inputs is not an object")
        return cls(**known, extra={key: value for key, value in data.items() if key not in names})



@dataclass
class StageRecord(Record):
    """A stage folder's stage.json (and the report's record): which stage, with which settings."""

    stage: str | None = None
    config: Any = None

    OPTIONAL: ClassVar[tuple[str, ...]] = (*Record.OPTIONAL, "config", "stage")


@dataclass
class TableRecord(Record):
    """A metric table's <table>.json: its settings, rows and wall time."""

    table: str | None = None
    rows: int | None = None
    settings: Any = None
    wall_time_s: float | None = None

    OPTIONAL: ClassVar[tuple[str, ...]] = (*Record.OPTIONAL, "wall_time_s")
