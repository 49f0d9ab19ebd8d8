"""Files on disk: atomic writes, hashes and the record every stage leaves beside its outputs.

A stage writes each output to a temporary name in the same folder and renames it into place, so a
killed job never leaves a half-written file that a rerun would trust.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator


class PipelineError(Exception):
    """An error in the user's input or settings; the message names the file, line or key."""


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give outputs the usual mode
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_hash(obj: Any) -> str:
    """A short, stable hash of a JSON-able config (dict key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        commit = out.stdout.strip()
        return commit if out.returncode == 0 and len(commit) == 40 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    """Versions of the interpreter and the libraries a result depends on."""
    found: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("torch", "numpy", "sentencepiece", "sacrebleu", "hydra", "omegaconf", "snakemake",
                 "sklearn", "scipy"):
        mod = sys.modules.get(name)
        if mod is None:
            try:
                mod = __import__(name)
            except ImportError:
                continue
        found[name] = getattr(mod, "__version__", None)
    found["git_commit"] = git_commit()
    return found


STAGE_RECORD = "stage.json"


def write_stage_record(folder: str | os.PathLike, stage: str, config: Any, **extra: Any) -> None:
    """Record what made the outputs of `folder`: the stage, its config and hash, versions, time.

    Written last, after every output: its presence with a matching hash means the stage is done.
    """
    record = {"stage": stage, "config_hash": config_hash(config), "config": config,
              "versions": versions(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    write_json(Path(folder) / STAGE_RECORD, record)


def stage_is_current(folder: str | os.PathLike, config: Any) -> bool:
    """True when `folder` holds a finished stage made from exactly this config."""
    path = Path(folder) / STAGE_RECORD
    if not path.exists():
        return False
    try:
        return read_json(path).get("config_hash") == config_hash(config)
    except (OSError, ValueError):
        return False
