"""Evaluation with the official VQA accuracy, single-process or sharded over DDP ranks.

Each rank predicts its shard (see ``ShardedEvalSampler``), the per-question records are
gathered with ``all_gather_object``, de-duplicated by question id, and the accuracy is
computed once over the union. A padded sampler, which repeats questions to even out the
shards, therefore cannot count a question twice.
"""

from __future__ import annotations

import logging
import numbers
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vqa.training.distributed import all_gather_objects, get_rank, get_world_size, unwrap_model
from vqa.training.precision import autocast_context
from vqa.training.sampler import ShardedEvalSampler

__all__ = ["ScoreFn", "evaluate", "build_eval_loader", "move_batch", "summarize"]

logger = logging.getLogger(__name__)

ScoreFn = Callable[[str, list, bool], float]
MODEL_INPUTS = ("pixel_values", "input_ids", "attention_mask", "image_index")


def _default_score_fn() -> ScoreFn:
    from vqa.metrics import score

    return score


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Copy the tensors of a collated batch to ``device``; other values stay as they are."""
    non_blocking = device.type == "cuda"
    return {
        key: value.to(device, non_blocking=non_blocking) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }


def build_eval_loader(
    dataset: Dataset, batch_size: int, collate_fn: Callable, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Return a loader over this rank's shard of ``dataset``, without padding or shuffling.

    The loader has its own seeded generator, so creating it does not draw from the
    global torch RNG that training uses.

    Args:
        dataset: the evaluation set.
        batch_size: questions per batch.
        collate_fn: the batch collator.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory for faster copies to CUDA.
    """
    sampler = ShardedEvalSampler(len(dataset), rank=get_rank(), world_size=get_world_size())
    generator = torch.Generator()
    generator.manual_seed(0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=generator,
    )


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-question records into accuracy (percent) overall and per answer type.

    Records without a score (questions with no human answers, such as test-dev) count in
    ``num_questions`` but not in the accuracy.
    """
    records = list(records)
    scored = [r for r in records if r["score"] is not None]
    by_type: dict[str, list[float]] = defaultdict(list)
    for record in scored:
        if record["answer_type"] is not None:
            by_type[record["answer_type"]].append(record["score"])
    accuracy = 100.0 * sum(r["score"] for r in scored) / len(scored) if scored else float("nan")
    return {
        "accuracy": accuracy,
        "per_answer_type": {t: 100.0 * sum(s) / len(s) for t, s in sorted(by_type.items())},
        "num_questions": len(records),
        "num_scored": len(scored),
    }


def _sort_key(question_id: Any) -> tuple:
    # Question ids are ints in VQA v2 and strings in GQA; order ints numerically, then strings.
    return (0, int(question_id), "") if isinstance(question_id, numbers.Integral) else (1, 0, str(question_id))


def _predict_shard(
    model: nn.Module, loader: DataLoader, device: torch.device, precision: str, single_answer: bool, score_fn: ScoreFn
) -> tuple[list[dict[str, Any]], int]:
    records, skipped = [], 0
    for batch in loader:
        skipped += len(batch.get("skipped") or [])
        if batch.get("pixel_values") is None:
            # Every question of this batch had an unreadable image.
            continue
        batch = move_batch(batch, device)
        with autocast_context(device, precision):
            logits = model(**{key: batch[key] for key in MODEL_INPUTS})  # (B, A)
        predicted = logits.float().argmax(dim=-1).tolist()
        answer_types = batch.get("answer_types") or [None] * len(predicted)
        for question_id, index, humans, answer_type in zip(
            batch["question_ids"], predicted, batch["answers"], answer_types
        ):
            answer = model.vocab.answer(index)
            score = float(score_fn(answer, list(humans), single_answer)) if humans else None
            records.append({"question_id": question_id, "answer": answer, "score": score, "answer_type": answer_type})
    return records, skipped


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: str = "fp32",
    single_answer: bool = False,
    score_fn: Optional[ScoreFn] = None,
) -> dict[str, Any]:
    """Predict every question of ``loader`` and score the answers with the official metric.

    Under DDP every rank must call this with a loader over its own shard (see
    ``build_eval_loader``). Each rank then returns the same result for the whole set.

    Args:
        model: the model, possibly wrapped in DDP or ``torch.compile``; it runs unwrapped,
            in eval mode and under ``torch.inference_mode``, and its train/eval mode is
            restored afterwards.
        loader: batches from ``vqa.data.VQACollator``.
        device: where the model runs.
        precision: resolved precision, ``fp32``, ``bf16`` or ``fp16``.
        single_answer: score by exact match (GQA, CLEVR) instead of the 10-annotator VQA accuracy.
        score_fn: ``score(prediction, human_answers, single_answer) -> float`` in [0, 1];
            defaults to ``vqa.metrics.score``.

    Returns:
        ``accuracy`` (percent), ``per_answer_type`` (type -> percent), ``num_questions``,
        ``num_scored``, ``duplicates`` (repeated question ids dropped), ``skipped``
        (questions whose image failed to load, not scored), ``seconds``, and
        ``predictions``: ``[{"question_id", "answer"}]`` sorted by question id.
    """
    score_fn = score_fn or _default_score_fn()
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            local = _predict_shard(model, loader, device, precision, single_answer, score_fn)
    finally:
        model.train(was_training)

    unique: dict[Any, dict[str, Any]] = {}
    duplicates = skipped = 0
    for shard, shard_skipped in all_gather_objects(local):
        skipped += shard_skipped
        for record in shard:
            if record["question_id"] in unique:
                duplicates += 1
            else:
                unique[record["question_id"]] = record
    if duplicates:
        logger.warning("evaluation saw %d repeated question ids; each id is counted once", duplicates)
    if skipped:
        logger.warning("evaluation skipped %d questions with unreadable images; they are not scored", skipped)

    ordered = [unique[key] for key in sorted(unique, key=_sort_key)]
    result = summarize(ordered)
    result["duplicates"] = duplicates
    result["skipped"] = skipped
    result["seconds"] = time.perf_counter() - start
    result["predictions"] = [{"question_id": r["question_id"], "answer": r["answer"]} for r in ordered]
    return result
