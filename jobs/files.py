"""Files the jobs write whole: a reader, or the next job after a crash, finds the whole file or the one before."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def replace_durably(draft: Path, path: Path) -> Path:
    """Give the fully written draft the name path: synced to disk first, then renamed in one step."""
    with draft.open("rb") as written:
        os.fsync(written.fileno())
    os.replace(draft, path)
    return path


def draft_of(path: Path) -> Path:
    """The hidden file beside path that is written whole before it takes path's name (replace_durably)."""
    return path.with_name(f".{path.name}.draft")


def write_whole(path: Path, text: str, private: bool = False) -> Path:
    """Write text (UTF-8) to path through a draft of its own (replace_durably), so two writers of one path never
    share a draft: a reader finds one's whole text or the other's. private: readable by its owner only, from the
    draft's first byte."""
    draft = path.with_name(f".{path.name}.{secrets.token_hex(6)}.draft")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as written:
            written.write(text)
        return replace_durably(draft, path)
    except BaseException:
        draft.unlink(missing_ok=True)
        raise
