"""A job's scratch folders in the temp dir (Splink's Spark checkpoints, DuckDB's spill), named by its process id.

They hold copies of records and scored pairs. The process removes its own when it ends; a killed one cannot, so
the next job to take the lakehouse lock removes those whose process is gone (remove_dead_scratch_dirs).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

PREFIX = "idres-"
SCRATCH_NAME = re.compile(rf"{PREFIX}[a-z]+-(?P<pid>\d+)-")


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory[str]:
    """A new folder `idres-<kind>-<pid>-<random>` in the temp dir, removed on cleanup() (or when collected)."""
    return tempfile.TemporaryDirectory(prefix=f"{PREFIX}{kind}-{os.getpid()}-", ignore_cleanup_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_dead_scratch_dirs() -> list[str]:
    """Remove the scratch folders in the temp dir whose process no longer runs; returns their names.

    A folder whose process id a new process took since is kept until that one ends."""
    removed = []
    for folder in sorted(Path(tempfile.gettempdir()).glob(f"{PREFIX}*")):
        named = SCRATCH_NAME.match(folder.name)
        if named and folder.is_dir() and not _alive(int(named["pid"])):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed
