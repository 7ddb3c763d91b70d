"""The training loop: AdamW, mixed precision, DDP, per-epoch evaluation, checkpoints and exact resume.

Example::

    trainer = Trainer(cfg, model, train_set, collator, val_dataset=val_set)
    summary = trainer.fit(resume=None)   # or resume="runs/easy_vqa"

Under ``torchrun`` every process builds the same model and calls ``fit``; only rank 0
logs and writes files. Call ``vqa.training.cleanup_distributed()`` when the script ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vqa.config import RunConfig
from vqa.training.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    atomic_torch_save,
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    resolve_checkpoint_path,
    restore_rng_state,
)
from vqa.training.distributed import all_gather_objects, init_distributed, is_distributed
from vqa.training.evaluation import MODEL_INPUTS, ScoreFn, build_eval_loader, evaluate, move_batch
from vqa.training.metric_logger import MetricLogger
from vqa.training.optim import build_optimizer, build_scheduler
from vqa.training.precision import autocast_context, make_grad_scaler, resolve_precision
from vqa.training.sampler import ResumableSampler, WorkerSeeder, derive_seed

__all__ = ["Trainer", "CONFIG_FILE", "BEST_DIR", "BEST_SUMMARY_FILE", "BEST_PREDICTIONS_FILE"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
BEST_DIR = "best"
BEST_SUMMARY_FILE = "best.json"
BEST_PREDICTIONS_FILE = "best_predictions.json"
# Skipped image paths named per log line; the count is always logged.
MAX_SKIPPED_NAMED = 5


# Stop reasons that start with this word come from SIGINT or SIGTERM.
INTERRUPTED = "interrupted"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _config_to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(cfg)


class Trainer:
    """Train a VQA model end to end and keep the best checkpoint by validation accuracy.

    Args:
        cfg: the whole run config; ``optim`` and ``train`` drive the loop, ``data`` sets
            batch sizes and worker counts.
        model: the model, on CPU or already on the device. It must provide
            ``forward(pixel_values, input_ids, attention_mask, image_index) -> logits (B, A)``,
            ``compute_loss(logits, targets)``, ``param_groups()``, ``save_pretrained(dir)``
            and ``vocab.answer(i)``.
        train_dataset: map-style training set.
        collate_fn: turns a list of samples into a batch dict (``vqa.data.VQACollator``).
        val_dataset: evaluation set, sharded over ranks; None skips evaluation unless
            ``eval_loader_factory`` is given.
        eval_collate_fn: collator for ``val_dataset``; defaults to ``collate_fn``.
        eval_loader_factory: returns the evaluation loader, used instead of ``val_dataset``.
            Under DDP it must shard without padding (see ``build_eval_loader``).
        single_answer: score by exact match (GQA, CLEVR) instead of the VQA soft accuracy.
        score_fn: per-question scorer; defaults to ``vqa.metrics.score``.
        on_step_end: called with the trainer after every optimizer step, after any
            checkpoint of that step is written; tests use it to simulate a crash.
        find_unused_parameters: passed to ``DistributedDataParallel``; set it when some
            trainable parameters get no gradient in a step.
    """

    def __init__(
        self,
        cfg: RunConfig,
        model: nn.Module,
        train_dataset: Dataset,
        collate_fn: Callable,
        val_dataset: Optional[Dataset] = None,
        *,
        eval_collate_fn: Optional[Callable] = None,
        eval_loader_factory: Optional[Callable[[], DataLoader]] = None,
        single_answer: bool = False,
        score_fn: Optional[ScoreFn] = None,
        on_step_end: Optional[Callable[["Trainer"], None]] = None,
        find_unused_parameters: bool = False,
    ):
        self.cfg = cfg
        self._validate_config()
        self.train_dataset = train_dataset
        self.collate_fn = collate_fn
        self.val_dataset = val_dataset
        self.eval_collate_fn = eval_collate_fn or collate_fn
        self.eval_loader_factory = eval_loader_factory
        self.single_answer = single_answer
        self.score_fn = score_fn
        self.on_step_end = on_step_end
        self.output_dir = Path(cfg.train.output_dir)

        self.dist = init_distributed(cfg.train.device)
        self.device = self.dist.device
        self.precision = resolve_precision(cfg.train.precision, self.device)

        self.model = model.to(self.device)
        self.train_model: nn.Module = self.model
        if cfg.train.compile:
            self.train_model = torch.compile(self.train_model)
        if self.dist.world_size > 1:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.train_model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=find_unused_parameters,
            )

        self.sampler = ResumableSampler(
            len(train_dataset), seed=cfg.train.seed, rank=self.dist.rank, world_size=self.dist.world_size
        )
        batches_per_epoch = math.ceil(self.sampler.num_samples / cfg.data.batch_size)
        self.steps_per_epoch = math.ceil(batches_per_epoch / cfg.optim.grad_accum_steps)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        if cfg.train.max_steps > 0:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps)
        self.scaler = make_grad_scaler(self.device, self.precision)

        # Progress. ``batches_done`` counts the batches of ``epoch`` consumed so far.
        self.epoch = 0
        self.batches_done = 0
        self.global_step = 0
        self.best_value: Optional[float] = None
        self.last_eval: Optional[dict[str, Any]] = None
        self.skipped_images = 0
        self._eval_loader: Optional[DataLoader] = None
        self._pending_rng: Optional[dict[str, Any]] = None
        self._last_batch: Optional[dict[str, Any]] = None
        self._metrics: Optional[MetricLogger] = None
        self._fit_start = 0.0
        # Name of the first SIGINT or SIGTERM received during fit(); training then stops at the
        # next optimizer-step boundary and writes a checkpoint.
        self._stop_signal: Optional[str] = None

    # ------------------------------------------------------------------ setup

    def _validate_config(self) -> None:
        cfg = self.cfg
        checks = [
            ("data.batch_size", cfg.data.batch_size, cfg.data.batch_size >= 1, ">= 1"),
            ("data.eval_batch_size", cfg.data.eval_batch_size, cfg.data.eval_batch_size >= 1, ">= 1"),
            ("data.num_workers", cfg.data.num_workers, cfg.data.num_workers >= 0, ">= 0"),
            ("optim.grad_accum_steps", cfg.optim.grad_accum_steps, cfg.optim.grad_accum_steps >= 1, ">= 1"),
            ("optim.grad_clip", cfg.optim.grad_clip, cfg.optim.grad_clip >= 0, ">= 0 (0 disables clipping)"),
            ("train.epochs", cfg.train.epochs, cfg.train.epochs >= 1, ">= 1"),
            ("train.max_steps", cfg.train.max_steps, cfg.train.max_steps >= 0, ">= 0"),
            ("train.time_limit_min", cfg.train.time_limit_min, cfg.train.time_limit_min >= 0, ">= 0"),
            ("train.log_every", cfg.train.log_every, cfg.train.log_every >= 1, ">= 1"),
            ("train.checkpoint_every", cfg.train.checkpoint_every, cfg.train.checkpoint_every >= 0, ">= 0"),
            ("train.eval_every_epochs", cfg.train.eval_every_epochs, cfg.train.eval_every_epochs >= 0, ">= 0"),
        ]
        for name, value, valid, rule in checks:
            if not valid:
                raise ValueError(f"{name}={value} is invalid; it must be {rule}")

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def _info(self, message: str, *args: Any) -> None:
        if self.is_main:
            logger.info(message, *args)

    def _warning(self, message: str, *args: Any) -> None:
        if self.is_main:
            logger.warning(message, *args)

    def epoch_progress(self) -> float:
        """Completed epochs as a fraction, for example 1.5 halfway through the second epoch."""
        batches_per_epoch = math.ceil(self.sampler.num_samples / self.cfg.data.batch_size)
        return self.epoch + self.batches_done / batches_per_epoch

    def current_lr(self) -> float:
        """Base learning rate (before ``lr_mult``) for the next optimizer step."""
        return self.cfg.optim.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)

    def _write_config(self) -> None:
        if not self.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / CONFIG_FILE).write_text(_config_to_yaml(self.cfg), encoding="utf-8")

    def _train_loader(self) -> DataLoader:
        cfg = self.cfg
        generator = torch.Generator()
        generator.manual_seed(derive_seed(cfg.train.seed, self.epoch, self.dist.rank))
        # NOTE: a resumed worker restarts from its seed, so random augmentation inside workers
        # repeats the draws of the interrupted epoch's start. The sample order is still exact.
        return DataLoader(
            self.train_dataset,
            batch_size=cfg.data.batch_size,
            sampler=self.sampler,
            collate_fn=self.collate_fn,
            num_workers=cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
            worker_init_fn=WorkerSeeder(cfg.train.seed, self.epoch, self.dist.rank),
            generator=generator,
        )

    def _get_eval_loader(self) -> Optional[DataLoader]:
        if self._eval_loader is None:
            if self.eval_loader_factory is not None:
                self._eval_loader = self.eval_loader_factory()
            elif self.val_dataset is not None:
                self._eval_loader = build_eval_loader(
                    self.val_dataset,
                    self.cfg.data.eval_batch_size,
                    self.eval_collate_fn,
                    num_workers=self.cfg.data.num_workers,
                    pin_memory=self.device.type == "cuda",
                )
        return self._eval_loader

    # ------------------------------------------------------------ checkpoints

    def _checkpoint_state(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "global_step": self.global_step,
            "best_metric": self.cfg.train.best_metric,
            "best_value": self.best_value,
            "sampler": self._sampler_position(),
            "batch_size": self.cfg.data.batch_size,
            "world_size": self.dist.world_size,
            "precision": self.precision,
            "config_yaml": _config_to_yaml(self.cfg),
        }

    def _sampler_position(self) -> dict[str, Any]:
        state = self.sampler.state_dict()
        # The sampler remembers where its epoch started; the checkpoint needs where training is now.
        state["epoch"] = self.epoch
        state["start"] = self.batches_done * self.cfg.data.batch_size
        return state

    def save_checkpoint(self) -> Optional[Path]:
        """Write ``output_dir/last.pt`` atomically (rank 0); every rank must call it.

        Returns:
            The checkpoint path on rank 0, None on other ranks.
        """
        # Every rank contributes its RNG state so that each one resumes its own dropout stream.
        rng_states = all_gather_objects(capture_rng_state())
        if not self.is_main:
            return None
        path = atomic_torch_save(self._checkpoint_state(rng_states), self.output_dir / CHECKPOINT_NAME)
        logger.info("saved checkpoint %s (epoch %d, batch %d, step %d)", path, self.epoch, self.batches_done, self.global_step)
        return path

    def _load_scheduler(self, state: dict[str, Any], file: Path) -> None:
        # LambdaLR.load_state_dict also overwrites the schedule's settings with the saved ones.
        # The current config wins, so that resuming with more epochs stretches the schedule.
        current = [dict(vars(schedule)) for schedule in self.scheduler.lr_lambdas]
        self.scheduler.load_state_dict(state)
        saved = [dict(vars(schedule)) for schedule in self.scheduler.lr_lambdas]
        if saved == current:
            return
        self._warning("the learning-rate schedule in %s was %s; continuing with %s", file, saved[0], current[0])
        for schedule, settings in zip(self.scheduler.lr_lambdas, current):
            schedule.__dict__.update(settings)
        step = self.scheduler.last_epoch
        for group, base_lr, schedule in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base_lr * schedule(step)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model, optimizer, scheduler, scaler, progress and (at ``fit`` start) RNG states.

        Raises:
            FileNotFoundError: the path or the run folder's ``last.pt`` does not exist.
            ValueError: the checkpoint does not fit this model, optimizer or training set.
        """
        file = resolve_checkpoint_path(path)
        checkpoint = load_checkpoint(file, map_location="cpu")
        load_model_state(self.model, checkpoint["model"], source=str(file))
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except ValueError as error:
            raise ValueError(
                f"the optimizer state in {file} does not fit this model's parameter groups ({error}); "
                f"resume with the freeze and lr_mult settings the checkpoint was trained with"
            ) from None
        self._load_scheduler(checkpoint["scheduler"], file)
        if self.scaler.is_enabled():
            if checkpoint["scaler"]:
                self.scaler.load_state_dict(checkpoint["scaler"])
            else:
                self._warning("%s has no fp16 gradient-scaler state; the scaler starts afresh", file)

        self.epoch = int(checkpoint["epoch"])
        self.global_step = int(checkpoint["global_step"])
        self.best_value = checkpoint["best_value"]
        if checkpoint["best_metric"] != self.cfg.train.best_metric:
            self._warning(
                "the checkpoint tracked best_metric=%s, this run tracks %s; the best value restarts",
                checkpoint["best_metric"],
                self.cfg.train.best_metric,
            )
            self.best_value = None

        self.sampler.load_state_dict(checkpoint["sampler"])
        samples_done = self.sampler.start
        if checkpoint["world_size"] != self.dist.world_size or checkpoint["batch_size"] != self.cfg.data.batch_size:
            self._warning(
                "the checkpoint ran with world_size=%d and batch_size=%d, this run with %d and %d; "
                "resume continues at the same epoch but not at the exact sample",
                checkpoint["world_size"],
                checkpoint["batch_size"],
                self.dist.world_size,
                self.cfg.data.batch_size,
            )
            self.sampler = ResumableSampler(
                len(self.train_dataset), seed=self.cfg.train.seed, rank=self.dist.rank, world_size=self.dist.world_size
            )
            global_samples = checkpoint["batches_done"] * checkpoint["batch_size"] * checkpoint["world_size"]
            samples_done = min(self.sampler.num_samples, global_samples // self.dist.world_size)
        self.batches_done = samples_done // self.cfg.data.batch_size

        rng_states = checkpoint["rng"]
        if len(rng_states) != self.dist.world_size:
            self._warning("the checkpoint holds RNG states of %d ranks, this run has %d", len(rng_states), self.dist.world_size)
        self._pending_rng = rng_states[self.dist.rank % len(rng_states)]
        self._info(
            "resumed from %s: epoch %d, batch %d, step %d, best %s=%s",
            file,
            self.epoch,
            self.batches_done,
            self.global_step,
            self.cfg.train.best_metric,
            self.best_value,
        )

    # ------------------------------------------------------------- evaluation

    def _eval_due(self, epoch: int) -> bool:
        every = self.cfg.train.eval_every_epochs
        if every == 0:
            return False
        return (epoch + 1) % every == 0 or epoch + 1 == self.cfg.train.epochs

    def _save_best(self, result: dict[str, Any], value: float) -> None:
        target = self.output_dir / BEST_DIR
        staging = self.output_dir / f".{BEST_DIR}.tmp"
        previous = self.output_dir / f".{BEST_DIR}.old"
        for stale in (staging, previous):
            if stale.exists():
                shutil.rmtree(stale)
        staging.mkdir(parents=True)
        self.model.save_pretrained(staging)
        # Swap folders so that an interruption leaves either the old or the new best model in place.
        if target.exists():
            target.rename(previous)
        staging.rename(target)
        if previous.exists():
            shutil.rmtree(previous)

        summary = {key: value for key, value in result.items() if key != "predictions"}
        summary.update(
            {"metric": self.cfg.train.best_metric, "value": value, "epoch": self.epoch, "step": self.global_step}
        )
        (self.output_dir / BEST_SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
        (self.output_dir / BEST_PREDICTIONS_FILE).write_text(json.dumps(result["predictions"]), encoding="utf-8")
        logger.info("new best %s=%.4f at step %d; saved %s", self.cfg.train.best_metric, value, self.global_step, target)

    def evaluate_and_select(self) -> bool:
        """Evaluate, log, and save ``output_dir/best`` when the tracked metric improves.

        The RNG states are restored afterwards, so evaluating never changes the training
        randomness. Every rank must call it.

        Returns:
            True when the best value improved.
        """
        loader = self._get_eval_loader()
        if loader is None:
            return False
        rng_before = capture_rng_state()
        result = evaluate(self.model, loader, self.device, self.precision, self.single_answer, self.score_fn)
        restore_rng_state(rng_before)
        self.last_eval = {key: value for key, value in result.items() if key != "predictions"}

        flat = {"accuracy": result["accuracy"]}
        flat.update({f"accuracy/{kind}": acc for kind, acc in result["per_answer_type"].items()})
        values = {
            "epoch": self.epoch_progress(),
            **flat,
            "num_questions": result["num_questions"],
            "num_scored": result["num_scored"],
            "seconds": result["seconds"],
        }
        if self._metrics is not None:
            self._metrics.log("eval", self.global_step, values)
        per_type = ", ".join(f"{kind} {acc:.2f}" for kind, acc in result["per_answer_type"].items())
        self._info(
            "eval step %d: accuracy %.2f%% on %d questions (%s) in %.1fs",
            self.global_step,
            result["accuracy"],
            result["num_questions"],
            per_type or "no answer types",
            result["seconds"],
        )

        metric = self.cfg.train.best_metric
        if metric not in flat:
            raise ValueError(f"train.best_metric={metric!r} is not an evaluation metric; choose one of {sorted(flat)}")
        value = flat[metric]
        if math.isnan(value) or (self.best_value is not None and value <= self.best_value):
            return False
        self.best_value = value
        if self.is_main:
            self._save_best(result, value)
        return True

    # --------------------------------------------------------------- training

    def _forward_backward(self, batch: dict[str, Any], group_size: int, sync: bool) -> Optional[torch.Tensor]:
        """Accumulate the gradients of one micro-batch; returns its loss, or None when it had no questions."""
        weight = 1.0 / group_size
        if batch.get("pixel_values") is None:
            # Every question of this batch had an unreadable image.
            if not is_distributed():
                return None
            if self._last_batch is None:
                raise RuntimeError(
                    "the first training batch of this rank has no readable image, so DDP has nothing to "
                    "synchronize; check the image files or set data.on_bad_image=raise to name them"
                )
            # DDP expects a backward pass on every rank, so repeat the previous batch with weight 0.
            batch, weight, real = self._last_batch, 0.0, False
        else:
            batch, real = move_batch(batch, self.device), True
            if is_distributed():
                self._last_batch = batch

        no_sync = is_distributed() and not sync and hasattr(self.train_model, "no_sync")
        context = self.train_model.no_sync() if no_sync else contextlib.nullcontext()
        with context:
            with autocast_context(self.device, self.precision):
                logits = self.train_model(**{key: batch[key] for key in MODEL_INPUTS})  # (B, A)
                loss = self.model.compute_loss(logits, batch["targets"])
            # Each micro-batch contributes 1 / group_size, so the step follows the mean loss of the group.
            self.scaler.scale(loss * weight).backward()
        return loss.detach() if real else None

    def _optimizer_step(self) -> Optional[torch.Tensor]:
        grad_norm = None
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return grad_norm

    def _time_is_up(self) -> bool:
        limit = self.cfg.train.time_limit_min
        if limit <= 0:
            return False
        flag = torch.tensor([float(time.perf_counter() - self._fit_start > limit * 60)], device=self.device)
        if is_distributed():
            # Clocks differ per rank; all ranks stop together when any one is over the limit.
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _install_signal_handlers(self) -> dict[int, Any]:
        """Turn the first SIGINT or SIGTERM into a clean stop; a second one interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signal.Signals(signum).name
            logger.warning(
                "received %s: stopping after the current step and writing a checkpoint; send it again to stop at once",
                self._stop_signal,
            )

        return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _signal_received(self) -> bool:
        flag = self._stop_signal is not None
        if not is_distributed():
            return flag
        # All ranks stop at the same step when any one of them was signalled.
        tensor = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def _stop_reason(self) -> Optional[str]:
        if self._signal_received():
            return f"{INTERRUPTED} by {self._stop_signal or 'a signal on another rank'}"
        if self.cfg.train.max_steps > 0 and self.global_step >= self.cfg.train.max_steps:
            return f"reached train.max_steps={self.cfg.train.max_steps}"
        if self._time_is_up():
            return f"reached train.time_limit_min={self.cfg.train.time_limit_min}"
        return None

    def _log_train(self, window: dict[str, Any], grad_norm: Optional[torch.Tensor]) -> dict[str, Any]:
        # Sums and counts, reduced over ranks, so that the logged losses are global means.
        stats = torch.stack(
            [
                window["step_loss_sum"].float(),
                torch.tensor(float(window["step_batches"]), device=self.device),
                window["loss_sum"].float(),
                torch.tensor(float(window["loss_batches"]), device=self.device),
                torch.tensor(float(window["samples"]), device=self.device),
                torch.tensor(float(window["skipped"]), device=self.device),
            ]
        )
        if is_distributed():
            dist.all_reduce(stats)

        step_loss_sum, step_batches, loss_sum, loss_batches, samples, skipped = stats.tolist()
        loss = step_loss_sum / step_batches if step_batches else math.nan
        loss_avg = loss_sum / loss_batches if loss_batches else math.nan
        non_finite = (step_batches and not math.isfinite(loss)) or (loss_batches and not math.isfinite(loss_avg))
        if non_finite:
            raise FloatingPointError(
                f"the training loss is {loss} at step {self.global_step}; lower optim.lr, raise optim.warmup_steps "
                f"or use precision=bf16 instead of fp16"
            )

        elapsed = time.perf_counter() - window["start"]
        values = {
            "epoch": self.epoch_progress(),
            "loss": loss,
            "loss_avg": loss_avg,
            "lr": window["lr"],
            "samples_per_s": samples / max(elapsed, 1e-9),
            "data_time_s": window["data_time"] / max(window["batches"], 1),
            "skipped_images": int(skipped),
        }
        if grad_norm is not None:
            values["grad_norm"] = float(grad_norm)

        if self.is_main:
            self._metrics.log("train", self.global_step, values)
            logger.info(
                "epoch %d/%d step %d/%d loss %.4f (avg %.4f) lr %.3e samples/s %.1f data %.3fs",
                self.epoch + 1,
                self.cfg.train.epochs,
                self.global_step,
                self.total_steps,
                values["loss"],
                values["loss_avg"],
                values["lr"],
                values["samples_per_s"],
                values["data_time_s"],
            )
            if skipped:
                named = window["skipped_paths"][:MAX_SKIPPED_NAMED]
                logger.warning("skipped %d unreadable images since the last log line (rank 0: %s)", int(skipped), named)
        return values

    def _new_window(self) -> dict[str, Any]:
        # Statistics since the last log line; step_* cover the latest optimizer step only.
        return {
            "start": time.perf_counter(),
            "step_loss_sum": torch.zeros((), device=self.device),
            "step_batches": 0,
            "loss_sum": torch.zeros((), device=self.device),
            "loss_batches": 0,
            "samples": 0,
            "batches": 0,
            "data_time": 0.0,
            "skipped": 0,
            "skipped_paths": [],
            "lr": self.current_lr(),
        }

    def _train_epoch(self) -> Optional[str]:
        """Run the rest of ``self.epoch``; returns a stop reason when training must end early."""
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch, start=self.batches_done * cfg.data.batch_size)
        batches_total = self.batches_done + math.ceil(len(self.sampler) / cfg.data.batch_size)
        loader = self._train_loader()
        self.train_model.train()

        bar = tqdm(
            total=batches_total,
            initial=self.batches_done,
            desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}",
            unit="batch",
            dynamic_ncols=True,
            disable=not self.is_main,
        )
        window = self._new_window()
        group_size = 0
        micro_batches = 0
        stop_reason = None
        data_start = time.perf_counter()
        batches = iter(loader)
        try:
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except RuntimeError:
                    if self._stop_signal is None:
                        raise
                    # A terminal Ctrl-C also reaches the DataLoader workers, which then exit.
                    # NOTE: a stop inside a gradient-accumulation group rewinds to the group's first
                    # batch, but the dropout RNG has moved on, so that resume is not bit-exact.
                    self.batches_done -= micro_batches
                    self.optimizer.zero_grad(set_to_none=True)
                    stop_reason = f"{INTERRUPTED} by {self._stop_signal}"
                    break
                window["data_time"] += time.perf_counter() - data_start
                window["batches"] += 1
                window["samples"] += len(batch["question_ids"])
                skipped = batch.get("skipped") or []
                window["skipped"] += len(skipped)
                window["skipped_paths"].extend(str(path) for path in skipped)
                self.skipped_images += len(skipped)

                if micro_batches == 0:
                    group_size = min(cfg.optim.grad_accum_steps, batches_total - self.batches_done)
                micro_batches += 1
                is_update = micro_batches == group_size
                loss = self._forward_backward(batch, group_size, sync=is_update)
                if loss is not None:
                    window["step_loss_sum"] += loss
                    window["step_batches"] += 1
                self.batches_done += 1
                bar.update(1)
                if not is_update:
                    data_start = time.perf_counter()
                    continue

                window["lr"] = self.current_lr()
                grad_norm = self._optimizer_step()
                self.global_step += 1
                window["loss_sum"] += window["step_loss_sum"]
                window["loss_batches"] += window["step_batches"]
                if self.global_step % cfg.train.log_every == 0:
                    logged = self._log_train(window, grad_norm)
                    bar.set_postfix(loss=f"{logged['loss']:.4f}", lr=f"{logged['lr']:.2e}")
                    window = self._new_window()
                else:
                    window["step_loss_sum"] = torch.zeros((), device=self.device)
                    window["step_batches"] = 0
                if cfg.train.checkpoint_every > 0 and self.global_step % cfg.train.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.on_step_end is not None:
                    self.on_step_end(self)
                micro_batches = 0

                stop_reason = self._stop_reason()
                if stop_reason is not None:
                    break
                data_start = time.perf_counter()
        finally:
            bar.close()
        return stop_reason

    def fit(self, resume: Optional[str | Path] = None) -> dict[str, Any]:
        """Train until ``train.epochs``, ``train.max_steps`` or ``train.time_limit_min``.

        After each epoch (every ``train.eval_every_epochs``) the model is evaluated and
        ``output_dir/best`` is replaced when ``train.best_metric`` improves; ``last.pt`` is
        written at every epoch end. A run that stops early writes ``last.pt`` and then
        evaluates.

        Args:
            resume: a checkpoint file or a run folder with ``last.pt``; None starts afresh.

        Returns:
            ``global_step``, ``epoch``, ``best_metric``, ``best_value``, ``last_eval``
            (without predictions), ``skipped_images`` and ``stop_reason``.

        Raises:
            FileNotFoundError: ``resume`` does not exist.
        """
        cfg = self.cfg
        self._fit_start = time.perf_counter()
        _seed_everything(cfg.train.seed + self.dist.rank)
        if resume is not None:
            self.load_checkpoint(resume)
        self._write_config()
        self._metrics = MetricLogger(
            self.output_dir, enabled=self.is_main, resume_step=self.global_step if resume is not None else None
        )
        if self._pending_rng is not None:
            # Restored last, so nothing in the setup above shifts the dropout stream.
            restore_rng_state(self._pending_rng)
            self._pending_rng = None

        self._info(
            "training on %s (%s, %d process%s): %d samples, %d steps per epoch, %d steps in total",
            self.device,
            self.precision,
            self.dist.world_size,
            "es" if self.dist.world_size > 1 else "",
            len(self.train_dataset),
            self.steps_per_epoch,
            self.total_steps,
        )
        stop_reason = self._stop_reason() if self.global_step > 0 else None
        redirect = logging_redirect_tqdm() if self.is_main else contextlib.nullcontext()
        previous_handlers = self._install_signal_handlers()
        try:
            with redirect:
                while stop_reason is None and self.epoch < cfg.train.epochs:
                    stop_reason = self._run_epoch()
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            self._metrics.close()
        if stop_reason is not None and stop_reason.startswith(INTERRUPTED):
            self._info("continue this run with --resume %s", self.output_dir)
        if stop_reason is None and self.epoch >= cfg.train.epochs:
            stop_reason = f"finished train.epochs={cfg.train.epochs}"
        self._info("training stopped: %s at step %d", stop_reason, self.global_step)
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "best_metric": cfg.train.best_metric,
            "best_value": self.best_value,
            "last_eval": self.last_eval,
            "skipped_images": self.skipped_images,
            "stop_reason": stop_reason,
        }

    def _run_epoch(self) -> Optional[str]:
        epoch = self.epoch
        stop_reason = self._train_epoch()
        if stop_reason is not None and stop_reason.startswith(INTERRUPTED):
            # Keep the progress and leave quickly; evaluation waits for the resumed run.
            self.save_checkpoint()
            return stop_reason
        epoch_complete = self.batches_done >= math.ceil(self.sampler.num_samples / self.cfg.data.batch_size)
        if epoch_complete:
            self.epoch = epoch + 1
            self.batches_done = 0
            if self._eval_due(epoch) or stop_reason is not None:
                self.evaluate_and_select()
            self.save_checkpoint()
        else:
            # Stopped inside the epoch: keep the progress first, then evaluate.
            self.save_checkpoint()
            if self.evaluate_and_select():
                self.save_checkpoint()
        return stop_reason
