"""Build data, model and trainer from a ``RunConfig``; the logic behind the train and evaluate scripts."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch.utils.data import Dataset

from vqa.config import DataConfig, RunConfig
from vqa.data import AnswerVocab, QuestionRecord, VQACollator, VQADataset, is_single_answer, read_dataset
from vqa.data.grouped import GroupedCollator, ImageGroupedDataset
from vqa.data.sort_of_clevr import question_group
from vqa.metrics import evaluate_results, load_results, write_results
from vqa.model import VQAModel
from vqa.training import Trainer, build_eval_loader, cleanup_distributed, init_distributed
from vqa.training.evaluation import evaluate
from vqa.training.precision import resolve_precision

__all__ = ["build_records", "build_vocab", "build_dataset", "train", "evaluate_saved_model", "score_results_file"]

logger = logging.getLogger(__name__)

VOCAB_FILE = "answers.json"


def build_records(data: DataConfig, split: str, max_samples: int = 0) -> list[QuestionRecord]:
    """Read one split; ``max_samples`` > 0 keeps the first questions only (for smoke runs)."""
    records = read_dataset(data.dataset, data.root, split)
    if max_samples > 0:
        records = records[:max_samples]
    if not records:
        raise ValueError(f"split {split!r} of {data.dataset} in {data.root} contains no questions; check data.root and the split name")
    return records


def build_vocab(data: DataConfig, records: list[QuestionRecord]) -> AnswerVocab:
    return AnswerVocab.build(records, top_k=data.top_k or None, min_count=data.min_count)


def build_dataset(
    records: list[QuestionRecord], model: VQAModel, data: DataConfig, is_training: bool
) -> tuple[Dataset, Any]:
    """Return (dataset, collate_fn); with ``data.group_by_image`` one item is one image and its questions."""
    transform = model.image_encoder.build_transform(is_training=is_training, augment=data.augment)
    dataset = VQADataset(records, model.vocab, transform, on_bad_image=data.on_bad_image)
    collator = VQACollator(model.text_encoder.tokenizer, model.config.text.max_length)
    if data.group_by_image:
        return ImageGroupedDataset(dataset), GroupedCollator(collator)
    return dataset, collator


def _run_vocab(cfg: RunConfig, train_records: list[QuestionRecord], resume: Optional[str]) -> AnswerVocab:
    """Build the vocabulary, or reuse the run's own when resuming so the classifier rows keep their meaning."""
    saved = Path(cfg.train.output_dir) / VOCAB_FILE
    if resume is not None and saved.is_file():
        return AnswerVocab.load(saved)
    return build_vocab(cfg.data, train_records)


def _check_output_dir(cfg: RunConfig, resume: Optional[str]) -> None:
    """Reject a fresh run whose output folder already contains another run's checkpoints."""
    output_dir = Path(cfg.train.output_dir)
    if resume is not None:
        return
    if cfg.train.overwrite:
        _remove_run_files(output_dir)
        return
    existing = [name for name in ("last.pt", "best") if (output_dir / name).exists()]
    if existing:
        raise ValueError(
            f"train.output_dir={output_dir} already contains {' and '.join(existing)} from an earlier run; "
            f"continue it with --resume {output_dir}, choose another train.output_dir, "
            "or pass train.overwrite=true to replace it"
        )


RUN_FILES = ("last.pt", "best.json", "best_predictions.json", "metrics.jsonl", VOCAB_FILE)
RUN_FOLDERS = ("best", "tensorboard")


def _remove_run_files(output_dir: Path) -> None:
    """Delete what an earlier run wrote into ``output_dir``, so its curves do not mix with the new run's."""
    for name in RUN_FILES:
        (output_dir / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        shutil.rmtree(output_dir / name, ignore_errors=True)


def train(cfg: RunConfig, resume: Optional[str] = None) -> dict[str, Any]:
    """Train the model that ``cfg`` describes; returns the trainer's summary."""
    if resume is not None and not Path(resume).exists():
        raise FileNotFoundError(
            f"--resume {resume} not found; pass a run folder that contains last.pt, or the checkpoint file itself"
        )
    _check_output_dir(cfg, resume)
    torch.manual_seed(cfg.train.seed)
    train_records = build_records(cfg.data, cfg.data.train_split, cfg.data.max_train_samples)
    val_records = build_records(cfg.data, cfg.data.val_split, cfg.data.max_eval_samples)
    vocab = _run_vocab(cfg, train_records, resume)
    model = VQAModel(cfg.model, vocab)
    model.training_data = {"dataset": cfg.data.dataset, "root": cfg.data.root}

    train_set, train_collate = build_dataset(train_records, model, cfg.data, is_training=True)
    val_set, val_collate = build_dataset(val_records, model, cfg.data, is_training=False)
    trainer = Trainer(
        cfg,
        model,
        train_set,
        train_collate,
        val_set,
        eval_collate_fn=val_collate,
        single_answer=is_single_answer(cfg.data.dataset),
    )
    if trainer.is_main:
        Path(cfg.train.output_dir).mkdir(parents=True, exist_ok=True)
        vocab.save(Path(cfg.train.output_dir) / VOCAB_FILE)
    logger.info(
        "%s: %d training and %d validation questions, %d answers, %.1fM parameters (%.1fM trainable)",
        cfg.data.dataset,
        len(train_records),
        len(val_records),
        len(vocab),
        sum(p.numel() for p in model.parameters()) / 1e6,
        sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    )
    try:
        summary = trainer.fit(resume=resume)
    except BaseException:
        cleanup_distributed(wait_for_peers=False)
        raise
    cleanup_distributed()
    return summary


def evaluate_saved_model(
    checkpoint: Union[str, Path],
    split: str,
    results_path: Optional[Union[str, Path]] = None,
    dataset: Optional[str] = None,
    root: Optional[str] = None,
    batch_size: int = 128,
    max_samples: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    """Score a saved model on one split with the official metric; optionally write its results file."""
    model = VQAModel.from_pretrained(checkpoint)
    trained_on = getattr(model, "training_data", None) or {}
    dataset = dataset or trained_on.get("dataset")
    root = root or trained_on.get("root")
    if dataset is None or root is None:
        raise ValueError(f"{checkpoint} does not record which data set it was trained on; pass --dataset and --root")

    data = DataConfig(dataset=dataset, root=root, eval_batch_size=batch_size, num_workers=0)
    records = build_records(data, split, max_samples)
    context = init_distributed(device)
    try:
        eval_set, collate = build_dataset(records, model, data, is_training=False)
        loader = build_eval_loader(eval_set, batch_size, collate)
        precision = resolve_precision("auto", context.device)
        single_answer = is_single_answer(dataset)
        result = evaluate(model.to(context.device), loader, context.device, precision, single_answer)
    except BaseException:
        cleanup_distributed(wait_for_peers=False)
        raise
    cleanup_distributed()

    report = score_predictions(result["predictions"], records, dataset)
    report["skipped_images"] = result.get("skipped", 0)
    if results_path is not None:
        write_results(results_path, result["predictions"])
        report["results_path"] = str(results_path)
    return report


def score_predictions(predictions: list[dict], records: list[QuestionRecord], dataset: str) -> dict[str, Any]:
    """Official accuracy of ``[{"question_id", "answer"}]`` against ``records``, in percent."""
    group_of = question_group if dataset == "sort_of_clevr" else None
    scored = evaluate_results(predictions, records, is_single_answer(dataset), group_of=group_of)
    return {
        "accuracy": scored["overall"],
        "per_answer_type": scored["per_answer_type"],
        "per_group": scored.get("per_group", {}),
        "num_questions": scored["num_questions"],
        "num_scored": scored["num_scored"],
        "missing": scored["missing"],
        "extra": scored["extra"],
    }


def score_results_file(results_path: Union[str, Path], dataset: str, root: str, split: str) -> dict[str, Any]:
    """Score a results file in the official format; missing and extra ids are counted and reported."""
    try:
        predictions = load_results(results_path)
    except json.JSONDecodeError as error:
        raise ValueError(f"results file {results_path} is not valid JSON: {error}") from error
    if not predictions:
        raise ValueError(f"results file {results_path} contains no predictions")
    records = build_records(DataConfig(dataset=dataset, root=root), split)
    return score_predictions(predictions, records, dataset)
