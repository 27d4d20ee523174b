"""A job's scratch folders in the temp dir (Splink's Spark checkpoints, DuckDB's spill).

They hold copies of records and scored pairs. The process removes its own when it ends; a killed one cannot, so
the next job to take the lakehouse lock removes those whose owner is gone (remove_dead_scratch_dirs). Each folder
holds an OS file lock (flock) on a file inside it while its process runs, which the kernel drops when the process
dies, also for a process in another container that shares the temp dir (whose process id this one cannot see).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("idres.scratch")

PREFIX = "idres-"
OWNER_FILE = ".owner"  # flocked by the process the folder belongs to
SCRATCH_NAME = re.compile(rf"{PREFIX}[a-z]+-(?P<pid>\d{{1,10}})-")


class ScratchDir(tempfile.TemporaryDirectory):  # type: ignore[type-arg]
    """A new folder `idres-<kind>-<pid>-<random>` in the temp dir, owned (flocked) until cleanup() or exit."""

    def __init__(self, kind: str) -> None:
        super().__init__(prefix=f"{PREFIX}{kind}-{os.getpid()}-", ignore_cleanup_errors=True)
        taking = Path(self.name) / f"{OWNER_FILE}.taking"
        self._owner = taking.open("w")
        fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        taking.replace(Path(self.name) / OWNER_FILE)  # the owner file is never seen unlocked while its owner lives

    def cleanup(self) -> None:
        super().cleanup()
        self._owner.close()


def _owned(folder: Path, pid: int) -> bool:
    """Whether a live process owns the folder: it holds the folder's owner lock, or, before it has taken it (the
    folder just made), runs under the pid its name gives."""
    try:
        owner = os.open(folder / OWNER_FILE, os.O_RDONLY)  # never created here: a missing one means "not yet"
    except FileNotFoundError:
        return _running(pid)
    try:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(owner)
    return False


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; a pid no process can have
        return True
    return True


def remove_dead_scratch_dirs() -> list[str]:
    """Remove the scratch folders in the temp dir that no live process owns; returns their names. A folder that
    cannot be checked or removed is left, named in the log, for the next job."""
    removed = []
    for folder in sorted(Path(tempfile.gettempdir()).glob(f"{PREFIX}*")):
        named = SCRATCH_NAME.match(folder.name)
        if not named or not folder.is_dir():
            continue
        try:
            if not _owned(folder, int(named["pid"])):
                shutil.rmtree(folder)
                removed.append(folder.name)
        except OSError as err:
            log.warning("scratch folder %s left for the next job: %s", folder.name, type(err).__name__)
    return removed
