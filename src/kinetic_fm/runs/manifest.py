"""The run manifest: what a run directory was made with, written once, checked on every resume.

``manifest.json`` records the configuration (every parameter that determines the per-sample
numbers), identity hashes of the field / model weights / dataset, the seed range and shard
size, and library versions. Resuming compares the stored manifest with the new one field by
field and refuses when any compared field differs, naming it (:class:`ResumeMismatchError`, whose
``differences`` a command line words in its flags).
Versions are informational: a different torch or kinetic_fm version, or another kinetic_fm source
(a changed checkout), gives a warning only.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from ..run_files import MANIFEST_NAME
from .atomic import atomic_write_text
from .plan import ShardPlan

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Difference:
    """One compared field that differs between a stored manifest and a new one: its dotted name
    (``config.steps``, ``seeds.n``, ``shard_size``), the stored value and the new one, each
    ``"<absent>"`` where that side lacks the key. Printed as ``config.steps (stored 60, now 30)``."""

    field: str
    stored: Any
    now: Any

    def __str__(self) -> str:
        return f"{self.field} (stored {self.stored!r}, now {self.now!r})"


class ResumeMismatchError(ValueError):
    """A resumed run's configuration or identity differs from the stored manifest.

    ``differences``: the differing fields (:class:`Difference`), for a caller that words them its
    own way (``kfm sample`` names the flags); empty where the refusal is of another kind."""

    def __init__(self, message: str, differences: tuple[Difference, ...] = ()):
        super().__init__(message)
        self.differences = tuple(differences)

    def __reduce__(self):  # the differences survive pickling (they cross ranks in a verdict)
        return type(self), (str(self), self.differences)


class DamagedManifestError(ValueError):
    """``manifest.json`` is not a manifest any more: not UTF-8 JSON, a key missing or of the wrong
    type, or a seed range no run writes (written atomically, it was damaged after the run: edited,
    or a copy cut short).

    ``fault``: what is wrong in the words that follow the file's name (" is not valid JSON (...); was
    it edited or cut short?", "'s 'n' must be an integer, ..."), for a caller that names the file its
    own way ("--samples RUN: its manifest.json ..."). ``way_on``: how to go on, which the message ends
    with. ``path``: the file, which the message starts with where known: "PATH: the run manifest
    FAULT WAY_ON"."""

    def __init__(self, fault: str, way_on: str = "", path: str | os.PathLike | None = None):
        self.fault, self.way_on, self.path = fault, way_on, path
        named = ("" if path is None else f"{path}: ") + f"the run manifest{fault}"
        super().__init__(f"{named} {way_on}" if way_on else named)

    def __reduce__(self):
        return type(self), (self.fault, self.way_on, self.path)


# a reader's way on from a damaged manifest (a resume says its own, knowing the command's settings)
_DAMAGED_ADVICE = ("Put back a good copy of it, or write it again with the kfm sample command that made the run and "
                   "--resume --repair (it checks that command's settings against the shards' receipts)")


_SOURCE_DIGEST: str | None = None


def source_digest(package: Path | None = None) -> str:
    """First 16 hex digits of a sha256 over a package's ``.py`` files (names and bytes);
    ``package`` defaults to kinetic_fm's own folder, whose digest is computed once per process.

    The version stays 0.1.0 until a release, so a resume under a changed checkout (whose numbers
    may differ in their last bits) went without the warning a different version gives."""
    global _SOURCE_DIGEST
    if package is None and _SOURCE_DIGEST is not None:
        return _SOURCE_DIGEST
    root = Path(__file__).resolve().parents[1] if package is None else Path(package)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    found = digest.hexdigest()[:16]
    if package is None:
        _SOURCE_DIGEST = found
    return found


def library_versions() -> dict[str, str]:
    """Versions of the libraries that determine the numbers: kinetic_fm (and a digest of its
    source, :func:`source_digest`), torch, numpy, python."""
    import numpy
    import torch

    from .._version import __version__

    return {
        "kinetic_fm": __version__,
        "kinetic_fm_source": source_digest(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _canonical(obj: Any) -> Any:
    """JSON-able form of ``obj``; tensors and arrays become dtype, shape and a sha256 of their bytes."""
    import numpy as np

    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch.Tensor, without importing torch
        obj = obj.detach().cpu().contiguous().numpy()
    if isinstance(obj, np.ndarray):
        data = np.ascontiguousarray(obj)
        return {"dtype": str(data.dtype), "shape": list(data.shape),
                "sha256": hashlib.sha256(data.tobytes()).hexdigest()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    raise TypeError(f"cannot fingerprint an object of type {type(obj).__name__}")


def fingerprint(obj: Any) -> str:
    """sha256 (hex) of a nested structure of dicts, lists, scalars, strings, tensors and arrays."""
    text = json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def hash_chunks(digest: Any, handle: BinaryIO, chunk_bytes: int = 1 << 20, limit: int | None = None) -> Any:
    """Feed ``handle`` from where it stands to its end (or ``limit`` bytes on) into the ``hashlib``
    object ``digest``, ``chunk_bytes`` at a time (a large file is never read whole); returns ``digest``."""
    left = math.inf if limit is None else limit
    while left > 0 and (block := handle.read(int(min(chunk_bytes, left)))):
        digest.update(block)
        left -= len(block)
    return digest


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """sha256 (hex) of a file's bytes, read in chunks (for model weights and dataset files)."""
    with open(path, "rb") as handle:
        return hash_chunks(hashlib.sha256(), handle, chunk_bytes).hexdigest()


def _differences(stored: Any, now: Any, prefix: str) -> list[Difference]:
    """A :class:`Difference` (``key (stored a, now b)``) for each difference, walking into mappings
    both sides hold; where one side holds a mapping and the other not (a run with KTS resumed
    without), the key is named once with both values (it read "config.shaping (stored '<absent>',
    now None)", backwards, beside one line per parameter)."""
    if isinstance(stored, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(stored) | set(now)):
            out += _differences(stored.get(key, "<absent>"), now.get(key, "<absent>"),
                                f"{prefix}.{key}" if prefix else str(key))
        return out
    if json.dumps(stored, sort_keys=True) == json.dumps(now, sort_keys=True):
        return []
    return [Difference(prefix, stored, now)]


@dataclass(frozen=True)
class RunManifest:
    """Everything that determines a run's per-sample results, plus provenance.

    ``kind`` names the producer (``"sample"`` or a study stage); ``config`` holds every parameter
    that changes the numbers (JSON-able); ``identity`` holds hashes of what is sampled (field
    parameters, model weights file, dataset). ``versions``, ``created`` and ``runtime`` (settings
    that do not change the numbers, e.g. batch size and world size of the first launch) are
    informational and never compared. ``runtime`` also holds what a reader needs and the compared
    config already pins, e.g. the step times of a ``kfm sample --profile`` run (``profile_times``):
    fixed by grid and steps, their last bits may differ on another machine, as the numbers may.
    """

    kind: str
    config: dict[str, Any]
    identity: dict[str, Any]
    seed_start: int
    n: int
    shard_size: int
    versions: dict[str, str] = field(default_factory=library_versions)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    runtime: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ShardPlan(self.seed_start, self.n, self.shard_size)  # validates the numbers
        # normalise to what JSON gives back (tuples -> lists, ...) so comparisons are exact
        object.__setattr__(self, "config", json.loads(json.dumps(_canonical(self.config))))
        object.__setattr__(self, "identity", json.loads(json.dumps(_canonical(self.identity))))

    @property
    def plan(self) -> ShardPlan:
        """The run's shards: seeds ``seed_start`` .. ``seed_start + n − 1`` in shards of ``shard_size``."""
        return ShardPlan(self.seed_start, self.n, self.shard_size)

    def compared(self) -> dict[str, Any]:
        """The part of the manifest a resume must match exactly."""
        return {
            "kind": self.kind,
            "config": self.config,
            "identity": self.identity,
            "seeds": {"seed_start": self.seed_start, "n": self.n},
            "shard_size": self.shard_size,
        }

    @property
    def run_id(self) -> str:
        """sha256 of :meth:`compared`; stamped into every shard so foreign shards are rejected."""
        return fingerprint(self.compared())

    def differences(self, other: "RunManifest") -> list[str]:
        """Dotted names of compared fields that differ, each with both values.

        Values are compared as the run id sees them, as JSON text: Python's ``1 == 1.0 == True``
        would let through a resume whose run id differs, and every shard would then read as
        another run's."""
        return [str(d) for d in self.differing(other)]

    def differing(self, other: "RunManifest") -> list[Difference]:
        """:meth:`differences` as :class:`Difference` records (field, stored value, new value)."""
        return _differences(self.compared(), other.compared(), "")

    def version_differences(self, other: "RunManifest") -> list[str]:
        """``"package old -> new"`` for each recorded package version that differs from ``other``'s."""
        return [f"{k} {self.versions.get(k)} -> {other.versions.get(k)}"
                for k in sorted(set(self.versions) | set(other.versions))
                if self.versions.get(k) != other.versions.get(k)]

    def to_json(self) -> str:
        """The manifest as indented JSON, with its format version and run id."""
        body = {"format": FORMAT_VERSION, "run_id": self.run_id, **asdict(self)}
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "RunManifest":
        """The manifest ``text`` holds. DamagedManifestError (a ValueError) for text that is not a JSON
        object of the manifest's fields and types; ValueError for another format version."""
        try:
            body = json.loads(text)
        except json.JSONDecodeError as err:
            raise DamagedManifestError(f" is not valid JSON ({err}); was it edited or cut short?") from None
        if not isinstance(body, dict):
            raise DamagedManifestError(f" must be a JSON object, got {type(body).__name__}; was it edited?")
        if "format" not in body:  # every format writes it: a manifest without it was edited, not a newer one
            raise DamagedManifestError(" lacks 'format'; was it edited?")
        if body["format"] != FORMAT_VERSION:
            raise ValueError(f"unsupported manifest format {body['format']!r} (expected {FORMAT_VERSION})")
        kinds = {"kind": str, "config": dict, "identity": dict, "seed_start": int, "n": int, "shard_size": int}
        # informational, never compared: a manifest without them still reads, but one of another type
        # would fail where it is read (versions on a resume, runtime in read_profile)
        informational = {"versions": dict, "created": str, "runtime": dict}
        for name, kind in {**kinds, **informational}.items():
            if name not in body:
                if name in informational:
                    continue
                raise DamagedManifestError(f" lacks {name!r}; was it edited?")
            value = body[name]
            if not isinstance(value, kind) or isinstance(value, bool):
                what = {str: "a string", dict: "a JSON object", int: "an integer"}[kind]
                got = type(value).__name__ if kind is dict else repr(value)
                raise DamagedManifestError(f"'s {name!r} must be {what}, got {got}; was it edited?")
        try:
            return cls(**{k: body[k] for k in kinds}, versions=body.get("versions", {}),
                       created=body.get("created", ""), runtime=body.get("runtime", {}))
        except ValueError as err:  # the seed range or shard size no run writes (ShardPlan's refusal)
            raise DamagedManifestError(f"'s seeds do not make a run: {err}; was it edited?") from None


def read_manifest(run_dir: str | os.PathLike) -> RunManifest:
    """Load ``run_dir/manifest.json``; FileNotFoundError naming the path when absent,
    :class:`DamagedManifestError` naming it, what is wrong and how to go on when damaged."""
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run_dir must be a path (str or os.PathLike), got {type(run_dir).__name__}")
    path = Path(run_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no run manifest at {path}")
    try:
        return RunManifest.from_json(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        fault = f" is not UTF-8 text ({err}); was it edited or cut short?"
    except DamagedManifestError as err:
        fault = err.fault
    except ValueError as err:  # another format
        raise ValueError(f"{path}: {err}") from None
    raise DamagedManifestError(fault, _DAMAGED_ADVICE, path)


def write_manifest(run_dir: str | os.PathLike, manifest: RunManifest) -> Path:
    """Write ``run_dir/manifest.json`` atomically (the folder must exist)."""
    return atomic_write_text(Path(run_dir) / MANIFEST_NAME, manifest.to_json())


def check_resume(stored: RunManifest, new: RunManifest) -> list[str]:
    """Raise :class:`ResumeMismatchError` naming every differing field; return version warnings."""
    diffs = stored.differing(new)
    if diffs:
        raise ResumeMismatchError(
            "cannot resume: the run was made with a different configuration; differing field(s): "
            + "; ".join(map(str, diffs)) + ". Start a new run directory, or resume with the stored settings.",
            tuple(diffs))
    return stored.version_differences(new)
