"""Crash-safe file writes: write to a hidden temporary name in the same folder, fsync, rename.

``os.replace`` is atomic on POSIX within one file system, so a reader (or a resumed run) sees
either the previous state or the complete new file, never a partial one, whenever the writing
process is killed (SIGKILL included). Leftover temporaries from a killed writer carry the
``.tmp-`` marker and are ignored by readers; :func:`remove_stale_temporaries` deletes them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

TMP_MARKER = ".tmp-"


def temporary_name(path: Path) -> Path:
    """Hidden sibling of ``path`` unique to this process: ``.<name>.tmp-<pid>``."""
    return path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """Flush a directory entry (the rename) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. some network file systems
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Create ``path`` atomically: ``write(tmp_path)`` fills a temporary file, then it is renamed.

    ``write`` receives the temporary path and must create that file. On any exception the
    temporary is removed and ``path`` is left untouched.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically create or replace a UTF-8 text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_stale_temporaries(folder: Path, final_name: str) -> int:
    """Delete temporaries left by killed writers of ``final_name``; returns how many were removed."""
    removed = 0
    for stale in folder.glob(f".{final_name}{TMP_MARKER}*"):
        stale.unlink(missing_ok=True)
        removed += 1
    return removed
