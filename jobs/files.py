"""Files the jobs write whole: a reader, or the next job after a crash, finds the whole file or the one before."""

from __future__ import annotations

import os
from pathlib import Path


def replace_durably(draft: Path, path: Path) -> Path:
    """Give the fully written draft the name path: synced to disk first, then renamed in one step."""
    with draft.open("rb") as written:
        os.fsync(written.fileno())
    os.replace(draft, path)
    return path


def write_whole(path: Path, text: str) -> Path:
    """Write text (UTF-8) to path through a hidden draft beside it (replace_durably)."""
    draft = path.with_name(f".{path.name}.draft")
    draft.write_text(text, encoding="utf-8")
    return replace_durably(draft, path)
