"""A study's output folder: cached stages that survive interruption.

Each stage result is a dict of tensors / numbers / strings saved with ``torch.save`` to a temporary
name and atomically renamed, and loaded back with ``weights_only=True``. Its file name carries a
hash of the stage's configuration, so changing a setting recomputes that stage instead of reusing
a stale result, and an interrupted run resumes from the last finished stage.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..runs.atomic import atomic_write, holds_only_leftovers, remove_temporaries


# Bump when a change in the library alters what a cached stage would contain (the cache is
# keyed by configuration, so an old result would otherwise be reused silently).
# 2: seventh session (median bandwidth, precision/recall at ball edges, singular fields' last step).
# 3: twenty-second session (KTS gains on one time through expm1, a stage inside a step at τ:
#    shaped samples change in their last bits, constant forms more).
CACHE_EPOCH = 3
# The same for the trained nets' folders (models/): bump when training would give other weights.
# It stays at the epoch they last changed in, so that a change of sampling retrains no net.
MODEL_EPOCH = 2
#: the files of ``cache/`` :meth:`Workspace.prune_stages` never deletes, by prefix: the study entries (each study
#: keeps its latest, :mod:`~kinetic_fm.studies.study_cache`) and the judging classifiers (trained weights; the
#: nets of ``models/`` are pruned by their own rule, ``kfm reproduce``'s ``_prune_models``)
UNPRUNED = ("study-", "classifier-")
#: the nets a workspace trains, each in its run folder ``models/<kind>-<hash>`` (:meth:`Workspace.model_path`)
MODEL_KINDS = ("general", "memorizer", "classifier")
_HASH_CHARS = 12  # hex digits of a config_hash


def config_hash(config: Any, epoch: int | None = None) -> str:
    """A short stable hash of a (dataclass or JSON-able) configuration and ``epoch``
    (:data:`CACHE_EPOCH` when None)."""
    payload = asdict(config) if is_dataclass(config) else config
    epoch = CACHE_EPOCH if epoch is None else epoch
    text = json.dumps({"epoch": epoch, "config": payload}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]


class Workspace:
    """``out/`` holds ``cache/`` (stage results), ``tables/`` (Parquet), ``figures/`` and the report.

    ``progress``: the run shows progress, a bar for every sampling it computes and a line (:meth:`say`)
    before each long step, so that no step of minutes goes by without a sign of life.
    """

    def __init__(self, out: str | os.PathLike, *, progress: bool = False):
        self.root = Path(out)
        self.progress = progress
        for sub in ("cache", "tables", "models"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._kept: dict[Path, dict[str, Any]] = {}  # stage file -> its result, for cached(keep=True)
        # stages this workspace object read from cache/ and computed: the report says when a run
        # only re-read earlier results (its seconds are then the metrics' alone)
        self.stages_loaded = 0
        self.stages_computed = 0
        # the same for whole studies' results (:func:`~kinetic_fm.studies.study_cache.cached_study`)
        self.studies_loaded = 0
        self.studies_computed = 0
        self._reads: list[set[Path]] = []  # open recordings of the stage files asked for (recording_reads)
        # sha256 of the files this workspace object hashed, by (resolved path, size, mtime_ns, inode): a stage
        # several studies read is hashed once per run, one rewritten since is hashed again (study_cache)
        self.file_digests: dict[tuple[Path, int, int, int], str] = {}
        # the run folders of models/ asked for (model_path): the nets this run's results are a function of
        self.models_read: set[str] = set()

    def remove_leftover_temporaries(self) -> int:
        """Delete the temporaries writers killed mid-write left anywhere in the workspace (caches,
        tables, figures, the report, the model folders; :func:`~kinetic_fm.runs.atomic.remove_temporaries`);
        returns how many went. Call it holding the workspace's lock: one in ``tables/`` sat beside
        the tables of the report. A run folder inside whose own lock another process holds (a
        ``kfm train --out`` into ``models/`` by hand) keeps its temporaries: they are being written."""
        return remove_temporaries((self.root,), recursive=True)

    def say(self, text: str) -> None:
        """Print ``[kfm reproduce] text`` (stdout, flushed) when the run shows progress, on a line of its own:
        the progress bars open (stderr, on the same terminal) are cleared first and drawn again below it."""
        if self.progress:
            import sys

            from tqdm.auto import tqdm

            tqdm.write(f"[kfm reproduce] {text}", file=sys.stdout)
            sys.stdout.flush()

    def stage_path(self, name: str, config: Any, epoch: int | None = None) -> Path:
        """The file of stage ``name``'s result for ``config`` (a dataclass or JSON-able value):
        ``<root>/cache/<name>-<config_hash(config, epoch)>.pt``, whether or not it exists yet; see
        :meth:`cached` for ``epoch``."""
        return self.root / "cache" / f"{name}-{config_hash(config, epoch)}.pt"

    def cached(self, name: str, config: Any, compute: Callable[[], dict[str, Any]], *,
               keep: bool = False, epoch: int | None = None) -> dict[str, Any]:
        """Return the stored result of stage ``name`` for ``config``, computing and saving it if absent.

        ``keep``: also hold the result in memory, so that later calls for the same stage on this
        workspace return that very object instead of reading the file again (a stage several
        studies read). They share it, so none may modify it in place. ``epoch``: the cache epoch
        of the key (:data:`CACHE_EPOCH` when None; a trained net's weights give :data:`MODEL_EPOCH`).
        """
        path = self.stage_path(name, config, epoch)
        for reads in self._reads:
            reads.add(path)
        if path in self._kept:
            return self._kept[path]
        result = self._load_or_compute(path, compute)
        if keep:
            self._kept[path] = result
        return result

    @contextmanager
    def recording_reads(self) -> Iterator[set[Path]]:
        """Within the block, collect the file of every stage :meth:`cached` is asked for (read,
        held in memory or computed) into the set yielded: what a study's result depends on."""
        reads: set[Path] = set()
        self._reads.append(reads)
        try:
            yield reads
        finally:
            self._reads = [r for r in self._reads if r is not reads]

    def _load_or_compute(self, path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if path.exists():
            try:
                result = torch.load(path, map_location="cpu", weights_only=True)
                self.stages_loaded += 1
                return result
            except Exception:  # a truncated file from a killed run: redo the stage
                path.unlink(missing_ok=True)
        result = compute()
        atomic_torch_save(result, path)
        self.stages_computed += 1
        return result

    def prune_stages(self, kept: set[str]) -> tuple[int, int]:
        """Delete the stage files of ``cache/`` (``<stage>-<hash>.pt``, those named by :data:`UNPRUNED` aside)
        whose names are not in ``kept``; returns how many files went and their bytes. Call it holding the
        workspace's lock, at the end of a run that finished, with the stages it read (:meth:`recording_reads`)
        and those a kept result depends on. A file that cannot be deleted is left."""
        files = size = 0
        for path in (self.root / "cache").glob("*.pt"):
            if path.name.startswith(UNPRUNED) or path.name in kept:
                continue
            try:
                length = path.stat().st_size
                path.unlink()
            except OSError:  # gone meanwhile, or a folder that refuses it
                continue
            files, size = files + 1, size + length
        return files, size

    def model_path(self, name: str, config: Any) -> Path:
        """``models/<name>-<hash>``, the run folder of net ``name`` (one of :data:`MODEL_KINDS`) trained for
        ``config`` (not made here); its name joins :attr:`models_read`, and the folder, where it exists, is
        marked read now: its mtime, the order ``kfm reproduce`` keeps the nets of each kind in (a marker file
        would be a foreign file in a run folder, which training and the spent-folder test refuse or count; the
        folder's mtime moves otherwise only when a file inside is added or removed, a use of it too)."""
        if name not in MODEL_KINDS:
            raise ValueError(f"name must be one of {MODEL_KINDS}, got {name!r}")
        path = self.root / "models" / f"{name}-{config_hash(config, MODEL_EPOCH)}"
        self.models_read.add(path.name)
        now = time.time_ns()   # the clock's nanoseconds: the file system's own can tie within milliseconds
        try:
            os.utime(path, ns=(now, now))
        except OSError:   # not made yet (made now: its mtime), or a folder that refuses it (read-only)
            pass
        return path

    @staticmethod
    def is_model_folder(name: str) -> bool:
        """Whether ``name`` is a net's run folder name as :meth:`model_path` makes it: ``<kind>-<hash>``, one of
        :data:`MODEL_KINDS` and a :func:`config_hash`."""
        kind, _, digest = name.rpartition("-")
        return (kind in MODEL_KINDS and len(digest) == _HASH_CHARS
                and all(c in "0123456789abcdef" for c in digest))

    def model_dir(self, name: str, config: Any) -> Path:
        """:meth:`model_path`, made if absent."""
        path = self.model_path(name, config)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def remove_model(self, folder: Path, *, spent_only: bool = False) -> int:
        """Delete the run folder ``folder`` of ``models/``, lock file included; returns its files' bytes once it
        is gone (0 when it stays, in whole or in part). It stays when it is not a folder, while another process
        holds its lock (a ``kfm train --out`` into it by hand), and when it holds a resume state (a training
        to resume). With ``spent_only`` it stays when it holds anything but our leftovers (its lock file, killed
        writers' temporaries: :func:`~kinetic_fm.runs.atomic.holds_only_leftovers`), locked or not (it holds no
        work); without it, where no lock can be taken (no ``fcntl``, a file system refusing ``flock``), unless its
        training finished (its final weights written): there a folder another process trains cannot be told from a
        dead one. Call it holding the
        workspace's lock: a lock file is deleted safely only where no writer of ours opens it meanwhile
        (:mod:`kinetic_fm.runs.lock`), and only this run writes into ``models/`` then."""
        import shutil

        from ..models.train import RESUME_FILE
        from ..runs.lock import RunLock

        if folder.is_symlink() or not folder.is_dir():  # without fcntl the lock below never looks at it
            return 0
        try:
            lock = RunLock(folder).acquire()
        except OSError:  # RunLockedError, or a folder gone or that this user may not write
            return 0
        try:
            if spent_only:
                if not holds_only_leftovers(folder):
                    return 0
            elif (folder / RESUME_FILE).exists() or not (lock.held or (folder / "final.safetensors").is_file()):
                return 0
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
            shutil.rmtree(folder, ignore_errors=True)
            return 0 if folder.exists() else size
        finally:
            lock.release()

    def remove_tables_except(self, names: set[str]) -> None:
        """Delete ``tables/*.parquet`` not named in ``names``: tables of earlier runs with other
        settings or studies would sit beside this run's and disagree with them."""
        for path in (self.root / "tables").glob("*.parquet"):
            if path.stem not in names:
                path.unlink()

    def report_figures(self) -> set[str]:
        """The names of the figures the folder's current ``report.md`` shows (``figures/<name>.png``),
        the ones an earlier run wrote; empty without a report."""
        import re

        report = self.root / "report.md"
        if not report.is_file():
            return set()
        return set(re.findall(r"\]\(figures/([a-z0-9_-]+)\.png\)", report.read_text(encoding="utf-8")))

    def remove_figures(self, names: set[str]) -> None:
        """Delete ``figures/<name>.png`` for each of ``names``: called with the figures an earlier
        report showed and this one does not (a run of fewer studies into a fuller run's folder
        kept them beside a report without them). A PNG no report of ours wrote is never touched."""
        for name in names:
            (self.root / "figures" / f"{name}.png").unlink(missing_ok=True)

    def save_table(self, name: str, frame: Any) -> Path:
        """Write a per-sample table as ``tables/<name>.parquet`` (atomically)."""
        path = self.root / "tables" / f"{name}.parquet"
        atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
        return path


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` through a temporary file and a rename (:func:`atomic_write`)."""
    from ..models.checkpoint import write_torch

    atomic_write(path, lambda tmp: write_torch(obj, tmp))
