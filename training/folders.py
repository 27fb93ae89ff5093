"""Replacing a detector folder atomically: written beside its target, then renamed into place."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from training.errors import ExportError


def check_replaceable(out: Path) -> None:
    # Replacing an earlier model is the normal retraining flow; deleting a
    # folder that holds anything else would be a nasty surprise.
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if any(out.iterdir()) and not (out / "threshold.json").is_file():
        raise ExportError(f"{out} exists, is not empty and holds no model; choose another --out")


def replace_folder(work: Path, out: Path) -> None:
    """Rename `work` to `out`; an existing `out` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        out.rename(old)
    try:
        work.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
