"""Child process of an ablation: one training run, or the side-by-side speed phase at one image size.

    python -m vqa.ablation.run_one --spec RUN_DIR/spec.json
    python -m vqa.ablation.run_one --speed SPEED_DIR/spec.json

The runner starts one such process per run, so that a crash or an out-of-memory kill ends only
that run and the peak memory is the run's own. The child writes its result to the ``result`` path
named in the spec, also when the run fails. The exit status is 0 on success and 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from vqa.ablation.measure import TimedModel, count_parameters, fusion_flops_per_sample, peak_memory_mb, time_side_by_side
from vqa.ablation.spec import run_config_from_dict
from vqa.config import RunConfig
from vqa.model import VQAModel
from vqa.data import is_single_answer
from vqa.pipeline import build_dataset, build_records, build_vocab, score_predictions, train
from vqa.training.checkpoint import CHECKPOINT_NAME
from vqa.training.evaluation import build_eval_loader, evaluate, move_batch
from vqa.training.metric_logger import METRICS_FILE
from vqa.training.precision import resolve_precision
from vqa.training.trainer import BEST_DIR

logger = logging.getLogger("vqa.ablation.run_one")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Return the records of a run's ``metrics.jsonl`` (empty when it does not exist)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_throughput(records: list[dict[str, Any]]) -> float | None:
    """Return the median questions/s of the logged training windows, leaving out the first (warm-up) one."""
    rates = [r["samples_per_s"] for r in records if r.get("kind") == "train" and "samples_per_s" in r]
    rates = rates[1:] if len(rates) > 1 else rates
    return statistics.median(rates) if rates else None


def current_rss_mb() -> float:
    """Return this process's resident memory now, in MiB, from /proc/self/statm (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _text_tokens(model: VQAModel, questions: list[str]) -> int:
    """Return the median token count of the distinct questions, as the text encoder tokenizes them."""
    distinct = sorted(set(questions))
    lengths = model.text_encoder.tokenize(distinct)["attention_mask"].sum(dim=1).tolist()
    return int(statistics.median(lengths))


def _score_split(model: VQAModel, cfg: RunConfig, records: list, device: torch.device) -> dict[str, Any]:
    """Predict ``records`` with the run's own batching (one pass per image when grouped) and score them.

    ``vqa.pipeline.evaluate_saved_model`` would encode each image once per question.
    """
    dataset, collate = build_dataset(records, model, cfg.data, is_training=False)
    loader = build_eval_loader(dataset, cfg.data.eval_batch_size, collate)
    precision = resolve_precision(cfg.train.precision, device)
    result = evaluate(model, loader, device, precision, is_single_answer(cfg.data.dataset))
    return score_predictions(result["predictions"], records, cfg.data.dataset)


def run_training(spec: dict[str, Any]) -> dict[str, Any]:
    """Train, score the best checkpoint on the evaluation split and measure its cost."""
    cfg = run_config_from_dict(spec["config"])
    run_dir = Path(cfg.train.output_dir)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu")
    baseline = current_rss_mb()
    start = time.perf_counter()
    summary = train(cfg)
    train_seconds = time.perf_counter() - start
    peak = peak_memory_mb(device)

    model = VQAModel.from_pretrained(run_dir / BEST_DIR, device=device)
    records = build_records(cfg.data, spec["eval_split"], cfg.data.max_eval_samples)
    report = _score_split(model, cfg, records, device)
    text_tokens = _text_tokens(model, [record.question for record in records])
    image_tokens = model.image_encoder.num_tokens()
    metrics = read_metrics(run_dir)
    if not spec.get("keep_last_checkpoint", False):
        (run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)

    return {
        "status": "ok",
        "error": None,
        "steps": summary["global_step"],
        "stop_reason": summary["stop_reason"],
        "train_seconds": train_seconds,
        "train_samples_per_s": training_throughput(metrics),
        "peak_memory_mb": peak,
        "memory_growth_mb": peak - baseline if device.type == "cpu" else None,
        "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_max_rss",
        "accuracy": report["accuracy"],
        "per_group": report["per_group"],
        "per_family": report["per_answer_type"],
        "num_questions": report["num_questions"],
        "image_tokens": image_tokens,
        "text_tokens": text_tokens,
        "fusion_flops_per_sample": fusion_flops_per_sample(model.fusion, text_tokens, image_tokens, cfg.model.fusion.dim),
        **count_parameters(model),
        "curve": [
            {"step": r["step"], "accuracy": r["accuracy"]}
            for r in metrics
            if r.get("kind") == "eval" and "accuracy" in r
        ],
    }


def _speed_batch(cfg: RunConfig, model: VQAModel, images: int) -> dict[str, Any]:
    """Collate the first ``images`` training images with all of their questions into one batch."""
    records = build_records(cfg.data, cfg.data.train_split, cfg.data.max_train_samples)
    grouped = cfg.data.group_by_image
    cfg.data.group_by_image = True
    dataset, collate = build_dataset(records, model, cfg.data, is_training=True)
    cfg.data.group_by_image = grouped
    count = min(images, len(dataset))
    return collate([dataset[index] for index in range(count)])


def run_speed(spec: dict[str, Any]) -> dict[str, Any]:
    """Build every variant at one image size and time them side by side on one fixed batch."""
    configs = {name: run_config_from_dict(values) for name, values in spec["configs"].items()}
    first = next(iter(configs.values()))
    device_name = first.train.device
    if device_name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but CUDA is not available; use train.device=auto or cpu")
    device = torch.device("cuda" if device_name != "cpu" and torch.cuda.is_available() else "cpu")
    precision = resolve_precision(first.train.precision, device)

    train_records = build_records(first.data, first.data.train_split, first.data.max_train_samples)
    vocab = build_vocab(first.data, train_records)
    entries, build_errors, batch = [], {}, None
    for name, cfg in configs.items():
        torch.manual_seed(cfg.train.seed)
        try:
            model = VQAModel(cfg.model, vocab).to(device)
        except (RuntimeError, ValueError) as error:
            build_errors[name] = f"{type(error).__name__}: {error}"
            continue
        if batch is None:
            batch = move_batch(_speed_batch(cfg, model, spec["batch_images"]), device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
        entries.append(TimedModel(name, model, optimizer))

    records = []
    if entries:
        records = time_side_by_side(
            entries, batch, device, precision, spec["rounds"], spec["warmup_rounds"], log=lambda line: logger.info(line)
        )
    for name, error in build_errors.items():
        records.append({"name": name, "error": error})
    return {
        "status": "ok",
        "error": None,
        "image_size": spec["image_size"],
        "device": str(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "records": records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one ablation run, or the speed phase at one image size.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--spec", type=Path, help="spec.json of one training run, written by the runner")
    group.add_argument("--speed", type=Path, help="spec.json of the speed phase at one image size")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    spec_path = args.spec or args.speed
    spec = json.loads(spec_path.read_text())
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    result_path = Path(spec["result"])
    try:
        result = run_training(spec) if args.spec else run_speed(spec)
        code = 0
    except Exception as error:  # noqa: BLE001 - any failure must become a row of the table
        logger.error("run failed: %s", traceback.format_exc())
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        code = 1
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
