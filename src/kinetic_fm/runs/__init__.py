"""Run directories: manifest, atomically written Parquet shards, resume, torchrun sharding.

Layout of a run directory::

    run/
      manifest.json                      config, identity hashes, seeds, shard size, versions
      shards/shard-00000-of-00040.parquet  one row per seed, written atomically
      results.parquet                    merged, verified table (rank 0, at the end)
      .lock                              one writer at a time (flock, held while a run writes)

See :func:`run_sharded` (drive a run), :func:`read_run` (verified table of a finished run),
:func:`read_samples` (its final samples) and :func:`read_profile` (its energy profiles).
"""
from typing import Any

from ..lazy import lazy_attribute, package_dir

# public name -> the module that defines it, imported on first access: runs.shards and runs.runner bring
# pyarrow, which locking a folder, writing a file atomically and reading a manifest do without
_LAZY = {name: f"{__name__}.{module}" for module, names in {
    "distributed": ("Coordinator", "World", "world_session"),
    "lock": ("RunLock", "RunLockedError"),
    "manifest": ("ResumeMismatchError", "RunManifest", "fingerprint", "read_manifest", "sha256_file"),
    "plan": ("ShardPlan",),
    "runner": ("RunOutcome", "prepare_run_dir", "run_sharded"),
    "shards": ("IncompleteRunError", "inspect_shard", "merge_shards", "profile_from_table", "read_profile",
               "read_run", "read_samples"),
}.items() for name in names}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    return lazy_attribute(globals(), _LAZY, name)


def __dir__() -> list[str]:
    return package_dir(globals(), _LAZY)
