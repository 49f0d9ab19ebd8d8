"""Files on disk: atomic writes, content hashes, and the ledger of what a stage wrote.

A stage writes each output to a temporary name in the same folder and renames it into place, so a
killed job never leaves a half-written file that a rerun would trust; what it writes through here is
noted, with its size and sha256, in the ledger of the stage folder it lies in."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterator

from pipeline.records.types import Output

_UMASK = os.umask(0)
os.umask(_UMASK)


_HOST = platform.node().replace(".", "_") or "host"


def _writer_alive(tmp_name: str) -> bool:
    """Whether the process that made the temporary file `tmp_name` (`.<name>.<host>.<pid>.<random>.tmp`)
    may still be writing it: another host's, or a live process of this one."""
    parts = tmp_name.rsplit(".", 4)  # ['.<name>', host, pid, random, 'tmp']
    if len(parts) != 5 or parts[1] != _HOST or not parts[2].isdigit():
        return True  # not ours to judge: another host's, or not named by atomic_path
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, but is another user's
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Delete what killed writers of `path` left: temporary files of processes of this host that are gone."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if not _writer_alive(stale.name):
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else delete it. The
    temporary name holds the host and process id, so that a later writer of `path` removes what a
    killed one left behind (and never a live writer's file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give outputs the usual mode
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class HashingFile:
    """A binary file that hashes (sha256) and counts what is written through it, so an output's
    record costs no second pass over the file."""

    def __init__(self, f) -> None:
        self._f, self._h, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._h.update(view)
        self.size += view.nbytes
        return self._f.write(view)

    def flush(self) -> None:
        self._f.flush()

    @property
    def sha256(self) -> str:
        return self._h.hexdigest()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[HashingFile]:
    """Open a temporary file beside `path` for binary writing; on success rename it onto `path`
    and note its size and sha256 (hashed while written) in the active ledger (see `recording`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            out = HashingFile(f)
            yield out
    note_output(path, out.size, out.sha256)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_file(path) as f:
        torch.save(obj, f)


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


STAGE_RECORD = "stage.json"


class Ledger:
    """The outputs of one stage folder as they were written: relative path -> size, sha256, mtime."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.files: dict[str, Output] = {}

    def _key(self, path: str | os.PathLike) -> str | None:
        try:
            return Path(os.path.abspath(path)).relative_to(os.path.abspath(self.folder)).as_posix()
        except ValueError:
            return None

    def add(self, path: str | os.PathLike, size: int, sha256: str) -> None:
        key = self._key(path)
        if key is not None and key != STAGE_RECORD:
            self.files[key] = Output(int(size), sha256, os.stat(path).st_mtime_ns)

    def add_existing(self, path: str | os.PathLike) -> None:
        """An output not written through `atomic_file` (a small log, say): hashed now."""
        self.add(path, os.path.getsize(path), sha256_file(path))


_LEDGERS: list[Ledger] = []


@contextlib.contextmanager
def recording(folder: str | os.PathLike) -> Iterator[Ledger]:
    """Note every file written under `folder` through this module while the block runs."""
    ledger = Ledger(folder)
    _LEDGERS.append(ledger)
    try:
        yield ledger
    finally:
        _LEDGERS.remove(ledger)


def note_output(path: str | os.PathLike, size: int, sha256: str) -> None:
    for ledger in reversed(_LEDGERS):
        if ledger._key(path) is not None:
            ledger.add(path, size, sha256)
            return
