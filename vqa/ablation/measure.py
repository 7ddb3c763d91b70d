"""Cost measurements of one model: parameters, fusion FLOPs, peak memory and side-by-side timing.

The side-by-side timing runs every model in rounds inside one process (model A, B, C, then again)
and reports medians, so that a change in the machine's load hits all models alike.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vqa.training.evaluation import MODEL_INPUTS
from vqa.training.precision import autocast_context

__all__ = [
    "count_parameters",
    "fusion_flops_per_sample",
    "peak_memory_mb",
    "reset_peak_memory",
    "TimedModel",
    "time_side_by_side",
]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Return total, trainable and fusion-stack parameter counts of a ``VQAModel``."""
    fusion = getattr(model, "fusion", None)
    return {
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "params_fusion": sum(p.numel() for p in fusion.parameters()) if fusion is not None else 0,
    }


def fusion_flops_per_sample(fusion: nn.Module, text_tokens: int, image_tokens: int, dim: int) -> int:
    """Count the forward FLOPs of a fusion stack on one sample with ``torch.utils.flop_counter``.

    SDPA runs on its math backend during the count, because the counter has no formula for
    PyTorch's fused CPU attention kernel and would count full attention's scores as zero. The math
    backend computes the same products as matmuls. Only matrix products and convolutions are
    counted (the counter's rule), not softmax, norms or element-wise ops.

    Args:
        fusion: A ``vqa.fusion.FusionStack``.
        text_tokens: Question length T.
        image_tokens: Image tokens N.
        dim: Fusion width D.

    Returns:
        FLOPs (2 per multiply-add) of one forward pass with batch 1.
    """
    parameter = next(fusion.parameters())
    text = torch.randn(1, text_tokens, dim, device=parameter.device, dtype=parameter.dtype)
    image = torch.randn(1, image_tokens, dim, device=parameter.device, dtype=parameter.dtype)
    was_training = fusion.training
    fusion.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            fusion(text, None, image)
    finally:
        fusion.train(was_training)
    return int(counter.get_total_flops())


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Return the peak memory in MiB: allocated CUDA memory on a GPU, else the process's peak RSS.

    On CPU this is ``ru_maxrss`` of the whole process (Python, torch, data and model), which
    never goes down, so call it in a process that runs one model only.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class TimedModel:
    """One model of the side-by-side timing, with its optimizer and collected times in ms."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_ms: list[float] = field(default_factory=list)
    fusion_ms: list[float] = field(default_factory=list)
    infer_ms: list[float] = field(default_factory=list)
    peak_memory_mb: float = 0.0
    error: Optional[str] = None


def _train_step(entry: TimedModel, batch: dict[str, Any], device: torch.device, precision: str) -> None:
    """Run one forward, backward and optimizer step on the fixed batch."""
    entry.model.train()
    with autocast_context(device, precision):
        logits = entry.model(**{key: batch[key] for key in MODEL_INPUTS})  # (B, A)
        loss = entry.model.compute_loss(logits, batch["targets"])
    loss.backward()
    entry.optimizer.step()
    entry.optimizer.zero_grad(set_to_none=True)


def _fusion_step(entry: TimedModel, features: tuple, device: torch.device, precision: str) -> None:
    """Run forward and backward of the fusion stack alone on fixed encoder outputs."""
    text, text_mask, image, image_index = features
    text = text.detach().requires_grad_(True)
    image = image.detach().requires_grad_(True)
    with autocast_context(device, precision):
        fused_text, fused_image = entry.model.fusion(text, text_mask, image, image_index=image_index)
        loss = fused_text.float().square().mean() + fused_image.float().square().mean()
    loss.backward()
    entry.model.zero_grad(set_to_none=True)


@torch.no_grad()
def _encode(model: nn.Module, batch: dict[str, Any], device: torch.device, precision: str) -> tuple:
    """Return the fusion inputs of the batch: text (B, T, D), text mask (B, T), image (I, N, D), image index (B,) or None."""
    model.eval()
    with autocast_context(device, precision):
        text_mask = batch["attention_mask"].bool()
        text = model.text_encoder(batch["input_ids"], text_mask)
        image = model.image_encoder(batch["pixel_values"])
    return text.float(), text_mask, image.float(), batch.get("image_index")


def _infer(entry: TimedModel, batch: dict[str, Any], device: torch.device, precision: str) -> None:
    entry.model.eval()
    with torch.inference_mode(), autocast_context(device, precision):
        entry.model(**{key: batch[key] for key in MODEL_INPUTS})


def _timed(step: Callable[[], None], device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    step()
    _synchronize(device)
    return (time.perf_counter() - start) * 1000.0


def time_side_by_side(
    models: list[TimedModel],
    batch: dict[str, Any],
    device: torch.device,
    precision: str,
    rounds: int,
    warmup_rounds: int,
    log: Callable[[str], None] = lambda line: None,
) -> list[dict[str, Any]]:
    """Time every model in interleaved rounds on one fixed batch and return medians.

    Each round runs, for each model in turn: one training step (forward, backward, AdamW step)
    of the whole model, one forward and backward of the fusion stack alone, and one inference
    forward pass. The first ``warmup_rounds`` rounds are not timed. A model that raises (for
    example out of memory) is recorded with its error and left out of later rounds.

    Args:
        models: The models, already on ``device``.
        batch: A collated batch on ``device``, with the keys of ``MODEL_INPUTS`` and ``targets``.
        device: Where the models run.
        precision: Resolved precision, ``fp32``, ``bf16`` or ``fp16``.
        rounds: Timed rounds.
        warmup_rounds: Untimed rounds before them.
        log: Receives one progress line per round.

    Returns:
        One record per model: ``name``, ``train_step_ms``, ``train_samples_per_s``,
        ``fusion_train_ms``, ``infer_ms`` (medians), ``batch_questions``, ``rounds``, the CUDA
        ``peak_memory_mb`` (None on CPU) and ``error``.
    """
    questions = int(batch["input_ids"].shape[0])
    features = {}
    for entry in models:
        try:
            features[entry.name] = _encode(entry.model, batch, device, precision)
        except (RuntimeError, ValueError) as error:
            entry.error = f"{type(error).__name__}: {error}"

    for round_index in range(warmup_rounds + rounds):
        timed = round_index >= warmup_rounds
        for entry in models:
            if entry.error is not None:
                continue
            try:
                reset_peak_memory(device)
                train_ms = _timed(lambda: _train_step(entry, batch, device, precision), device)
                fusion_ms = _timed(lambda: _fusion_step(entry, features[entry.name], device, precision), device)
                infer_ms = _timed(lambda: _infer(entry, batch, device, precision), device)
                if device.type == "cuda":
                    entry.peak_memory_mb = max(entry.peak_memory_mb, peak_memory_mb(device))
            except (RuntimeError, ValueError) as error:  # torch.OutOfMemoryError is a RuntimeError
                entry.error = f"{type(error).__name__}: {error}"
                log(f"  {entry.name} failed: {entry.error}")
                continue
            if timed:
                entry.train_ms.append(train_ms)
                entry.fusion_ms.append(fusion_ms)
                entry.infer_ms.append(infer_ms)
        label = "round" if timed else "warm-up round"
        log(
            f"  {label} {round_index + 1}: "
            + ", ".join(f"{e.name} {e.train_ms[-1]:.0f} ms" for e in models if e.error is None and e.train_ms and timed)
        )

    records = []
    for entry in models:
        measured = entry.error is None and bool(entry.train_ms)
        train_ms = statistics.median(entry.train_ms) if measured else None
        records.append(
            {
                "name": entry.name,
                "train_step_ms": train_ms,
                "train_samples_per_s": questions / (train_ms / 1000.0) if train_ms else None,
                "fusion_train_ms": statistics.median(entry.fusion_ms) if measured else None,
                "infer_ms": statistics.median(entry.infer_ms) if measured else None,
                "batch_questions": questions,
                "rounds": len(entry.train_ms),
                "peak_memory_mb": entry.peak_memory_mb if device.type == "cuda" and measured else None,
                "error": entry.error,
            }
        )
    return records
