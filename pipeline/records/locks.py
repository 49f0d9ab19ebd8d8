"""One writer per output: an advisory lock file beside each stage folder or table."""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Iterator

from pipeline.errors import PipelineError
from pipeline.records.files import _UMASK

log = logging.getLogger(__name__)


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
