"""Safe checkpoint files: safetensors for weights, ``torch.load(weights_only=True)`` for the rest.

Nothing here ever unpickles arbitrary objects: a file that would need to run code to load
(a pickle with a ``__reduce__`` payload, a pickled ``nn.Module``) is refused with
:class:`UnsafeCheckpointError` before any of its code runs.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..run_files import TRAIN_CONFIG_NAME
from ..runs.atomic import atomic_write
from .registry import JUDGES, build_model
from .run_config import DamagedTrainConfigError, read_train_config


class UnsafeCheckpointError(ValueError):
    """A checkpoint torch's weights-only reader refuses: it holds Python objects that would execute
    code when unpickled, or it is a pickle of protocol 4 or later, which that reader does not read
    (whatever it holds). Either way the file is re-saved to be read."""


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """:func:`~kinetic_fm.runs.atomic.atomic_write` (a killed process never leaves a half-written
    file), creating the folder first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def save_state(state: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save a dict of tensors / numbers / strings / nested dicts, atomically."""
    _atomic_write(Path(path), lambda tmp: write_torch(state, tmp))


def write_torch(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` through a Python file, so that a full disk or a file-size limit
    raises ``OSError`` ("[Errno 28] No space left on device"): torch's own writer reports it as
    "RuntimeError: [enforce fail at inline_container.cc] unexpected pos", which the commands
    showed as a traceback. The bytes stream to the file as torch writes them (no copy in memory)."""
    import io

    class Recording(io.RawIOBase):  # torch turns the write's OSError into its RuntimeError: keep it
        def __init__(self, file) -> None:
            super().__init__()
            self.file, self.error = file, None

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            try:
                return self.file.write(data)
            except OSError as err:
                self.error = err
                raise

    with open(path, "wb") as file:
        sink = Recording(file)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise


#: the way on from a training's resume state that cannot be read (the run's other files are of no help)
FROM_STEP_0 = ("move it away and resume to train again from step 0 (the checkpoints hold weights, not the "
                "optimiser's state), or choose another folder")

# how a file refused for the code it holds is re-saved so that it loads, by what it is meant to hold (``holds``)
_RESAVE = {
    "weights": "Only plain tensors and state dicts are accepted; re-save the weights with "
               "torch.save(model.state_dict(), ...) or safetensors from a trusted environment.",
    "array": "Only a tensor or a dict of tensors is read (a NumPy array given to torch.save is pickled with "
             "NumPy's classes); re-save the array with np.save('x.npy', a), or torch.save(torch.from_numpy(a), ...), "
             "from a trusted environment.",
    "state": "A training's resume state holds no object that runs code: this one was not written by "
             f"kinetic_fm's training. {FROM_STEP_0[0].upper()}{FROM_STEP_0[1:]}.",
}

# how a file of pickle protocol 4 or later is re-saved: at torch.save's own protocol (its contents are not read)
_RESAVE_PROTOCOL = {
    "weights": "re-save the weights with torch.save without pickle_protocol (or with pickle_protocol=2), or as "
               "safetensors, from a trusted environment.",
    "array": "re-save the tensor with torch.save without pickle_protocol (or with pickle_protocol=2), or the array "
             "with np.save('x.npy', a), from a trusted environment.",
    "state": "re-save it with torch.save without pickle_protocol (or with pickle_protocol=2), from a trusted "
             f"environment, and resume; or {FROM_STEP_0}.",
}


def load_state(path: str | os.PathLike, *, mmap: bool = False, holds: str = "weights") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors; with ``mmap``,
    the tensors are mapped from the file, not read (for a caller that reads the other values only).
    ``holds`` ("weights", "array" or "state": a training's resume state) says what the file is meant to
    hold, for the way out the refusal of a file holding code, or of pickle protocol 4 or later, names.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: the file needs arbitrary code to load (it is not executed).
        ValueError: the file is not a torch checkpoint at all.
    """
    if holds not in _RESAVE:
        raise ValueError(f"holds must be one of {sorted(_RESAVE)}, got {holds!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()
        detail = next((line for line in reason if "GLOBAL" in line or "Unsupported" in line), reason[0] if reason else "")
        needed = re.search(r"GLOBAL (\S+)", detail)
        if needed is None and not _starts_as_torch_writes(path):  # a text file, say
            raise ValueError(f"{path}: not a torch checkpoint ({detail.strip()})") from None
        if detail.strip() == f"Unsupported operand {pickle.FRAME[0]}":  # protocol 4's first opcode: nothing read yet
            protocol = _pickle_protocol(path)
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it is a pickle of protocol {protocol or '4 or later'}, which torch's "
                f"weights-only reader does not read (torch.save writes protocol 2 unless given pickle_protocol). "
                f"Its contents are not read; {_RESAVE_PROTOCOL[holds]}"
            ) from None
        # torch's text names the global and then suggests allowlisting it (add_safe_globals) or weights_only=False,
        # which contradicts the way out below (and which no kfm command can take): only the name is kept
        what = (detail.strip() if needed is None
                else f"it needs {_global_name(needed[1])}, which torch's weights-only reader does not build")
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it contains Python objects that would run code when unpickled "
            f"({what}). {_RESAVE[holds]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path}: not a readable torch checkpoint ({err})") from None
    except Exception as err:
        # the weights-only unpickler reads other bytes as opcodes and fails inside its own stack
        # (KeyError 101 for "hello", IndexError, struct.error); only a file torch cannot have
        # written is renamed, so an error met while reading a real checkpoint surfaces as itself
        if _starts_as_torch_writes(path):
            raise
        raise ValueError(f"{path}: not a torch checkpoint (the unpickler failed: {type(err).__name__}: {err})") from None


def _global_name(name: str) -> str:
    """The global a pickle names, as it names it: torch's refusal drops the ``builtins.`` of a builtin
    (``print`` for ``builtins.print``)."""
    return name if "." in name else f"builtins.{name}"


def _pickle_protocol(path: Path) -> int | None:
    """The protocol of the pickle ``path`` holds (a legacy file's first, or a torch zip's data.pkl),
    from its PROTO opcode; None where it has none."""
    import zipfile

    with open(path, "rb") as fh:
        head = fh.read(2)
    if head == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.rpartition("/")[2] == "data.pkl"), None)
                if name is None:
                    return None
                with archive.open(name) as fh:
                    head = fh.read(2)
        except (zipfile.BadZipFile, OSError):
            return None
    return head[1] if len(head) == 2 and head[:1] == pickle.PROTO else None


def _starts_as_torch_writes(path: Path) -> bool:
    """Whether the file starts as torch.save writes: a zip (b"PK") or, in the legacy format, a
    pickle of protocol 2 or later (b"\\x80")."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    return head[:1] == b"\x80" or head == b"PK"


def save_weights(tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write tensors (made contiguous, on CPU) to a .safetensors file atomically, with the
    umask's permissions like every other file written here."""
    from safetensors.torch import save

    flat, storages = {}, set()
    for name, value in tensors.items():
        value = value.detach().to("cpu").contiguous()
        storage = value.untyped_storage().data_ptr()
        if value.numel() and storage in storages:  # safetensors refuses tensors sharing memory
            value = value.clone()                   # (save_model(net, path, ema=net))
        storages.add(storage)
        flat[name] = value
    # save_file creates its file with mode 0600 whatever the umask; the bytes written by Python
    # get the umask's mode (one extra copy of the weights in memory, small for the nets saved here)
    _atomic_write(Path(path), lambda tmp: tmp.write_bytes(save(flat, metadata=metadata)))


def weights_digest(path: str | os.PathLike, chunk_bytes: int = 1 << 20, *, weights: str | None = None) -> str:
    """sha256 (hex) of what a weights file holds, independent of how its header is ordered.

    A .safetensors header is a JSON map whose key order the writer does not fix (the metadata
    comes out in a different order in each process), so two files of bit-identical tensors and
    metadata can differ byte for byte. Here the header (every tensor's name, dtype, shape and place,
    and the metadata) is hashed with sorted keys, then the tensor bytes as stored: all of them, or
    with ``weights`` ("ema", "model": ``load_model``'s argument) those of the ``<weights>.*`` tensors
    alone, what ``load_model(path, weights=weights)`` reads; every tensor's when the file holds none
    of those. Other files: the sha256 of their bytes.
    """
    import hashlib
    import struct

    from ..runs.manifest import hash_chunks

    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if path.suffix == ".safetensors":
            try:
                (length,) = struct.unpack("<Q", fh.read(8))
                if length > path.stat().st_size - 8:
                    raise ValueError(f"its header claims {length} bytes, more than the file holds")
                header = json.loads(fh.read(length))
                if not isinstance(header, dict):
                    raise ValueError("its header is not a JSON object")
                spans = sorted(tuple(entry["data_offsets"]) for name, entry in header.items()
                               if weights is not None and name.startswith(f"{weights}."))
            except (struct.error, ValueError, TypeError, KeyError) as err:
                raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
            digest.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
            if spans:
                for start, end in spans:
                    fh.seek(8 + length + start)
                    hash_chunks(digest, fh, chunk_bytes, limit=end - start)
                return digest.hexdigest()
        hash_chunks(digest, fh, chunk_bytes)  # every tensor's bytes, or a whole other file
    return digest.hexdigest()


def load_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors from a .safetensors file or a torch state-dict file (``weights_only=True``).

    A torch file holding ``{"state_dict": ...}`` is unwrapped and a DataParallel ``module.``
    prefix is stripped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if path.is_dir():
            raise IsADirectoryError(f"{path}: a folder, not a safetensors weights file")
        if not path.is_file():
            raise FileNotFoundError(f"weights not found: {path}")
        try:
            return load_file(path)
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    state = load_state(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict) and {"step", "model", "optimizer", "rng"} <= state.keys():  # training's resume.pt
        raise ValueError(f"{path}: a training run's resume state, not a weights file; load the run folder "
                         f"{path.parent} (its final.safetensors) or one of its checkpoints/step_*.safetensors")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def model_metadata(model: nn.Module, **extra: Any) -> dict[str, str]:
    """safetensors metadata that lets :func:`load_model` rebuild ``model``."""
    kind = getattr(model, "kind", None)
    if kind is None or not hasattr(model, "config"):
        raise ValueError(f"{type(model).__name__} has no kind/config; only kinetic_fm.models nets can be saved this way")
    return {"kinetic_fm.kind": kind, "kinetic_fm.config": json.dumps(model.config),
            **{f"kinetic_fm.{k}": json.dumps(v) for k, v in extra.items()}}


def save_model(model: nn.Module, path: str | os.PathLike, *, ema: nn.Module | None = None, **extra: Any) -> None:
    """Save a kinetic_fm velocity net (and optionally its EMA copy) as one .safetensors file.

    Keys are ``model.<name>`` and ``ema.<name>``; the metadata records the model kind, its
    config and ``extra`` values (JSON), so :func:`load_model` needs only the file.
    """
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    save_weights(tensors, path, model_metadata(model, **extra))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded ``kinetic_fm.*`` metadata of a file written by :func:`save_model`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    out = {}
    for key, value in meta.items():
        if key.startswith("kinetic_fm."):
            name = key.removeprefix("kinetic_fm.")
            try:
                out[name] = value if name == "kind" else json.loads(value)
            except ValueError as err:
                raise ValueError(f"{path}: its metadata {key!r} is not valid JSON ({err})") from None
    return out


def resolve_weights(path: str | os.PathLike) -> Path:
    """The file :func:`load_model` reads for ``path``: the file itself, or in a training run
    folder ``final.safetensors``, else the latest ``checkpoints/step_*.safetensors``."""
    path = Path(path)
    if not path.is_dir():
        return path
    final = path / "final.safetensors"
    # by step number: names compare as text, and step_10000000 sorted before step_9999999
    found = [final] if final.is_file() else sorted(
        (p for p in (path / "checkpoints").glob("step_*.safetensors")
         if p.stem[len("step_"):].isdigit() and p.is_file()),
        key=lambda p: int(p.stem[len("step_"):]))
    if not found:
        raise FileNotFoundError(f"{path}: no final.safetensors or checkpoints/step_*.safetensors")
    return found[-1]


def recorded_sample_shape(weights: str | os.PathLike) -> tuple[int, ...] | None:
    """One sample's shape as training recorded it for the weights file ``weights``, or None.

    Read from the file's ``sample_shape`` metadata (written by training), else from the
    ``data_shape`` in the ``config.json`` of the run folder holding it (``final.safetensors``
    beside it, or ``checkpoints/step_*.safetensors`` one level down; runs trained before the
    metadata existed; a file of another name or place reads no config.json): None where
    that records none (another program's config.json, or one damaged beyond recognition: not UTF-8,
    JSON that is no object; see :func:`~kinetic_fm.models.run_config.read_train_config`), and
    :class:`~kinetic_fm.models.run_config.DamagedTrainConfigError` naming it, what is wrong and how to go
    on where a training run's is damaged (not JSON though it starts as train writes, no data_shape, a
    data_shape that is no shape)."""
    weights = Path(weights)
    shape = read_metadata(weights).get("sample_shape")
    # only a kfm train folder's layout: any config.json beside or above another file may be unrelated
    if weights.name == "final.safetensors":
        folder = weights.parent
    elif (weights.parent.name == "checkpoints" and weights.suffix == ".safetensors"
          and weights.stem.startswith("step_") and weights.stem[len("step_"):].isdigit()):
        folder = weights.parent.parent
    else:
        folder = None
    if shape is None and folder is not None:
        config = folder / TRAIN_CONFIG_NAME
        if config.is_file():
            try:
                record = read_train_config(config, keys=("data_shape",))
            except DamagedTrainConfigError as err:
                raise DamagedTrainConfigError(
                    f"{err} {weights.name}'s metadata records no sample shape (trained before it was "
                    "written), so it is read there: put back a good copy of it, or give the shape (kfm "
                    "sample --shape C,H,W)", err.fault) from None
            shape = None if record is None else record["data_shape"][1:]
    return tuple(int(s) for s in shape) if shape else None


def load_model(path: str | os.PathLike, *, weights: str = "ema", dtype: torch.dtype | None = None) -> nn.Module:
    """Rebuild a velocity net saved by :func:`save_model` or by training, in eval mode (or a
    :class:`~kinetic_fm.models.classifier.SmallCNN` judge saved by :func:`save_model`: ``weights="model"``).

    Args:
        path: a .safetensors file, or a training run folder (uses ``final.safetensors``, else the
            latest file in ``checkpoints/``).
        weights: "ema" (the EMA weights, the default for sampling) or "model" (raw weights).
        dtype: None (the default): the net in the dtype its weights were saved in, bit for bit (a
            ``.half()`` net saved in float16 comes back float16 and takes float16 inputs; a file of
            several float dtypes loads into torch's default dtype). A float ``torch.dtype``: the saved
            weights converted to it (``dtype=torch.float32`` to sample a float16 net with float32
            noise on a CPU).
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be None (the saved dtype) or a real floating torch.dtype such as "
                         f"torch.float32, got {dtype!r}")
    path = resolve_weights(path)
    meta = read_metadata(path) if path.is_file() and path.suffix == ".safetensors" else {}
    tensors = load_weights(path)
    if "kind" not in meta:
        raise ValueError(f"{path}: no kinetic_fm model metadata; build the net yourself and use load_weights")
    prefix = f"{weights}."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        other = "model" if weights == "ema" else "ema"
        held = any(k.startswith(f"{other}.") for k in tensors)
        judge = f", a {meta['kind']!r} classifier, not a velocity net" if meta["kind"] in JUDGES else ""
        raise ValueError(f"{path}: holds no {weights!r} weights{judge}"
                         + (f" (it holds {other!r} ones: weights={other!r})" if held else ""))
    try:
        model = build_model(meta["kind"], meta["config"])
        stored = {v.dtype for v in state.values() if v.is_floating_point()}
        if len(stored) == 1:  # built in the saved dtype: load_state_dict converted float64 and float16 into float32
            model = model.to(stored.pop())
        model.load_state_dict(state)
        if dtype is not None:
            model = model.to(dtype)
    except (TypeError, ValueError, RuntimeError) as err:  # a config or tensors that do not make the net
        raise ValueError(f"{path}: its {weights!r} weights do not rebuild the {meta['kind']!r} net its "
                         f"metadata describes ({' '.join(str(err).split())})") from err
    return model.eval()


def load_into(net: nn.Module, path: str | os.PathLike, *, strict: bool = True,
              num_timesteps: int | None = None) -> nn.Module | Callable[..., Tensor]:
    """Load weights from ``path`` into your own ``net`` and return it ready for sampling (eval mode).

    Args:
        net: an instantiated module whose state-dict keys match the file (a ``module.`` prefix
            and a ``{"state_dict": ...}`` wrapper are handled).
        path: .safetensors or torch state-dict file, read without executing code.
        strict: passed to ``load_state_dict``.
        num_timesteps: if the net takes integer steps k = int(t·(T−1)) instead of t in [0, 1]
            (the paper's nets, T = 1000), give T and get the net wrapped in
            ``kinetic_fm.DiscreteTime`` (a velocity ``v(x, t)``; the module itself stays ``net``).
    """
    tensors = load_weights(path)
    if tensors and not tensors.keys() & net.state_dict().keys():
        # strict=False loaded nothing and handed back the net's random weights as if trained
        training_file = all(k.startswith(("model.", "ema.")) for k in tensors)
        hint = (": it holds a training run's 'model.' and 'ema.' weights; rebuild the net with "
                "kinetic_fm.models.load_model(path)" if training_file else "")
        raise ValueError(f"{path}: none of its {len(tensors)} tensors is one of {type(net).__name__}'s "
                         f"(e.g. {sorted(tensors)[0]!r}){hint}")
    try:
        net.load_state_dict(tensors, strict=strict)
    except RuntimeError as err:  # missing, unexpected or mismatched tensors, in torch's words
        raise ValueError(f"{path}: does not fit {type(net).__name__} ({' '.join(str(err).split())})") from err
    net.eval()
    if num_timesteps is None:
        return net
    # models sit below fields, and wrapping a net as a velocity is the fields' work: this is the
    # one import of a higher layer in models, kept inside the function so that importing models
    # never loads fields (tests/test_layers.py allows exactly this one)
    from ..fields.adapters import DiscreteTime

    return DiscreteTime(net, num_timesteps)
