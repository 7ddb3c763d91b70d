"""Training engine: optimizer and schedule, checkpoints with exact resume, DDP and evaluation."""

from vqa.training.checkpoint import (
    atomic_torch_save,
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    resolve_checkpoint_path,
    restore_rng_state,
)
from vqa.training.distributed import DistributedContext, cleanup_distributed, init_distributed, unwrap_model
from vqa.training.evaluation import build_eval_loader, evaluate
from vqa.training.optim import WarmupDecay, build_optimizer, build_param_groups, build_scheduler
from vqa.training.precision import autocast_context, resolve_precision
from vqa.training.sampler import ResumableSampler, ShardedEvalSampler
from vqa.training.trainer import Trainer

__all__ = [
    "Trainer",
    "evaluate",
    "build_eval_loader",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "WarmupDecay",
    "ResumableSampler",
    "ShardedEvalSampler",
    "atomic_torch_save",
    "capture_rng_state",
    "restore_rng_state",
    "load_checkpoint",
    "load_model_state",
    "resolve_checkpoint_path",
    "DistributedContext",
    "init_distributed",
    "cleanup_distributed",
    "unwrap_model",
    "autocast_context",
    "resolve_precision",
]
