"""argparse value types shared by the commands (plain Python: ``kfm --help`` stays fast)."""
from __future__ import annotations

import argparse
import contextlib


def seed_number(text: str) -> int:
    """A seed that reaches torch's generator: an integer in [0, 2**32) (it keeps 32 bits, so s and
    s + 2**32 would draw the same numbers)."""
    return _integer_below(text, 32, " (torch's generator keeps 32 bits of a seed)")


def bootstrap_seed_number(text: str) -> int:
    """A seed of a NumPy generator (the bootstrap's): an integer in [0, 2**63)."""
    return _integer_below(text, 63, "")


def _integer_below(text: str, bits: int, why: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**{bits}), got {text!r}") from None
    if not 0 <= value < 2**bits:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**{bits}){why}, got {text}")
    return value


def user_path(text: str) -> str:
    """A path flag's value with a leading ``~`` or ``~user`` expanded: the shell leaves
    ``--out=~/runs`` as it is (it expands ``~`` only at a word's start), and a folder named "~"
    was made in the working directory."""
    import os

    return os.path.expanduser(text)


def faiss_for(flag: str) -> None:
    """ValueError, the command line's one-line error, where faiss cannot be imported for ``flag``
    ("--backend faiss"): missing (what to install) or installed but broken (why), as
    :func:`kinetic_fm.optional.import_failure` words it; before any input is read."""
    from ..knn import faiss_module

    try:
        faiss_module(flag)
    except ImportError as err:
        raise ValueError(str(err)) from None


def check_output_path(flag: str, path: str, *, folder: bool) -> None:
    """ValueError naming ``flag`` when ``path`` cannot be written as a folder (``folder``) or a
    file: it is a file where a folder is asked for (or the reverse), a file stands where one of
    its parent folders would be made, or the folder it would be written into (the folder itself,
    for a folder that exists; else the nearest existing parent, where the file's temporary or the
    first missing folder is made) is one the user may not write into or on a read-only file
    system. Nothing is created here. The OS's own words ("[Errno 17] File exists", "[Errno 13]
    Permission denied") named neither the flag nor what was wrong, and came only after the data
    had loaded, the net had been read or the audit had run.

    As root every folder passes the permission test (``os.access``); what only writing shows (a
    full disk, a pseudo file system such as /proc) is named by :func:`writing`."""
    import os
    from pathlib import Path

    target = Path(path)
    if target.is_symlink() and not target.exists():  # mkdir(exist_ok=True) said "[Errno 17] File exists"
        raise ValueError(f"{flag} {path} is a symbolic link to {os.readlink(target)}, which does not exist; "
                         "make what it points to first, or name another path")
    if target.exists():
        if folder and not target.is_dir():
            raise ValueError(f"{flag} {path} is a file; name a folder (new, empty, or one this command wrote)")
        if not folder and target.is_dir():
            raise ValueError(f"{flag} {path} is a folder; name a file")
        _check_writable_folder(flag, path, target if folder else target.parent)
        return
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file, so no folder can be made inside it")
            _check_writable_folder(flag, path, parent)
            return


def _check_writable_folder(flag: str, path: str, folder) -> None:
    """ValueError naming ``flag`` when no file can be made in ``folder`` (an existing folder)."""
    import os

    if os.access(folder, os.W_OK | os.X_OK):
        return
    where = "" if os.path.abspath(folder) == os.path.abspath(path) else f": {folder}"
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): say what access() said
        read_only = False
    why = "is on a read-only file system" if read_only else "is a folder this user may not write into"
    raise ValueError(f"{flag} {path}{where} {why}")


# errors by which the OS refuses a write (permissions, read-only or full disks, quotas)
_REFUSALS = ("EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "EFBIG")


@contextlib.contextmanager
def writing(flag: str, path: str):
    """Re-raise the OS's refusal to write ``path`` (or a file in it, or a parent folder made
    for it, or its temporary) inside the block as an OSError naming ``flag``: "--out run cannot
    be written (Permission denied: run/shards)". These show only at write time, after
    :func:`check_output_path` passed (as root, on a full disk, on /proc, whose folders refuse new
    entries with "No such file or directory"). Errors about other files pass unchanged."""
    try:
        yield
    except OSError as err:
        if not _refused_writing(err, path):
            raise
        where = f": {err.filename}" if err.filename is not None else ""
        raise OSError(f"{flag} {path} cannot be written ({err.strerror or err}{where})") from err


def _refused_writing(err: OSError, path: str) -> bool:
    import errno
    import os

    from ..runs.atomic import TMP_MARKER, temporary_stem

    codes = {getattr(errno, name) for name in _REFUSALS if hasattr(errno, name)}
    if err.filename is None:  # write() on a full disk names no file
        return err.errno in codes - {errno.EACCES, errno.EPERM, getattr(errno, "EROFS", -1)}
    out = os.path.abspath(path)
    for name in (err.filename, err.filename2):
        if not isinstance(name, (str, os.PathLike)):
            continue
        name = os.path.abspath(name)
        inside = name == out or name.startswith(out.rstrip(os.sep) + os.sep)
        above = out.startswith(name.rstrip(os.sep) + os.sep)           # a parent folder made for it
        temporary = os.path.dirname(name) == os.path.dirname(out) and os.path.basename(name).startswith(
            temporary_stem(os.path.basename(out)) + TMP_MARKER)       # its atomic write's temporary
        if inside or above or temporary:
            # /proc and the like refuse a new entry as missing: only the output's own names count
            return err.errno in codes or err.errno == errno.ENOENT and (name == out or above or temporary)
    return False
