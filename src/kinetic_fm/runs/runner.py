"""Drive a sharded run: prepare or resume the run directory, compute this rank's shards, merge.

:func:`run_sharded` is generic: it knows nothing of sampling. The caller supplies the manifest
and ``compute(seeds, advance) -> table`` that turns a contiguous block of seeds into one row per
seed (a ``seed`` column plus anything else) and calls ``advance(k)`` as it finishes k samples,
for the progress bar. ``kfm sample`` builds on it (``kfm reproduce`` caches its stages in its own
workspace instead).

Crash safety: the manifest is written once, atomically, before any shard; each shard is renamed
into place only when complete. On ``resume=True`` complete shards are skipped and missing or
invalid ones (see :func:`~kinetic_fm.runs.shards.inspect_shard`) are recomputed, so a run killed
at any moment and resumed ends with the same table as an uninterrupted one.

One writer at a time: the run holds the folder's lock (:mod:`~kinetic_fm.runs.lock`) from before
it looks into the folder until the merged table is written; a second run on the same folder
stops with :class:`~kinetic_fm.runs.lock.RunLockedError` before computing anything.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Union

import numpy as np
import pyarrow as pa

from ..run_files import MANIFEST_NAME
from .atomic import atomic_write_bytes, holds_only_leftovers, remove_temporaries
from .distributed import Coordinator, World
from .lock import RunLock
from .manifest import (DamagedManifestError, ResumeMismatchError, RunManifest, check_resume, read_manifest,
                       write_manifest)
from .shards import (RESULTS_NAME, SHARD_DIR, discard_shard, inspect_shard, merge_shards, write_results,
                     write_shard)

if TYPE_CHECKING:
    import pandas

ShardTable = Union[pa.Table, "pandas.DataFrame"]
ComputeFn = Callable[[np.ndarray, Callable[[int], None]], ShardTable]


@dataclass(frozen=True)
class RunOutcome:
    """What this process did: shard indices computed, skipped (already complete) and redone
    (found invalid, recomputed); ``table`` is the merged, verified table on rank 0, else None."""

    run_dir: Path
    manifest: RunManifest
    computed: tuple[int, ...]
    skipped: tuple[int, ...]
    redone: tuple[int, ...]
    table: pa.Table | None


def prepare_run_dir(run_dir: str | os.PathLike, manifest: RunManifest, *, resume: bool, repair: bool = False,
                    log: Callable[[str], None] | None = None) -> list[str]:
    """Create a fresh run directory with its manifest, or validate it for a resume.

    Returns warnings (library version changes). Raises ValueError when the folder already holds
    a run and ``resume`` is False, when a non-empty folder is not a run directory, and
    :class:`~kinetic_fm.runs.manifest.ResumeMismatchError` when the stored manifest differs.
    A damaged manifest is refused (:class:`~kinetic_fm.runs.manifest.DamagedManifestError`), or with
    ``repair`` written again from ``manifest`` when the run id the shards' receipts record is its
    (see :func:`stored_manifest`), said through ``log``.
    It takes no lock: :func:`run_sharded` calls it holding the folder's
    :class:`~kinetic_fm.runs.lock.RunLock`, and other callers should do the same.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=resume)
    if (run_dir / MANIFEST_NAME).is_file():
        warnings = check_resume(stored_manifest(run_dir, manifest, repair=repair, log=log), manifest)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(run_dir, manifest)  # before any shard exists
        warnings = []
    (run_dir / SHARD_DIR).mkdir(exist_ok=True)
    return warnings


def stored_manifest(run_dir: Path, manifest: RunManifest | None = None, *, repair: bool = False,
                    log: Callable[[str], None] | None = None) -> RunManifest:
    """The run's manifest; a damaged one (written atomically, so damaged after the run, e.g. by an
    editor or a copy cut short) is refused saying how to go on, as a missing one is.

    The shards cannot rebuild it (their receipts record the run id, a sha256 of the compared
    settings, not the settings), but they vouch for one rebuilt from the command that made the run:
    ``manifest`` (this call's) gives the run id a receipt records only if every compared setting is
    the run's. The refusal says whether it does; with ``repair`` and a receipt recording its run id,
    ``manifest`` is written in place of the damaged one (kept beside it as ``manifest.json.damaged``)
    and returned. Its informational parts (versions, creation time, runtime) are this call's.
    ``manifest`` None: the caller's settings are not known yet (``kfm sample`` reads the manifest
    before its net loads); the refusal then says how ``repair`` would check them."""
    try:
        return read_manifest(run_dir)
    except DamagedManifestError as err:
        matching, receipts = _receipts_of(run_dir, manifest)
        if manifest is None and receipts:
            hint = (f"if this command made the run, rerun it with --repair (repair=True): that writes {MANIFEST_NAME} "
                    f"again from its settings only when they give the run id its {_receipts(receipts)} record, "
                    "and else touches nothing; or put back a good copy")
        elif repair and matching:
            damaged = run_dir / MANIFEST_NAME
            atomic_write_bytes(damaged.with_name(MANIFEST_NAME + ".damaged"), damaged.read_bytes())
            write_manifest(run_dir, manifest)
            (log or _stderr)(f"{damaged} was damaged: written again from this command's settings, which give the run "
                             f"id {matching} of its {receipts} shard receipts record (the damaged file is kept as "
                             f"{MANIFEST_NAME}.damaged)")
            return manifest
        elif matching:
            hint = (f"this command's settings give the run id its {_receipts(matching)} record: rerun it with "
                    f"--repair (repair=True) to write {MANIFEST_NAME} again from them, or put back a good copy")
        else:
            vouch = (f"none of its {_receipts(receipts)} records the run id this command's settings give, so "
                     "they are not the run's" if receipts else "its shards hold no receipt to check settings by")
            hint = f"{vouch}: put back a good copy of {MANIFEST_NAME} to resume it"
        way_on = (f"Without a readable one the run's settings are unknown, so it cannot be resumed as it is; {hint}, "
                  "or choose a new --out (or remove the folder) to start over")
        raise DamagedManifestError(err.fault, way_on, err.path) from None


def _receipts_of(run_dir: Path, manifest: RunManifest | None) -> tuple[int, int]:
    """``(matching, receipts)``: how many shard receipts under ``run_dir`` record ``manifest``'s run
    id (0 without one), and how many there are (an unreadable one counts, and matches nothing)."""
    import json

    paths = sorted((run_dir / SHARD_DIR).glob("shard-*.json"))
    run_id = None if manifest is None else manifest.run_id
    matching = 0
    for path in paths:
        try:
            receipt = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        matching += isinstance(receipt, dict) and run_id is not None and receipt.get("run_id") == run_id
    return matching, len(paths)


def _receipts(count: int) -> str:
    return f"{count} shard receipt{'' if count == 1 else 's'}"


def check_run_dir(run_dir: str | os.PathLike, *, resume: bool) -> None:
    """ValueError when ``run_dir`` may not take this run: it already holds a run and ``resume``
    is False, its ``shards`` is not a folder, or it holds files but no run. A missing or empty
    folder passes; nothing is created. ``kfm sample`` calls it before its net loads,
    :func:`prepare_run_dir` again, under the folder's lock, before it writes."""
    run_dir = Path(run_dir)
    if (run_dir / MANIFEST_NAME).is_file():
        if not resume:
            raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it, or choose a new --out")
        shards = run_dir / SHARD_DIR
        if (shards.exists() or shards.is_symlink()) and not shards.is_dir():  # else mkdir: "[Errno 17] File exists"
            what = "a file" if shards.is_file() else "a broken link" if not shards.exists() else "something else"
            raise ValueError(f"{run_dir} holds a run, but its {SHARD_DIR} is {what}, not a folder ({shards}): move "
                             "or delete it and resume (the run's shards are computed again), or choose a new --out")
    _refuse_foreign_folder(run_dir)


def _refuse_foreign_folder(run_dir: Path) -> None:
    """ValueError when ``run_dir`` holds files but no run; a killed writer's temporaries and a
    lock file (left by a run that stopped before its manifest) do not count. A folder holding a
    run's shards or results is named as a run that lost its manifest."""
    if (run_dir / MANIFEST_NAME).is_file() or not run_dir.exists():
        return
    if holds_only_leftovers(run_dir):
        return
    left = [RESULTS_NAME] if (run_dir / RESULTS_NAME).is_file() else []
    if (run_dir / SHARD_DIR).is_dir():
        count = sum(1 for _ in (run_dir / SHARD_DIR).glob("shard-*.parquet"))
        left.append(f"{SHARD_DIR}/ with {count} shard file{'' if count == 1 else 's'}")
    if left:
        raise ValueError(
            f"{run_dir} looks like a run whose {MANIFEST_NAME} is missing (it holds {' and '.join(left)}): "
            "without it the run's settings are unknown, so it cannot be resumed; put "
            f"{MANIFEST_NAME} back to resume it, or choose a new --out (or remove the folder) to start over")
    raise ValueError(f"{run_dir} is not empty and holds no {MANIFEST_NAME}; choose a new --out")


def _as_table(result: ShardTable) -> pa.Table:
    if isinstance(result, pa.Table):
        return result
    return pa.Table.from_pandas(result, preserve_index=False)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_sharded(
    run_dir: str | os.PathLike,
    manifest: RunManifest,
    compute: ComputeFn,
    *,
    resume: bool = False,
    coordinator: Coordinator | None = None,
    progress: bool = True,
    log: Callable[[str], None] = _stderr,
    lock: RunLock | None = None,
    repair: bool = False,
    on_start: Callable[[], None] | None = None,
) -> RunOutcome:
    """Compute this rank's shards of the run and, on rank 0, merge them after a barrier.

    Every rank builds the same ``manifest``; rank 0 alone creates or checks the run directory and
    broadcasts its verdict, so all ranks fail alike on a mismatched resume. Rank r owns shards
    i with i % world_size == r (see :meth:`~kinetic_fm.runs.plan.ShardPlan.for_rank`).

    The folder's lock (:class:`~kinetic_fm.runs.lock.RunLock`) is taken by rank 0 alone, before
    it looks into the folder, and held until it has written the merged table, which is after every
    rank's last shard (the barrier). The ranks of one job share the folder by design, each writing
    its own shards, so they must not lock one another out; a second job on the folder is stopped
    by its own rank 0, whose refusal reaches all of that job's ranks through the verdict, before
    any of them samples. Per-rank locks (``.lock.rank{r}``) would add nothing: every job has a
    rank 0, and a job of another world size gives rank r other shards, so a per-rank lock would
    not stand for the shards a rank writes. Two calls on one folder in one process (threads)
    exclude each other as two processes do.

    ``lock``: rank 0's :class:`~kinetic_fm.runs.lock.RunLock` of ``run_dir``, already acquired
    by the caller (``kfm sample`` takes it before loading its model, so that no writer starts in
    between); it is kept, not taken again, and released at the end like the runner's own. A
    lock of another folder is refused (ValueError) and left held: the caller releases it.

    ``repair`` (with ``resume``): a damaged ``manifest.json`` is written again from ``manifest``
    when the shards' receipts record its run id (:func:`prepare_run_dir`); else it is refused.

    A resume of a run stored under other library versions goes on with a UserWarning for each
    package that differs (``kfm`` shows it as its command's warning); ``log`` says the rest.

    ``on_start``: called once, on rank 0, after the folder has taken the run and before any shard is
    computed, and only when some rank has shards to compute: a refused call, or a resume of a finished
    run, does not call it (``kfm sample`` gives its warnings on the run's settings there).
    """
    run_dir = Path(run_dir)
    coord = coordinator or Coordinator(World.from_env())
    if lock is None:
        lock = RunLock(run_dir)  # acquired on rank 0 only, in _open_run_dir
    elif lock.run_dir.resolve() != run_dir.resolve():
        raise ValueError(f"lock is the lock of {lock.run_dir}, not of the run folder {run_dir}")
    try:
        _open_run_dir(run_dir, manifest, resume, coord, lock, log, repair)
        return _compute_and_merge(run_dir, manifest, compute, coord, progress, log, on_start)
    finally:
        lock.release()


def _open_run_dir(run_dir: Path, manifest: RunManifest, resume: bool, coord: Coordinator, lock: RunLock,
                  log: Callable[[str], None], repair: bool = False) -> None:
    """Rank 0 locks and prepares (or checks) the folder; every rank gets its verdict."""
    world = coord.world
    verdict: tuple[str, object] | None = None
    if world.is_main:
        try:
            _refuse_foreign_folder(run_dir)  # before a lock file is put into someone else's folder
            run_dir.mkdir(parents=True, exist_ok=True)
            if not lock.held:  # held: the caller's, taken before it prepared the run
                lock.acquire()  # a second writer stops here, before it reads or writes anything else
            # said only under the lock: a twin --resume that the lock stops said it too, then was refused
            starts = resume and not (run_dir / MANIFEST_NAME).is_file()
            prepared = prepare_run_dir(run_dir, manifest, resume=resume, repair=repair, log=log)
            verdict = ("ok", prepared, manifest, str(run_dir.resolve()))
            if starts:  # a typo in --out, say
                log(f"--resume: {run_dir} holds no run yet; starting a new one")
            # killed writers' leftovers, before any rank writes (they await the verdict)
            remove_temporaries((run_dir, run_dir / SHARD_DIR))
        except (ValueError, OSError) as err:
            verdict = ("error", str(err))
            coord.from_main(verdict)
            raise
    verdict = coord.from_main(verdict)
    if verdict[0] == "error":  # rank 0 has raised (and reports) the error itself
        raise ValueError(f"rank {world.rank}: stopped because rank 0 refused the run directory")
    if world.distributed:
        # every rank must run rank 0's run: one started with other settings found the folder's
        # shards "written by a different run", deleted them and wrote its own (helper-150)
        _, _, main_manifest, main_dir = verdict
        differs = [] if world.is_main else main_manifest.differences(manifest)
        if not world.is_main and str(run_dir.resolve()) != main_dir:
            differs.append(f"run folder (rank 0 {main_dir}, this rank {run_dir.resolve()})")
        reports = coord.from_all(differs)
        odd = [(rank, d) for rank, d in enumerate(reports) if d]
        if odd:
            rank, d = odd[0]
            raise ResumeMismatchError(
                f"rank {rank} was started with other settings than rank 0 ({'; '.join(d)}; 'stored' is rank "
                f"0's, 'now' rank {rank}'s); every rank must run the same command. Nothing was sampled"
                + (f" ({len(odd)} ranks differ)" if len(odd) > 1 else ""))
    if world.is_main:
        import warnings

        from ..checks import caller_outside_the_package

        for warning in verdict[1]:  # a warning, which kfm prints as its command's ("kfm sample: warning: ...")
            warnings.warn(f"resuming with different library versions: {warning}", UserWarning,
                          stacklevel=caller_outside_the_package())


def _compute_and_merge(run_dir: Path, manifest: RunManifest, compute: ComputeFn, coord: Coordinator,
                       progress: bool, log: Callable[[str], None],
                       on_start: Callable[[], None] | None = None) -> RunOutcome:
    """This rank's missing or invalid shards, then (rank 0) the verified merge; ``on_start`` (rank 0)
    first, when any rank has shards to compute."""
    world = coord.world
    tag = f"[rank {world.rank}] " if world.distributed else ""
    plan = manifest.plan
    pending, skipped, redone = [], [], []
    for index in plan.for_rank(world.rank, world.world_size):
        status = inspect_shard(run_dir, manifest, index)
        if status.complete:
            skipped.append(index)
            continue
        if status.state == "invalid":
            log(f"{tag}shard {status.path.name} is invalid ({status.reason}); redoing it")
            redone.append(index)
        discard_shard(run_dir, plan, index)
        pending.append(index)
    if skipped and world.is_main:
        log(f"{tag}resume: {len(skipped)} complete shard(s) kept, {len(pending)} to compute")
    # every rank joins (whether it was given on_start or not): rank 0 may have none of the shards left
    if any(coord.from_all(bool(pending))) and world.is_main and on_start is not None:
        on_start()

    from tqdm.auto import tqdm

    total = sum(len(plan.seeds(i)) for i in pending)
    with tqdm(total=total, unit="sample", desc=f"{tag}sampling", disable=not (progress and world.is_main),
              dynamic_ncols=True) as bar:
        for index in pending:
            table = _as_table(compute(plan.seeds(index), bar.update))
            write_shard(run_dir, manifest, index, table)

    coord.barrier()
    merged = None
    if world.is_main:
        merged = merge_shards(run_dir, manifest)
        write_results(run_dir, merged)
    return RunOutcome(run_dir, manifest, tuple(pending), tuple(skipped), tuple(redone), merged)
