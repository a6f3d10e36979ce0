"""The identity of a set of items by its values: the sha256 of a tensor's bytes. One
implementation for the records that say "these are the items": a ``kfm sample --field empirical``
run's manifest (``train_sha256``) and a training run's ``config.json`` (``data_sha256``).

Hashing CIFAR-10's 50,000 × 3,072 float32 items (614 MB) took a median 0.4 s on a 2-core CPU, 1.4×
one copy of them (``benchmarks/data_digest_speed.py``, BENCHMARKS.md)."""
from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def float_items(rows: Tensor) -> Tensor:
    """Items as the exact field takes them: float32 and float64 unchanged, integers (uint8 images)
    as float32 where that keeps every value, else float64; contiguous, so their bytes hash."""
    if rows.dtype not in (torch.float32, torch.float64):
        as32 = rows.to(torch.float32)
        rows = as32 if rows.is_floating_point() or torch.equal(as32.to(rows.dtype), rows) else rows.to(torch.float64)
    return rows.contiguous()


def tensor_sha256(values: Tensor) -> str:
    """The sha256 (hex) of ``values``' bytes in C order, on any device and of any dtype (bfloat16
    included); for a CPU float tensor, that of ``values.numpy()``. The dtype and shape are not
    part of it: record them beside it."""
    flat = values.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy()).hexdigest()
