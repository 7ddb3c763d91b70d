"""Metric sinks of a run: ``metrics.jsonl`` and TensorBoard, written by rank 0 only."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Optional

__all__ = ["METRICS_FILE", "TENSORBOARD_DIR", "MetricLogger", "RunningMean"]

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class RunningMean:
    """Mean of the values added since the last ``reset``."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def add(self, value: float, count: int = 1) -> None:
        self.total += value * count
        self.count += count

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def reset(self) -> None:
        self.total = 0.0
        self.count = 0


class MetricLogger:
    """Append one JSON object per record to ``metrics.jsonl`` and mirror the numbers to TensorBoard.

    A record looks like ``{"kind": "train", "step": 40, "epoch": 0, "loss": 0.61, ...}``.
    TensorBoard tags are ``<kind>/<key>`` for every numeric value.

    Args:
        output_dir: the run folder.
        enabled: False on ranks other than 0; every method then does nothing.
        resume_step: the global step of the checkpoint a run resumes from. Records of a
            later step, written by the interrupted run after that checkpoint, are dropped
            from ``metrics.jsonl`` and from TensorBoard so the curves do not double back.
    """

    def __init__(self, output_dir: Path, enabled: bool = True, resume_step: Optional[int] = None):
        self.enabled = enabled
        self.path = Path(output_dir) / METRICS_FILE
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._drop_records_after(resume_step)
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(
            log_dir=str(Path(output_dir) / TENSORBOARD_DIR),
            purge_step=resume_step + 1 if resume_step is not None else None,
        )

    def _drop_records_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # A line cut short by the interruption.
                dropped += 1
                continue
            if record.get("step", 0) > step:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
            logger.info("dropped %d records after step %d from %s", dropped, step, self.path)

    def log(self, kind: str, step: int, values: Mapping[str, Any]) -> None:
        """Write one record of ``kind`` (``train`` or ``eval``) at optimizer step ``step``."""
        if not self.enabled:
            return
        # NaN (a step whose batches all had unreadable images) becomes null, so the file stays strict JSON.
        values = {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in values.items()}
        record = {"kind": kind, "step": int(step), **values}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, allow_nan=False) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "step"):
                self._writer.add_scalar(f"{kind}/{key}", value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
