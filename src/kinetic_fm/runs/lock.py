"""One writer per run folder: an advisory ``flock`` on ``<run>/.lock``, held while a run writes.

:func:`~kinetic_fm.runs.runner.run_sharded` takes the lock before it reads or writes anything in
the folder and keeps it until the merged table is written, so a second writer (the same job
launched again while the first still runs, or two schedulers picking one job) stops at once with
:class:`RunLockedError`, naming the folder, the holder's host, pid and start time, and what to
do, instead of computing the first one's shards again. Training
(:func:`~kinetic_fm.models.train.train` with ``out``, ``kfm train``) and ``kfm reproduce`` hold
the lock of their folders in the same way.

Behaviour:

- ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``.lock``, which the holder fills with its host name,
  pid and start time (JSON) for the refusal message, and empties when it lets go. The file
  itself stays: deleting a lock file races with a writer that has just opened it, leaving two
  writers each locking its own file.
- The operating system drops the lock when the holder's process ends, however it ends (crash,
  SIGKILL, Ctrl-C), so a killed run never blocks its ``--resume`` and there is nothing to clean.
  A process forked while the lock is held shares it: it keeps the folder locked if the writer
  dies first, but not after the writer has released it (release unlocks explicitly).
- The lock is advisory: it stops other kinetic_fm writers, nothing else. Readers
  (:func:`~kinetic_fm.runs.shards.read_run`, ``read_samples``, ``merge_shards``) never take it:
  a finished run can be read while another process resumes or holds it.
- Where Python has no ``fcntl`` (Windows) there is no lock: runs proceed as before, unguarded.
- A file system that refuses ``flock`` (an ``OSError`` other than "would block", e.g. ENOLCK on
  some NFS mounts) gets one warning per process, and the run goes on without the lock.
- Distributed runs: only the main rank (rank 0) locks, for the whole job; see
  :func:`~kinetic_fm.runs.runner.run_sharded` for why that is enough.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, runs go unlocked (see the docstring)
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
_HELD_ERRNOS = frozenset({errno.EWOULDBLOCK, errno.EAGAIN})
_warned_unlockable = False  # one warning per process for a file system that refuses flock


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run folder's lock: host name, process id, and since when (local ISO time)."""

    host: str
    pid: int
    since: str

    @classmethod
    def this_process(cls) -> "LockHolder":
        return cls(socket.gethostname(), os.getpid(),
                   datetime.now().astimezone().isoformat(timespec="seconds"))

    def to_json(self) -> str:
        """The record written into ``<run>/.lock``: one JSON line of host, pid and start time."""
        return json.dumps({"host": self.host, "pid": self.pid, "since": self.since}) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "LockHolder | None":
        """The holder recorded in ``text``, or None when it is empty or unreadable."""
        try:
            body = json.loads(text)
            return cls(str(body["host"]), int(body["pid"]), str(body["since"]))
        except (ValueError, TypeError, KeyError):
            return None

    def __str__(self) -> str:
        return f"process {self.pid} on host {self.host}, writing since {self.since}"


def read_holder(run_dir: str | os.PathLike) -> LockHolder | None:
    """The holder recorded in ``run_dir/.lock``, or None (no file, empty, being written, or a
    damaged record, which :class:`RunLockedError` names as such).

    The record says who took the lock last; only a failed :meth:`RunLock.acquire` proves that
    the lock is held now.
    """
    return _read_record(run_dir)[0]


def _read_record(run_dir: str | os.PathLike) -> tuple[LockHolder | None, str | None]:
    """The holder recorded in ``run_dir/.lock`` (None as :func:`read_holder` gives it), and the
    record itself where it names no one but is not empty (damaged or edited; None otherwise)."""
    try:
        data = (Path(run_dir) / LOCK_NAME).read_bytes()
    except OSError:
        return None, None
    text = data.decode("utf-8", errors="replace")  # bytes that are not UTF-8 name no one either
    holder = LockHolder.from_json(text)
    return holder, (text.strip()[:60] or None) if holder is None else None


class RunLockedError(OSError):
    """Another process is writing into the run folder (it holds ``<run>/.lock``).

    An ``OSError`` (the folder is busy, not a bad setting), so the ``kfm`` commands report it in
    one line, and the runner hands it to every rank like its other refusals.
    """

    def __init__(self, run_dir: Path, holder: LockHolder | None, resume: str = "--resume", same_process: bool = False,
                 record: str | None = None):
        self.run_dir, self.holder, self.resume, self.same_process = run_dir, holder, resume, same_process
        self.record = record  # the holder record, where it names no one but is not empty
        if holder is not None:
            who = str(holder)
        elif record is not None:  # the lock holds all the same: only who holds it is unknown
            who = (f"a process whose holder record in {Path(run_dir) / LOCK_NAME} is unreadable ({record!r}: "
                   "damaged or edited, so it cannot be named)")
        else:
            who = "a process that is just starting (no holder recorded yet)"
        if same_process:  # flock excludes a second open of the file in the same process too
            who += (" (this very process: a lock on this folder taken earlier in it is still held, by another "
                    "thread or by a `with RunLock(...)` around train(out=...) or reproduce(), which take their "
                    "folder's lock themselves)")
        super().__init__(
            f"run folder {run_dir} is in use by another writer: {who}. Wait for it to finish (then "
            f"{resume} if it stopped early), or choose another --out; a writer that has died holds no "
            f"lock, so there is nothing to delete."
        )

    def __reduce__(self):  # OSError's pickling would lose the message (e.g. across processes)
        return type(self), (self.run_dir, self.holder, self.resume, self.same_process, self.record)


@dataclass
class RunLock:
    """The write lock of one run folder, as a context manager: ``with RunLock(run_dir): ...``.

    :meth:`acquire` creates ``run_dir/.lock`` if needed (the folder must exist), takes the lock
    without waiting and records this process as the holder, or raises :class:`RunLockedError`.
    ``held`` says whether a lock is really held: it stays False where the platform or file
    system offers none (see the module docstring). :meth:`release` is idempotent. ``resume`` says,
    in the refusal, how the folder's command continues a stopped run.
    """

    run_dir: Path
    resume: str = "--resume"
    held: bool = field(default=False, init=False)
    _fd: int | None = field(default=None, init=False, repr=False)
    _owner: int | None = field(default=None, init=False, repr=False)  # pid that acquired it

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)

    @property
    def path(self) -> Path:
        """The lock file, ``<run_dir>/.lock``."""
        return self.run_dir / LOCK_NAME

    def acquire(self) -> "RunLock":
        """Take the folder's lock without waiting and record this process as its holder; returns self.
        RunLockedError (an OSError) naming the holder when another writer has it; RuntimeError when this
        RunLock already holds it. Without ``fcntl``, or on a file system refusing ``flock`` (warned
        once), it returns unlocked."""
        if self._fd is not None:
            raise RuntimeError(f"the lock of {self.run_dir} is already acquired by this RunLock")
        if fcntl is None:
            return self
        fd = _open_lock_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in _HELD_ERRNOS:
                holder, record = _read_record(self.run_dir)
                if holder is not None and not _may_be_running(holder):
                    # a killed writer's record, not yet overwritten by the new holder, which has
                    # taken the lock but not written its own (a few microseconds): name no one
                    holder = None
                same = holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname()
                raise RunLockedError(self.run_dir, holder, self.resume, same, record) from None
            _warn_unlockable(self.run_dir, err)
            return self
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, LockHolder.this_process().to_json().encode(), 0)
        except BaseException:
            os.close(fd)  # closing drops the lock
            raise
        self._fd, self.held, self._owner = fd, True, os.getpid()
        return self

    def release(self) -> None:
        """Clear the holder record and drop the lock (only this process's reference in a forked
        child); nothing when not held."""
        fd, self._fd, self.held = self._fd, None, False
        if fd is None:
            return
        if self._owner != os.getpid():
            # a forked child unwinding through ``with RunLock`` / run_sharded's finally: the lock
            # and the record are the parent's; unlocking the shared file description would drop
            # the parent's lock while it still writes. Only drop this process's reference.
            os.close(fd)
            return
        try:
            os.ftruncate(fd, 0)  # a record left behind would name a holder that is gone
            # unlock before closing: a child forked meanwhile (a DataLoader worker, a 'fork' pool)
            # shares the descriptor, and closing ours alone would leave the lock held by it
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:  # pragma: no cover - the lock is dropped by the close below all the same
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _open_lock_file(path: Path) -> int:
    """A read-write descriptor of the lock file ``path``, created if absent (no O_TRUNC: the
    holder's record stays). A symbolic link there, or anything but a regular file, is refused
    with an OSError naming it: the holder truncates and rewrites the file, so a ``.lock`` link in
    an unpacked run folder emptied whatever file it pointed at."""
    import stat

    def refused(what: str) -> OSError:
        return OSError(f"{path} is {what}, where a run's lock file belongs; kinetic_fm writes into its lock "
                       "file, so remove it (the lock file is made again)")

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP or path.is_symlink():
            raise refused("a symbolic link") from None
        if err.errno == errno.EISDIR:
            raise refused("not a regular file") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise refused("not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _may_be_running(holder: LockHolder) -> bool:
    """False when ``holder`` names a process of this host that no longer exists; True otherwise
    (another host's, or one that exists, perhaps under a reused pid: no way to tell)."""
    if holder.host != socket.gethostname():
        return True
    try:
        os.kill(holder.pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by another user
        return True
    return True


def _warn_unlockable(run_dir: Path, err: OSError) -> None:
    global _warned_unlockable
    if _warned_unlockable:
        return
    _warned_unlockable = True
    warnings.warn(f"cannot lock run folder {run_dir} ({err.strerror or err}); going on without the "
                  "one-writer lock, so make sure no other process writes into it (this file system "
                  "may not support flock; warned once per process)", RuntimeWarning, stacklevel=3)
