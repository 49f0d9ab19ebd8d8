"""Faults of the machine, not of the input: a full or read-only disk, a permission, a file that does
not unpickle, Ctrl-C. Every stage's command line (`pipeline.config.cli`) ends them with one `error:`
line naming the file and what to do, exit code 2 (130 for Ctrl-C), as it ends bad input."""
from __future__ import annotations

import errno
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

# A full disk (or quota): nothing the stage does can go on until space is freed.
_NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
# A file or folder the stage may not write (or read).
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
_HYDRA_FULL_ERROR = "HYDRA_FULL_ERROR"


def machine_fault(error: BaseException) -> tuple[str, int] | None:
    """The one `error:` line and exit code for a fault of the machine rather than of the input (a
    full or read-only disk, a permission, a file that does not unpickle, Ctrl-C), or None for
    anything else. The OSError may be the cause or context of what was raised (torch.save on a full
    disk raises a RuntimeError of its own)."""
    import pickle

    if isinstance(error, KeyboardInterrupt):
        return ("error: interrupted: nothing unfinished was kept; run the same command again (a training "
                "resumes from its last checkpoint)"), 130
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    for e in chain:
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            where = _file_of(e)
            return (f"error: {_NO_SPACE[e.errno]}{f' writing {where}' if where else ''}: free space on that disk "
                    "(or point the paths.* settings at another one) and run the same command again"), 2
        if isinstance(e, OSError) and e.errno in _NOT_WRITABLE:
            where = _file_of(e) or "an output"
            if e.errno == errno.EROFS:
                return (f"error: {where} is on a read-only file system: make it writable (or point "
                        "paths.results at a writable folder) and run the same command again"), 2
            return (f"error: {where}: permission denied: make it writable (and readable) for this user, or point "
                    "paths.results at a folder that is, and run the same command again"), 2
        if isinstance(e, pickle.UnpicklingError):
            where = _file_of(e) or "a file this stage reads"
            return (f"error: {where} is not a loadable checkpoint (it does not unpickle: damaged, cut short or "
                    "not the file expected): replace it, or make it again"), 2
    return None


def _file_of(error: BaseException) -> str | None:
    """The file `error` is about: its filename, else the innermost file open where it was raised (a
    failed write() names no file), by the name its writer gives it when done (not the temporary one)."""
    import io
    import re

    from pipeline.records.files import HashingFile

    name = getattr(error, "filename", None)
    if name is None:
        frames, tb = [], error.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        for frame in reversed(frames):
            for value in list(frame.f_locals.values()):
                try:
                    if isinstance(value, HashingFile):
                        value = value._f
                    value = getattr(value, "file_like", value)  # torch.load's opener
                    candidate = value.name if isinstance(value, io.IOBase) else None
                except Exception:  # noqa: BLE001 - an object whose attributes fail: not a file
                    continue
                if isinstance(candidate, (str, bytes)) and not str(candidate).startswith("<"):
                    name = candidate
                    break
            if name is not None:
                break
    if name is None:
        return None
    path = Path(os.fsdecode(name))
    # atomic_path's `.<name>.<host>.<pid>.<random>.tmp`, the dump's `.<name>.partial`
    final = re.fullmatch(r"\.(.+)\.[^.]+\.\d+\.[^.]+\.tmp|\.(.+)\.partial", path.name)
    if final:
        path = path.with_name(final.group(1) or final.group(2))
    return str(path).replace("\n", "\\n")


def exit_on_machine_fault(error: BaseException, cleanup: Callable[[], None] = lambda: None) -> None:
    """Exit with `error`'s one line, as a refused run does (Hydra's run folder removed when unused),
    when it is a fault of the machine; return otherwise."""
    fault = machine_fault(error)
    if fault is None:
        return
    line, code = fault
    print(line, file=sys.stderr)
    try:
        cleanup()
    except OSError:  # a read-only disk: what could not be removed stays
        pass
    sys.exit(code)


# HYDRA_FULL_ERROR as the user set it (None: unset), while Hydra sets up a run with it set.
_FULL_ERROR_GIVEN: list[str | None] = []


def reporting_machine_faults(hydra_main: Callable[..., Any]) -> Callable[..., Any]:
    """Hydra reports what fails before the job runs (making its run folder, writing its log or config
    on a read-only or full disk) with a traceback: HYDRA_FULL_ERROR lets those reach here instead,
    where a machine fault ends with its one line and anything else goes back to Hydra's own report
    (a bad override: its compact message). The job restores the variable when it starts, so that
    what the job raises is reported as it always was."""

    @functools.wraps(hydra_main)
    def run(*args: Any, **kwargs: Any) -> Any:
        _FULL_ERROR_GIVEN.append(os.environ.get(_HYDRA_FULL_ERROR))
        os.environ[_HYDRA_FULL_ERROR] = "1"
        try:
            return hydra_main(*args, **kwargs)
        except SystemExit:
            raise
        except BaseException as e:
            given = _restore_full_error()
            exit_on_machine_fault(e)
            if given is None and isinstance(e, Exception):
                from hydra._internal.utils import run_and_report

                run_and_report(functools.partial(_raise, e))  # prints as Hydra would, exits 1
            raise
        finally:
            _restore_full_error()

    return run


def job_errors_reported_by_hydra(main: Callable[..., Any]) -> Callable[..., Any]:
    """The job's side of `reporting_machine_faults`: HYDRA_FULL_ERROR back as the user gave it."""

    @functools.wraps(main)
    def job(cfg: Any) -> Any:
        _restore_full_error()
        return main(cfg)

    return job


def _restore_full_error() -> str | None:
    """Put HYDRA_FULL_ERROR back as the user gave it (once); returns that value."""
    if not _FULL_ERROR_GIVEN:
        return os.environ.get(_HYDRA_FULL_ERROR)
    given = _FULL_ERROR_GIVEN.pop()
    if given is None:
        os.environ.pop(_HYDRA_FULL_ERROR, None)
    else:
        os.environ[_HYDRA_FULL_ERROR] = given
    return given


def _raise(error: BaseException) -> None:
    raise error
