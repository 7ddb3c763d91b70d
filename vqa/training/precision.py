"""Mixed-precision settings: which autocast dtype to use and whether to scale gradients."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

__all__ = ["PRECISIONS", "resolve_precision", "autocast_context", "make_grad_scaler"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map ``train.precision`` to ``fp32``, ``bf16`` or ``fp16`` for ``device``.

    ``auto`` is bf16 autocast on CUDA and fp32 on CPU. fp16 needs CUDA, because it
    relies on a gradient scaler and CPU kernels gain nothing from it.

    Args:
        precision: one of ``auto``, ``fp32``, ``bf16``, ``fp16``.
        device: the training device.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision={precision!r} is not supported; choose one of {PRECISIONS}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"train.precision=fp16 needs a CUDA device, but the device is {device}; use bf16 or fp32 on CPU"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"train.precision=bf16 is not supported on {torch.cuda.get_device_name(device)}; use fp16")
    return precision


def autocast_context(device: torch.device, precision: str) -> ContextManager:
    """Return the autocast context for a resolved precision (no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Return a gradient scaler that is enabled only for fp16."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
