"""Files on disk: atomic writes, hashes and the record every stage leaves beside its outputs.

A stage writes each output to a temporary name in the same folder and renames it into place, so a
killed job never leaves a half-written file that a rerun would trust.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence


log = logging.getLogger(__name__)


class PipelineError(Exception):
    """An error in the user's input or settings; the message names the file, line or key."""


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


# ---------------------------------------------------------------- one writer per output

def _lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    said = os.read(fd, 4096).decode("utf-8", "replace").strip()
    return said or "another process (it has not said which yet)"


@contextlib.contextmanager
def one_writer(path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of the stage folder or output `path` (`.<name>.lock` beside it, an flock) while
    the block writes it: a second writer is refused in one line naming the process that holds it.
    The kernel drops a lock whose process died (killed, out of memory, a lost node), so the next
    writer takes a stale lock over by itself. The lock file is removed on release, with any folder
    it had to make."""
    import fcntl

    path = Path(path)
    lock = _lock_file(path)
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # innermost first
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise PipelineError(f"{path} is being written by {holder}: one writer at a time; wait for it to end, "
                                f"or stop it (its lock, {lock}, goes with the process)") from None
        except OSError as error:  # a file system without locks (some cluster mounts): say so, go on
            log.warning("%s: this file system does not lock (%s); nothing keeps a second writer out", lock,
                        error.strerror)
            break
        try:  # the holder may have removed the file between our open and our lock: lock the one there now
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    stale = _holder(fd) if os.fstat(fd).st_size else None
    if stale:
        log.info("%s: taking over the lock of %s, which is gone", path, stale)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    command = " ".join(sys.argv) if sys.argv and sys.argv[0] else "python"
    os.write(fd, f"process {os.getpid()} on {platform.node() or 'this host'} ({command[:300]}), "
                 f"since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty: the block wrote there
                break


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
    for name in ("transformers", "tokenizers", "safetensors", "huggingface_hub"):  # only where a stage used them:
        if name in sys.modules:                                                   # importing costs seconds
            found[name] = getattr(sys.modules[name], "__version__", None)
    found["git_commit"] = git_commit()
    return found


STAGE_RECORD = "stage.json"


# ---------------------------------------------------------------- provenance
# Every stage records, beside its outputs, what it read (the content hash the stage that wrote each
# input recorded, or the sha256 of a user's file) and what it wrote (size, sha256 and mtime of each
# output, hashed while written). A stage is current when its settings, its inputs' hashes and its
# outputs' sizes match the record (an output whose mtime moved is hashed again); `pipeline.verify`
# checks every hash.

class Ledger:
    """The outputs of one stage folder as they were written: relative path -> size, sha256, mtime."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.files: dict[str, dict[str, Any]] = {}

    def _key(self, path: str | os.PathLike) -> str | None:
        try:
            return Path(os.path.abspath(path)).relative_to(os.path.abspath(self.folder)).as_posix()
        except ValueError:
            return None

    def add(self, path: str | os.PathLike, size: int, sha256: str) -> None:
        key = self._key(path)
        if key is not None and key != STAGE_RECORD:
            self.files[key] = {"size": int(size), "sha256": sha256, "mtime_ns": os.stat(path).st_mtime_ns}

    def add_existing(self, path: str | os.PathLike) -> None:
        """An output not written through `atomic_file` (a small log, say): hashed now."""
        self.add(path, os.path.getsize(path), sha256_file(path))


_LEDGERS: list[Ledger] = []
_INPUTS_READ: dict[str, str | None] = {}


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


def note_input(path: str | os.PathLike) -> None:
    """Remember that this process read `path` (a stage folder or a file), with its recorded hash, for
    the records it writes later (`inputs_read`)."""
    _INPUTS_READ[str(path)] = recorded_hash(path)


def inputs_read() -> dict[str, str | None]:
    return dict(sorted(_INPUTS_READ.items()))


def outputs_digest(outputs: dict[str, dict[str, Any]]) -> str:
    """One hash of a stage's outputs (their names, sizes and sha256s): what its consumers record."""
    return config_hash({key: [entry["size"], entry["sha256"]] for key, entry in outputs.items()})


_RECORDS: dict[tuple[str, int, int], dict | None] = {}


def read_record(path: str | os.PathLike) -> dict | None:
    """A stage record (a folder's stage.json, or the path of a record file); None when there is none
    or it is unreadable (a stage without a readable record is not done)."""
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
            record = read_json(path)
            _RECORDS[key] = record if isinstance(record, dict) else None
        except (OSError, ValueError):
            _RECORDS[key] = None
    return _RECORDS[key]


def owner_record(path: str | os.PathLike) -> tuple[Path, dict, str] | None:
    """(record file, record, key) of the stage that lists `path` among its outputs: the stage.json of
    its folder or of the folder above (a dump's masked/), or a table's `<name>.json`."""
    path = Path(path)
    candidates = [path.with_suffix(".json")] if path.suffix != ".json" else []
    candidates += [path.parent / STAGE_RECORD, path.parent.parent / STAGE_RECORD]
    for record_file in candidates:
        record = read_record(record_file)
        if not record or not isinstance(record.get("outputs"), dict):
            continue
        key = os.path.relpath(path, record_file.parent).replace(os.sep, "/")
        if key in record["outputs"]:
            return record_file, record, key
    return None


def recorded_hash(path: str | os.PathLike) -> str | None:
    """The content hash of `path` as its maker recorded it: a stage folder's digest, an output's
    sha256; for a file no stage made (the user's corpus) its sha256 now; None when absent."""
    path = Path(path)
    if path.is_dir():
        record = read_record(path)
        return record.get("digest") if record else None
    owner = owner_record(path)
    if owner is not None:
        return owner[1]["outputs"][owner[2]]["sha256"]
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


def input_path(key: str, record_folder: Path, record: dict) -> Path:
    """The file or folder an input key of `record` (found in `record_folder`) names."""
    if key.startswith(RESULTS_PREFIX) and record.get("results") is not None:
        return Path(os.path.normpath(record_folder / record["results"] / key[len(RESULTS_PREFIX):]))
    return Path(key)


def output_problem(path: Path, entry: dict[str, Any], full: bool = False, size_only: bool = False) -> str | None:
    """Why the output at `path` is not the one recorded in `entry` (None: it is). Size first; the
    sha256 when the mtime moved (or always, with `full`; never, with `size_only`)."""
    try:
        st = path.stat()
    except OSError:
        return f"{path} is missing"
    if st.st_size != entry.get("size"):
        return f"{path} is {st.st_size} bytes, but its record says {entry.get('size')}"
    if size_only:
        return None
    if (full or st.st_mtime_ns != entry.get("mtime_ns")) and sha256_file(path) != entry.get("sha256"):
        return f"{path} was altered (its sha256 is not the recorded one)"
    return None


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: obj}


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
    if not isinstance(record.get("outputs"), dict):
        return f"{folder} was made before stages recorded their outputs (no sizes or hashes to check)"
    if config is not None and record.get("config_hash") != config_hash(config):
        return f"{folder} was made with other settings: {config_difference(record.get('config'), config)}"
    for key, recorded in (record.get("inputs") or {}).items():
        path = input_path(key, folder, record)
        now = recorded_hash(path)
        if now is None:
            return f"{path}, an input of {folder}, is gone"
        if now != recorded:
            return f"{folder} was made from another {path} than the one there now"
    for key, entry in (record.get("outputs") or {}).items():
        problem = output_problem(folder / key, entry, full)
        if problem:
            return problem
    return None


def records_under(root: str | os.PathLike) -> list[Path]:
    """Every record file under `root`: the stage.json of each stage folder, and each other `.json` that
    lists outputs (a table's, the report's), in path order."""
    return sorted(path for path in Path(root).rglob("*.json")
                  if path.name == STAGE_RECORD or isinstance((read_record(path) or {}).get("outputs"), dict))


def damaged_outputs(root: str | os.PathLike) -> list[tuple[Path, str, list[Path]]]:
    """(record file, what is wrong, the outputs it lists) for every stage under `root` with an output
    missing or of another size than recorded: the cheap check (one stat per file)."""
    found = []
    for record_file in records_under(root):
        record = read_record(record_file) or {}
        if not isinstance(record.get("outputs"), dict):
            found.append((record_file, f"{record_file} was made before stages recorded their outputs", []))
            continue
        for key, entry in record["outputs"].items():
            problem = output_problem(record_file.parent / key, entry, size_only=True)
            if problem:
                found.append((record_file, problem, [record_file.parent / k for k in record["outputs"]]))
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
        as_it_is = reader and record.get("config_hash") != config_hash(config) and rebased_command(
            stage_command(reader), record.get("command"), record.get("config"))
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
        entry = record["outputs"][key]
        try:
            size = path.stat().st_size
        except OSError:
            size = None
        if size != entry.get("size"):
            state = "missing" if size is None else f"{size} bytes"
            raise PipelineError(f"{path} is {state}, but {record_file} recorded {entry.get('size')} bytes: it is "
                                f"damaged; repair it with `{record.get('command') or 'the stage that made it'}`")
    return path


def hydra_overrides() -> list[str] | None:
    """The command-line overrides of the running Hydra app (hydra.* left out); None outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    except Exception:  # noqa: BLE001 - no Hydra app: no command line to repeat
        pass
    return None


def stage_command(module: str, drop: Sequence[str] = (), add: Sequence[str] = ()) -> str:
    """The command that (re)makes a stage: `python -m <module>` with this run's overrides, less those
    of the keys in `drop`, plus `add`."""
    import shlex

    overrides = hydra_overrides()
    if overrides is None:
        return " ".join(["python -m", module, "<the same overrides>", *add])
    kept = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in drop]
    return " ".join(["python -m", module, *map(shlex.quote, [*kept, *add])])


# Overrides that name which model or run a command is about, not how it is made: a command rebased on
# another stage's keeps its own.
_IDENTITY = ("experiment", "experiment_name", "objective", "objective.name", "seed", "snapshot")


def rebased_command(own: str | None, source: str | None, source_config: Any) -> str | None:
    """`own` (a stage's `python -m <module> <overrides>`) with the settings of `source_config` (the
    settings a stage it reads was made with) taken from `source` (that stage's command): own's
    override of such a setting is dropped and source's added; identity keys (objective, seed, ..) and
    paths stay own's. The command that remakes a stage from its input as the input is now, or None
    when a command is not a repeatable command line."""
    import shlex

    try:
        mine, theirs = shlex.split(own or ""), shlex.split(source or "")
    except ValueError:
        return None
    if mine[:2] != ["python", "-m"] or theirs[:2] != ["python", "-m"] or "<the same overrides>" in f"{own} {source}":
        return None
    held = set(_flatten(json.loads(json.dumps(source_config or {}, default=str))))
    key = lambda o: o.lstrip("+~").split("=", 1)[0]  # noqa: E731
    fixed = lambda k: k in _IDENTITY or k.startswith(("paths.", "hydra.", "hydra/"))  # noqa: E731
    belongs = lambda k: not fixed(k) and (k in held or any(h.startswith(k + ".") for h in held))  # noqa: E731
    words = [*mine[:3], *(o for o in mine[3:] if not belongs(key(o))), *(o for o in theirs[3:] if belongs(key(o)))]
    return " ".join(words[:3] + [shlex.quote(w) for w in words[3:]])


def make_record(folder: str | os.PathLike, outputs: dict[str, dict[str, Any]], inputs: dict[str, Any] | None,
                root: str | os.PathLike | None, **fields: Any) -> dict[str, Any]:
    """The provenance fields every record has: `fields`, then the inputs (portable under `root`, the
    experiment's results folder), the outputs and their digest, versions, time."""
    record = {**fields, "inputs": portable_inputs(inputs or {}, root), "outputs": dict(sorted(outputs.items())),
              "digest": outputs_digest(outputs), "versions": versions(),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if root is not None:
        record["results"] = Path(os.path.relpath(os.path.abspath(root), os.path.abspath(folder))).as_posix()
    return record


def write_stage_record(folder: str | os.PathLike, stage: str, config: Any, ledger: Ledger | None = None,
                       inputs: dict[str, str | None] | None = None, command: str | None = None,
                       root: str | os.PathLike | None = None, **extra: Any) -> None:
    """Record what made the outputs of `folder`: the stage, its config and hash, the command, its
    inputs' hashes, its outputs (from `ledger`) and their digest, versions, time.

    Written last, after every output: its presence with matching hashes means the stage is done.
    """
    record = make_record(folder, ledger.files if ledger is not None else {}, inputs, root, stage=stage,
                         config_hash=config_hash(config), config=config, command=command, **extra)
    write_json(Path(folder) / STAGE_RECORD, record)
