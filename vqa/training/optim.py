"""AdamW with per-module learning-rate multipliers, and the warmup-then-decay schedule."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from vqa.config import OptimConfig

__all__ = ["SCHEDULES", "uses_weight_decay", "build_param_groups", "build_optimizer", "WarmupDecay", "build_scheduler"]

logger = logging.getLogger(__name__)

SCHEDULES = ("cosine", "step", "constant")
# Parameters whose name contains one of these get no weight decay, whatever their shape.
# "embedding" covers word, token and position embedding tables but not timm's patch_embed convolution.
NO_DECAY_NAME_PARTS = ("norm", "bias", "latent", "pos_embed", "embedding", "cls_token", "reg_token")


def uses_weight_decay(name: str, param: torch.Tensor) -> bool:
    """True for weight matrices; False for biases, norms, embeddings, position and latent parameters.

    Args:
        name: the parameter's name in ``model.named_parameters()``.
        param: the parameter.
    """
    if param.ndim < 2:
        return False
    lowered = name.lower()
    return not any(part in lowered for part in NO_DECAY_NAME_PARTS)


def _model_groups(model: nn.Module) -> list[dict[str, Any]]:
    if hasattr(model, "param_groups"):
        return list(model.param_groups())
    return [{"params": list(model.parameters()), "lr_mult": 1.0, "name": "model"}]


def build_param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Split ``model.param_groups()`` into decay and no-decay groups for the optimizer.

    Each output group carries ``lr = lr * lr_mult``, its ``lr_mult`` and a ``name`` such as
    ``"fusion/decay"``. Frozen parameters are left out. A trainable parameter that the
    model's groups do not list is trained at the base learning rate, with a warning.

    Args:
        model: the unwrapped model; uses ``model.param_groups()`` when it has one.
        lr: base learning rate.
        weight_decay: AdamW weight decay for weight matrices.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    groups = _model_groups(model)
    seen: set[int] = set()
    result: list[dict[str, Any]] = []

    def add(params: list[torch.Tensor], lr_mult: float, group_name: str) -> None:
        decay, no_decay = [], []
        for param in params:
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            target = decay if uses_weight_decay(names.get(id(param), ""), param) else no_decay
            target.append(param)
        for suffix, members, wd in (("decay", decay, weight_decay), ("no_decay", no_decay, 0.0)):
            if members:
                result.append(
                    {
                        "params": members,
                        "lr": lr * lr_mult,
                        "lr_mult": float(lr_mult),
                        "weight_decay": wd,
                        "name": f"{group_name}/{suffix}",
                    }
                )

    for index, group in enumerate(groups):
        add(list(group["params"]), float(group.get("lr_mult", 1.0)), str(group.get("name", f"group{index}")))

    leftover = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    if leftover:
        leftover_names = [names.get(id(p), "?") for p in leftover]
        logger.warning(
            "%d trainable parameters are in no model.param_groups() group; training them at lr_mult 1: %s",
            len(leftover),
            ", ".join(leftover_names[:10]),
        )
        add(leftover, 1.0, "ungrouped")
    if not result:
        raise ValueError("the model has no trainable parameters; check the freeze_blocks settings")
    return result


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """Return AdamW over ``build_param_groups(model, cfg.lr, cfg.weight_decay)``."""
    if cfg.lr <= 0:
        raise ValueError(f"optim.lr={cfg.lr} must be positive")
    groups = build_param_groups(model, cfg.lr, cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


class WarmupDecay:
    """Learning-rate factor for ``LambdaLR``: linear warmup, then cosine, step or constant.

    Warmup raises the factor linearly to 1 over ``warmup_steps`` optimizer steps. Cosine
    decay then falls to ``min_lr_ratio`` at ``total_steps``. Step decay multiplies by
    ``step_gamma`` once ``step / total_steps`` passes each milestone. The attributes are
    plain numbers so ``LambdaLR.state_dict`` stores them and checkpoints stay loadable
    with ``torch.load(weights_only=True)``.

    Args:
        schedule: ``cosine``, ``step`` or ``constant``.
        total_steps: optimizer steps in the whole run.
        warmup_steps: optimizer steps of linear warmup.
        min_lr_ratio: final factor of the cosine schedule.
        step_milestones: fractions of ``total_steps`` for step decay.
        step_gamma: factor applied at each milestone.
    """

    def __init__(
        self,
        schedule: str,
        total_steps: int,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        step_milestones: list[float] | tuple[float, ...] = (),
        step_gamma: float = 0.1,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule={schedule!r} is not supported; choose one of {SCHEDULES}")
        if total_steps <= 0:
            raise ValueError(f"the schedule needs a positive number of steps, got total_steps={total_steps}")
        if warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps={warmup_steps} must be >= 0")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio={min_lr_ratio} must be in [0, 1]")
        for milestone in step_milestones:
            if not 0.0 <= milestone <= 1.0:
                raise ValueError(f"optim.step_milestones contains {milestone}, but milestones are fractions in [0, 1]")
        self.schedule = schedule
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        self.step_milestones = sorted(float(m) for m in step_milestones)
        self.step_gamma = float(step_gamma)

    def __call__(self, step: int) -> float:
        """Factor for the learning rate after ``step`` optimizer steps."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "step":
            fraction = step / self.total_steps
            passed = sum(1 for milestone in self.step_milestones if fraction >= milestone)
            return self.step_gamma**passed
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    """Return the ``LambdaLR`` that applies ``WarmupDecay`` to every parameter group.

    Args:
        optimizer: the optimizer; each group's ``lr`` is its base learning rate.
        cfg: the optimization settings.
        total_steps: optimizer steps in the whole run.
    """
    schedule = WarmupDecay(
        cfg.schedule,
        total_steps=total_steps,
        warmup_steps=cfg.warmup_steps,
        min_lr_ratio=cfg.min_lr_ratio,
        step_milestones=list(cfg.step_milestones),
        step_gamma=cfg.step_gamma,
    )
    return LambdaLR(optimizer, lr_lambda=schedule)
