"""Cached study results: a re-run of a finished ``kfm reproduce`` reads each study's tables,
claims and report sections (figures included) from ``cache/`` instead of recomputing them.

The sampling runs were cached already, but a re-run still recomputed every metric, interval and
figure from them. A study's entry is keyed on everything its result is a function of, so that no
setting, input or code change can reuse a stale one:

- the whole run configuration (every study's, and the assets', including the judge's settings);
- a digest of the assets the study reads: the training, held-out and memorizer splits and their
  labels, the weights of the judging classifier and of both velocity nets, the memorizer's
  checkpoint files (their headers and the ``STUDY_WEIGHTS`` tensors the studies load from them), the
  principal space and the mean image (:func:`assets_digest`);
- a digest of the library's source and the versions of python, torch, numpy, scipy, pandas and
  matplotlib (:func:`code_digest`): any edit of the code recomputes every study;
- a digest of the matplotlib style the figures are drawn in (:func:`style_digest`): they are drawn
  under the caller's rcParams (a matplotlibrc, ``plt.style.use`` before calling the library), so
  another style draws them again rather than showing the figures of the last one;
- the contents of the sampling stages (``cache/*.pt``) the study read, recorded as it ran and
  checked when its entry is read: a stage rewritten since (another device, a damaged file redone)
  recomputes the study.

An entry also names the run folders of ``models/`` of the nets its study reads (those its assets digest covers), so
that ``kfm reproduce`` keeps them with it (:func:`entries_reads`); it keeps each kind's latest nets read too,
whatever the entries: those outlive a change of the library, which the entries do not.

An entry is written atomically once its study has finished, so an interruption in a later study
keeps it. Each study keeps its :data:`ENTRIES_KEPT` most recently used entries written by the current
library (:func:`code_digest`), so going back to an earlier configuration (``--quick``, then ``--tiny``, then
``--quick`` again; another ``--seed`` and back) reads it instead of measuring the study again; entries of
another library (each edit of it would add one), of another format or that cannot be read are deleted when
an entry is written. A study that warned stores no result (a re-run would not warn again), nor one whose tables
do not survive the Parquet round trip unchanged: its entry records only the stages it read, so that they are
kept with it (a run back at its configuration measures it again without sampling). Entries are loaded with
``weights_only=True``: plain strings, numbers, bytes and Parquet bytes, no pickled objects.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

import torch

from ..models.checkpoint import weights_digest
from ..runs.manifest import sha256_file
from .output import StudyOutput
from .workspace import Workspace, atomic_torch_save

ENTRY_FORMAT = 4  # bump when the layout of an entry changes (3: sections keep their terms; 4: its code digest)
#: entries kept per study, of the current library: the three presets and one more configuration (a seed, a
#: judge); fixed, not a setting: an entry (its tables and figures) is a small part of ``cache/``, and the sampling
#: stages its inputs list are kept with it (``kfm reproduce`` prunes the others), so a run back at one measures
#: nothing (a study that warned: measures it again, sampling nothing); a configuration evicted samples and measures
#: again
ENTRIES_KEPT = 4
#: the weights the studies load from a net's .safetensors files (``load_model``'s ``weights``): the files'
#: digest covers these tensors and the header, not the training run's other half, which no study reads
STUDY_WEIGHTS = "ema"


def code_digest() -> str:
    """sha256 of the library's Python source (every ``kinetic_fm/**/*.py``, by relative path) and
    of the versions of python and the numerical packages the studies call."""
    from importlib import metadata

    from ..runs.manifest import source_digest

    package = Path(__file__).resolve().parents[1]
    if next(package.rglob("*.py"), None) is None:  # installed without its source: no digest tells versions apart
        raise OSError(f"no Python source under {package} to digest")
    digest = hashlib.sha256(f"source={source_digest()}\0".encode())  # computed once per process
    for name in ("torch", "numpy", "scipy", "pandas", "matplotlib"):
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{name}={version}\0".encode())
    digest.update(f"python={sys.version}\0torch={torch.__version__}".encode())
    return digest.hexdigest()


#: rcParams no PNG the figures module writes depends on: other backends and output formats, the
#: interactive session's keys and windows, pyplot's hooks, the save dialog's folder and the default
#: format (the figures name png)
_UNDRAWN_FAMILIES = ("animation.", "backend", "docstring.", "interactive", "keymap.", "macosx.", "pdf.", "pgf.",
                     "ps.", "svg.", "tk.", "toolbar", "webagg.", "figure.hooks", "figure.max_open_warning",
                     "figure.raise_window", "savefig.directory", "savefig.format")


def style_digest() -> str:
    """sha256 of the current matplotlib rcParams that can change a figure's PNG (every one but
    :data:`_UNDRAWN_FAMILIES`), by name and value. The font files installed are not read (only the
    family names asked for): after a font is installed or removed, the cached figures are still shown."""
    try:
        import matplotlib
    except ImportError:  # no figure can be drawn either: no style to tell apart
        return "no matplotlib"
    # by name first: reading "backend" would resolve it (importing pyplot, probing GUI toolkits: half a second)
    drawn = sorted((name, repr(matplotlib.rcParams[name])) for name in list(matplotlib.rcParams)
                   if not name.startswith(_UNDRAWN_FAMILIES))
    return hashlib.sha256(repr(drawn).encode()).hexdigest()


def assets_digest(assets: Any, unread: Collection[str] = ()) -> str:
    """sha256 of every field of ``assets`` (a :class:`~kinetic_fm.studies.assets.Assets`) a study
    reads: tensors by dtype, shape and bytes, nets by class, structure and state dict, checkpoint
    files by their header and the weights a study loads from them (:func:`weights_digest`). Fields
    starting with ``_`` (values computed from the others) and those named in ``unread`` (a net the
    study never reads, which a run of other studies may not have trained) are left out. Raises TypeError
    on a value of a kind it cannot digest (that study is then not cached).

    The memorizer's final EMA weights are hashed twice, as ``memorizer`` and in its last checkpoint
    (about 10 ms a run for the presets' default nets): keying one by the other would need proof that they
    are equal (reading both, about the hash's own cost), or a change to either alone (a caller's
    Assets, a checkpoint rewritten) would reuse a stale entry."""
    digest = _assets_digests(assets, {"": tuple(unread)})[""]
    if isinstance(digest, Exception):
        raise digest
    return digest


def _assets_digests(assets: Any, unread: dict[str, Collection[str]]) -> dict[str, str | Exception]:
    """:func:`assets_digest` of ``assets`` but ``unread[name]`` for each name of ``unread``, each field walked once
    (its checkpoint files read once, its tensors copied once): the digests of one run's studies, which differ only
    in the nets they read. A digest stays one hash whose input is that of its fields in turn: the digests share one
    hash while their fields agree (the data, the classifier), a copy of it where they part, and a field's bytes go
    to each digest that reads it. The TypeError or OSError of a field stands for the digest of each name reading it.
    """
    groups = [(hashlib.sha256(), list(unread))] if unread else []   # a hash per names reading the same fields so far
    failed: dict[str, Exception] = {}
    try:
        fields = dataclasses.fields(assets)
    except TypeError as error:                                    # not an Assets (a test's stand-in): no digest
        return {name: error for name in unread}
    for f in fields:
        if f.name.startswith("_"):
            continue
        parted = []
        for digest, names in groups:
            reading = [n for n in names if f.name not in unread[n]]
            if reading and len(reading) < len(names):
                parted += [(digest, reading), (digest.copy(), [n for n in names if f.name in unread[n]])]
            else:
                parted.append((digest, names))
        groups = parted
        readers = [(digest, names) for digest, names in groups if f.name not in unread[names[0]]]
        if not readers:
            continue
        fan = _FanOut([digest for digest, _ in readers])
        try:
            fan.update(f.name.encode() + b"=")
            _digest_value(getattr(assets, f.name), fan)
        except (TypeError, OSError) as err:
            failed.update({n: err for _, names in readers for n in names})
    return {n: failed.get(n) or digest.hexdigest() for digest, names in groups for n in names}


class _FanOut:
    """A hash's ``update`` that feeds each of ``digests``."""

    def __init__(self, digests: list) -> None:
        self.digests = digests

    def update(self, data: Any) -> None:
        for digest in self.digests:
            digest.update(data)


def _digest_value(value: Any, digest: Any) -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor:{value.dtype}:{tuple(value.shape)}:".encode())
        digest.update(flat.view(torch.uint8).numpy())  # the buffer itself, not a copy of it
    elif isinstance(value, torch.nn.Module):
        digest.update(f"module:{type(value).__qualname__}:{value!r}:".encode())
        for name, tensor in value.state_dict().items():
            digest.update(name.encode())
            _digest_value(tensor, digest)
    elif isinstance(value, Path):
        try:
            if value.suffix == ".safetensors":
                digest.update(b"weights:" + bytes.fromhex(weights_digest(value, weights=STUDY_WEIGHTS)))
                return
        except ValueError:  # a header that does not parse: keyed on every byte, as any other file
            pass
        digest.update(b"file:" + bytes.fromhex(sha256_file(value)))
    elif isinstance(value, dict):
        digest.update(b"dict{")
        for key in sorted(value, key=repr):
            _digest_value(key, digest)
            _digest_value(value[key], digest)
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}[".encode())
        for item in value:
            _digest_value(item, digest)
        digest.update(b"]")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        digest.update(f"{type(value).__qualname__}(".encode())
        for f in dataclasses.fields(value):
            digest.update(f.name.encode() + b"=")
            _digest_value(getattr(value, f.name), digest)
        digest.update(b")")
    else:
        raise TypeError(f"cannot digest a {type(value).__qualname__}")


def file_digest(ws: Workspace, path: Path) -> str:
    """sha256 (hex) of a file's bytes, read in chunks, once per workspace object (one ``kfm reproduce``
    run) for each version of the file: kept in ``ws.file_digests`` by its resolved path, size, mtime_ns
    and inode, so a file rewritten since (atomically, a new inode) is hashed again."""
    stat = path.stat()
    version = (path.resolve(), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if version not in ws.file_digests:
        ws.file_digests[version] = sha256_file(path)
    return ws.file_digests[version]


def study_key(config: dict, assets: Any, unread: Collection[str] = ()) -> dict | None:
    """What a study's entry of one run is keyed on besides the study's name: the run
    configuration ``config`` (a JSON-able dict), :func:`assets_digest` of ``assets`` but its fields
    ``unread``, :func:`code_digest` and :func:`style_digest`; None when some input cannot be digested
    (nothing is then cached): a value of a kind it cannot digest, a file it cannot read (a weights file
    whose header does not parse is keyed on its bytes)."""
    return study_keys(config, assets, {"": unread})[""]


def study_keys(config: dict, assets: Any, unread: dict[str, Collection[str]]) -> dict[str, dict | None]:
    """:func:`study_key` of ``config``, ``assets`` and ``unread[name]`` for each study ``name`` of ``unread``, the
    same keys, each field of ``assets`` walked once for them all (:func:`_assets_digests`)."""
    try:
        code, style = code_digest(), style_digest()
    except (TypeError, OSError):
        return {name: None for name in unread}
    digests = _assets_digests(assets, unread)
    return {name: None if isinstance(digest, Exception) else
            {"config": config, "assets": digest, "code": code, "style": style} for name, digest in digests.items()}


def cached_study(ws: Workspace, name: str, key: dict | None, run: Callable[[], StudyOutput],
                 nets: Collection[str] | None = None) -> StudyOutput:
    """The result of ``run()``, study ``name``'s for :func:`study_key` ``key``: read from
    ``cache/study-<name>-<hash>.pt`` when an entry for the same key exists and the sampling stages
    it read are unchanged; else computed and stored unless ``key`` is None (the entry of a study that warned
    or whose tables do not round-trip records only the stages it read: see the module), keeping the study's
    :data:`ENTRIES_KEPT` most recently used entries of ``key``'s code digest (:func:`_prune`). The entry lists the
    folders of ``ws.models_read`` of the kinds ``nets`` (``general``, ``memorizer``: those the study reads; None:
    all). Counts ``ws.studies_loaded`` and ``ws.studies_computed``."""
    output = stored_study(ws, name, key)
    if output is not None:
        ws.studies_loaded += 1
        return output
    path = None if key is None else _entry_path(ws, name, key)
    warned: list[warnings.WarningMessage] = []
    try:
        with ws.recording_reads() as read, warnings.catch_warnings(record=True) as warned:
            output = run()
    finally:  # shown as the study raised them, after it (or after its interruption)
        for w in warned:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    ws.studies_computed += 1
    if path is not None:
        stored = None if warned else _encode(output)  # None: never read back, but its stages are kept with it
        inputs = {p.name: file_digest(ws, p) for p in sorted(read) if p.parent == ws.root / "cache"}
        atomic_torch_save({"format": ENTRY_FORMAT, "code": key["code"], "inputs": inputs,
                           "models": sorted(m for m in ws.models_read if nets is None or m.rpartition("-")[0] in nets),
                           "output": stored}, path)
        _mark_used(path)
        _prune(path, name, key["code"])
    return output


def stored_study(ws: Workspace, name: str, key: dict | None) -> StudyOutput | None:
    """Study ``name``'s result for :func:`study_key` ``key`` as an earlier run stored it in ``ws``'s ``cache/``
    (its entry marked used), or None where there is none to read (never finished at this key, warned, damaged, a
    stage it read changed since): a run of other studies shows it as it was, measuring nothing."""
    if key is None:
        return None
    path = _entry_path(ws, name, key)
    output = _read(ws, path) if path.exists() else None
    if output is not None:
        _mark_used(path)
    return output


def _entry_path(ws: Workspace, name: str, key: dict) -> Path:
    return ws.stage_path(f"study-{name}", {"study": name, **key})


@dataclasses.dataclass(frozen=True)
class EntryReads:
    """What the study entries in a workspace's ``cache/`` read (:func:`entries_reads`).

    Attributes:
        inputs: the names of the stage files of ``cache/`` their inputs list.
        models: the names of the run folders of ``models/`` (``<kind>-<hash>``) they list (an entry written
            before entries listed their nets lists none).
    """

    inputs: frozenset[str]
    models: frozenset[str]


def entries_reads(ws: Workspace) -> EntryReads:
    """The stages and nets every study entry in ``ws``'s ``cache/`` that loads lists (each study's kept entries,
    those of a study that warned among them, and those of another library or format a run of that study has not
    pruned yet): what a run back at one of their configurations reads. Each entry (its tables and figures) is
    loaded once."""
    inputs: set[str] = set()
    models: set[str] = set()
    for _, entry in _entries(ws.root / "cache"):
        if entry is None:
            continue
        if isinstance(entry.get("inputs"), dict):
            inputs.update(entry["inputs"])
        if isinstance(entry.get("models"), list):
            models.update(entry["models"])
    return EntryReads(frozenset(inputs), frozenset(models))


def _entries(cache: Path, name: str = "*") -> Iterator[tuple[Path, dict | None]]:
    """Each entry ``study-<name>-<hash>.pt`` in ``cache`` and its contents: None for one that does not
    load as an entry does (damaged, another layout, gone meanwhile), an entry no run reads."""
    for path in cache.glob(f"study-{name}-*.pt"):
        yield path, load_stage(path)


def load_stage(path: Path) -> dict | None:
    """The dict a stage or entry file of ``cache/`` holds, or None for one that does not load as such (damaged,
    another layout, gone meanwhile)."""
    try:
        stage = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return stage if isinstance(stage, dict) else None


def _mark_used(path: Path) -> None:
    """Set the entry's mtime to now, the order :func:`_prune` keeps entries in (the clock's nanoseconds:
    a file system's own timestamps can tie within a few milliseconds). A folder that refuses it (read-only)
    only loses that order."""
    now = time.time_ns()
    try:
        os.utime(path, ns=(now, now))
    except OSError:
        pass


def _prune(path: Path, name: str, code: str) -> None:
    """Delete study ``name``'s entries beside ``path`` (just written) but the :data:`ENTRIES_KEPT` most
    recently used (by mtime, ``path`` among them) written by library ``code``: those of another library or
    format, or that do not load, go whatever their age."""
    current = []
    for other, entry in _entries(path.parent, name):
        if other == path:
            continue
        try:
            used = other.stat().st_mtime_ns
        except OSError:  # gone meanwhile
            continue
        if entry is not None and entry.get("format") == ENTRY_FORMAT and entry.get("code") == code:
            current.append((used, other))
        else:
            other.unlink(missing_ok=True)
    for _, other in sorted(current, reverse=True)[ENTRIES_KEPT - 1:]:
        other.unlink(missing_ok=True)


def _read(ws: Workspace, path: Path) -> StudyOutput | None:
    """The study result stored at ``path``, or None when it cannot be used: unreadable (a truncated
    file), of another format, of no result (the study warned or its tables do not round-trip), or one of
    the stages it read changed or is gone."""
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if entry["format"] != ENTRY_FORMAT or entry["output"] is None:
            return None
        for stage, digest in entry["inputs"].items():
            stage_path = ws.root / "cache" / stage
            if not stage_path.is_file() or file_digest(ws, stage_path) != digest:
                return None
        return _decode(entry["output"])
    except Exception:  # a damaged entry: recompute (it is rewritten then)
        return None


def _frame_bytes(frame: Any) -> bytes | None:
    """``frame`` as Parquet bytes, or None unless reading them back gives an identical frame
    (values, dtypes, index, column names and attrs)."""
    import pandas as pd

    try:
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        data = buffer.getvalue()
        back = pd.read_parquet(io.BytesIO(data))
        pd.testing.assert_frame_equal(back, frame, check_exact=True)
        if back.attrs != frame.attrs:
            return None
        # pandas 2.0 compares an object column's tuples equal to the arrays Parquet gives back
        for column in frame.columns[frame.dtypes.eq(object).to_numpy()]:
            if any(type(a) is not type(b) for a, b in zip(back[column], frame[column])):
                return None
    except Exception:
        return None
    return data


def _encode(output: StudyOutput) -> dict | None:
    """``output`` as plain values (strings, ints, bytes), or None when some part cannot be stored
    exactly: a table that does not round-trip, or a claim, section or figure of another type."""
    from .report import Claim, Figure, Section

    def frames(pairs):
        coded = [(label, _frame_bytes(frame)) for label, frame in pairs]
        return None if any(data is None for _, data in coded) else coded

    tables = frames(output.tables.items())
    if tables is None or any(type(c) is not Claim for c in output.claims):
        return None
    sections = []
    for section in output.sections:
        if type(section) is not Section or any(type(f) is not Figure for f in section.figures):
            return None
        section_tables = frames(section.tables)
        if section_tables is None:
            return None
        sections.append({"title": section.title, "text": section.text, "tables": section_tables,
                         "figures": [(f.name, f.caption, bytes(f.png)) for f in section.figures],
                         "formats": {str(k): str(v) for k, v in section.formats.items()},
                         "terms": {str(k): str(v) for k, v in section.terms.items()}})
    return {"name": output.name, "tables": tables,
            "claims": [dataclasses.astuple(c) for c in output.claims], "sections": sections}


def _decode(entry: dict) -> StudyOutput:
    import pandas as pd

    from .report import Claim, Figure, Section

    def frame(data: bytes):
        return pd.read_parquet(io.BytesIO(data))

    sections = [Section(title=s["title"], text=s["text"], tables=[(label, frame(d)) for label, d in s["tables"]],
                        figures=[Figure(name, caption, png) for name, caption, png in s["figures"]],
                        formats=dict(s["formats"]), terms=dict(s["terms"]))
                for s in entry["sections"]]
    return StudyOutput(name=entry["name"], tables={label: frame(d) for label, d in entry["tables"]},
                       claims=[Claim(*fields) for fields in entry["claims"]], sections=sections)
