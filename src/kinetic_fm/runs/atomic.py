"""Crash-safe file writes: write to a hidden temporary name in the same folder, fsync, rename.

``os.replace`` is atomic on POSIX within one file system, so a reader (or a resumed run) sees
either the previous state or the complete new file, never a partial one, whenever the writing
process is killed (SIGKILL included). Leftover temporaries from a killed writer carry the
``.tmp-`` marker and are ignored by readers; :func:`remove_stale_temporaries` (one file's) and
:func:`remove_temporaries` (whole folders, under their lock) delete them.

Every file the library writes atomically goes through :func:`atomic_write` (run shards and
manifests, study caches and tables, checkpoints, the report); the final file gets the umask's
permissions, like a plain ``open``.
"""
from __future__ import annotations

import fnmatch
import glob
import os
import stat
import uuid
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .lock import LOCK_NAME, RunLock

TMP_MARKER = ".tmp-"
_TEMPORARY = f".*{TMP_MARKER}*"   # every temporary_name, whatever its path


def temporary_name(path: Path) -> Path:
    """Hidden sibling of ``path`` unique to this call: ``.<name>.tmp-<pid>-<8 hex digits>``
    (two threads writing one path never share a temporary).

    It does not end in ``path``'s suffix, so a reader globbing ``*.parquet`` never sees it. A
    name too long to take the ~25 bytes more (a file system allows 255 bytes) is shortened to
    its first 150 bytes and a hash of the whole (:func:`temporary_stem`).
    """
    return path.with_name(f"{temporary_stem(path.name)}{TMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def temporary_stem(name: str) -> str:
    """``.<name>``, or for a name over 200 bytes ``.<its first 150 bytes>~<12 hex of its sha256>``:
    the full stem made a legal 240-byte name fail with "[Errno 36] File name too long"."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) <= 200:
        return f".{name}"
    import hashlib

    head = encoded[:150].decode("utf-8", "ignore")  # not inside a multi-byte character
    return f".{head}~{hashlib.sha256(encoded).hexdigest()[:12]}"


def is_leftover(path: str | os.PathLike) -> bool:
    """Whether the folder entry ``path`` is what our writers leave behind: the lock file, or a
    killed writer's temporary as :func:`remove_temporaries` removes it (``.<name>.tmp-...``, hidden;
    a user's ``a.tmp-1.png`` is not one, nor a folder of that name: no writer here makes one, and
    that cleanup removes files only). A lock that is no regular file counts too: taking the lock
    refuses it, naming it (:class:`~kinetic_fm.runs.lock.RunLock`)."""
    name = os.path.basename(path)
    return name == LOCK_NAME or (fnmatch.fnmatchcase(name, _TEMPORARY) and os.path.isfile(path))


def holds_only_leftovers(folder: str | os.PathLike) -> bool:
    """Whether the folder ``folder`` holds nothing but what our writers leave behind (:func:`is_leftover`
    of each entry; an empty one too): a folder no run of ours has written a result into."""
    return not foreign_entries(folder)


def foreign_entries(folder: str | os.PathLike, leftover: Callable[[Path], bool] = is_leftover) -> list[str]:
    """The sorted names of what the folder ``folder`` holds besides our writers' leftovers (``leftover`` of each
    entry; :func:`is_leftover` unless a caller counts more): the files a run would write its own among."""
    return sorted(p.name for p in Path(folder).iterdir() if not leftover(p))


def named_few(names: Sequence[str]) -> str:
    """``names`` for a message: the first three, then how many more (``"a, b, c and 2 more"``)."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


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

    ``write`` receives the temporary path (in ``path``'s folder) and must create that file; it
    is then fsynced, renamed over ``path`` and the folder fsynced. On any exception the
    temporary is removed and ``path`` is left untouched.

    The temporary's name does not end in ``path``'s suffix: a writer that picks its format from
    the file name must be told the format (``fig.savefig(tmp, format="png")``,
    ``image.save(tmp, format="PNG")``), and one that appends a suffix (``np.savez``) must be
    handed an open file (``with open(tmp, "wb") as fh: np.savez(fh, ...)``).
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        # Windows: FlushFileBuffers needs a handle open for writing; POSIX fsyncs any descriptor,
        # and a read-only one also works where the temporary came out without write permission
        # (a umask such as 0o277, a writer that copies a read-only file's mode)
        fd = os.open(tmp, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically create or replace a file holding exactly ``data``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def remove_stale_temporaries(folder: Path, final_name: str) -> int:
    """Delete temporaries left by killed writers of ``final_name``; returns how many were removed."""
    removed = 0
    for stale in folder.glob(f"{glob.escape(temporary_stem(final_name))}{TMP_MARKER}*"):
        stale.unlink(missing_ok=True)
        removed += 1
    return removed


def remove_temporaries(folders: Iterable[Path], *, recursive: bool = False) -> int:
    """Delete every temporary (``.<name>.tmp-<pid>-<hex>``) in ``folders`` (and, ``recursive``,
    their subfolders), as writers killed mid-write leave them; returns how many went. Call it
    holding the folders' lock, so that no live writer owns one: nothing reads them, but each kill
    during a write leaves one for good (a training's ``resume.pt``'s is as large as the net and its
    optimiser state).

    ``recursive`` goes into a subfolder with a lock of its own (``.lock``: a run folder, which
    another command may be writing, e.g. ``kfm train --out`` into a workspace's ``models/``) only
    while it can take that lock: a live writer's temporary is the file it is about to rename, and
    deleting it would crash that writer. A subfolder this user may not list, or a run folder
    whose lock it may not open (another user's run), is left as it is, not an error: the cleanup
    must not stop the command that called it; so is a temporary this user may not delete (in a
    folder it may not write), which is not counted. Symbolic links to folders are not followed."""
    return sum(_remove_in(Path(folder), recursive) for folder in folders)


def _remove_in(folder: Path, recursive: bool) -> int:
    try:
        entries = list(os.scandir(folder))
    except OSError:  # not a folder, or one this user may not list: nothing to clean (as glob skips it)
        return 0
    removed = 0
    for entry in entries:
        try:
            is_file, is_folder = entry.is_file(), entry.is_dir(follow_symlinks=False)
        except OSError:  # an entry this user may not stat
            continue
        if fnmatch.fnmatchcase(entry.name, _TEMPORARY):
            if is_file:
                try:
                    Path(entry.path).unlink(missing_ok=True)
                except OSError:  # a folder this user may list but not write: the file stays, harmless
                    continue
                removed += 1
        elif recursive and is_folder:
            removed += _remove_in_subfolder(Path(entry.path))
    return removed


def _remove_in_subfolder(folder: Path) -> int:
    """:func:`_remove_in` ``folder`` recursively; a run folder (one holding a ``.lock`` file) only
    while this process can take its lock. A folder whose lock it cannot open (another user's run,
    or a folder it may not search) is left alone, as one whose lock another writer holds: no one
    can tell whether a writer is live there."""
    try:
        is_run = stat.S_ISREG(os.stat(folder / LOCK_NAME).st_mode)
    except FileNotFoundError:
        is_run = False
    except OSError:  # e.g. PermissionError: a folder this user may not search
        return 0
    if not is_run:
        return _remove_in(folder, True)
    try:
        lock = RunLock(folder).acquire()
    except OSError:  # RunLockedError (a live writer), or a lock file this user may not open
        return 0
    try:
        return _remove_in(folder, True)
    finally:
        lock.release()
