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
from .distributed import Coordinator, World, world_session
from .lock import RunLock, RunLockedError
from .manifest import ResumeMismatchError, RunManifest, fingerprint, read_manifest, sha256_file
from .plan import ShardPlan
from .runner import RunOutcome, prepare_run_dir, run_sharded
from .shards import (IncompleteRunError, inspect_shard, merge_shards, profile_from_table, read_profile, read_run,
                     read_samples)

__all__ = [
    "Coordinator", "IncompleteRunError", "ResumeMismatchError", "RunLock", "RunLockedError", "RunManifest",
    "RunOutcome", "ShardPlan", "World", "fingerprint", "inspect_shard", "merge_shards", "prepare_run_dir",
    "profile_from_table", "read_manifest", "read_profile", "read_run", "read_samples", "run_sharded",
    "sha256_file", "world_session",
]
