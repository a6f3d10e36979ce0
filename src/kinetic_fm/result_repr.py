"""One line for a result dataclass in a REPL or notebook: its tensors as shape and dtype.

The dataclass's own ``__repr__`` printed every element of every tensor field: a ``SampleResult`` of
256 samples with a profile ran to 480 lines. A result class takes this one as its ``__repr__``; its
fields, equality and ``str`` stay the dataclass's.
"""
from __future__ import annotations

import dataclasses

_SHOWN_ITEMS = 3  # the first items of a long tuple (seeds), then "…", the last and the count


def result_repr(result) -> str:
    """``Name(field=value, ...)`` for the dataclass ``result``: a tensor of one dimension or
    more as its shape, dtype (device when not the CPU) and, for a 1-D one, its mean (floating point)
    or its count of true (bool); a 0-d tensor as its value; a tuple of more than a few items as its
    first and last and their count; anything else as its ``repr``."""
    fields = ", ".join(f"{f.name}={_shown(getattr(result, f.name), f.name)}"
                       for f in dataclasses.fields(result) if f.repr)
    return f"{type(result).__name__}({fields})"


def _shown(value, name: str) -> str:
    import torch

    if not isinstance(value, torch.Tensor):
        if isinstance(value, tuple) and len(value) > 2 * _SHOWN_ITEMS:
            head = ", ".join(repr(item) for item in value[:_SHOWN_ITEMS])
            return f"({head}, …, {value[-1]!r}) [{len(value)} {name}]"
        return repr(value)
    if value.ndim == 0:
        return repr(value.item())
    parts = [f"shape={tuple(value.shape)}", f"dtype={str(value.dtype).removeprefix('torch.')}"]
    if value.device.type != "cpu":
        parts.append(f"device={value.device}")
    if value.ndim == 1 and value.numel() > 0 and not value.is_meta:
        if value.dtype == torch.bool:
            parts.append(f"{int(value.sum())} true")
        elif value.is_floating_point():
            parts.append(f"mean={value.double().mean().item():.6g}")
    return f"Tensor({', '.join(parts)})"
