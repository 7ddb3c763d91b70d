"""The ``make demo`` job: train on easy-VQA, score the test split, answer one test question."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

from vqa.config import load_config
from vqa.data import read_dataset
from vqa.inference import Predictor
from vqa.pipeline import evaluate_saved_model, train

__all__ = ["main"]

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "models/easy_vqa_dba.yaml"


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description="Train, evaluate and query a DBA VQA model on easy-VQA.")
    parser.add_argument("--config", default=DEFAULT_PRESET, help=f"training preset (default: {DEFAULT_PRESET})")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides such as train.epochs=1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # The demo retrains from scratch each time, replacing its previous run.
    cfg = load_config(args.config, ["train.overwrite=true", *args.overrides])
    run_dir = Path(cfg.train.output_dir)

    # 1. Train; the best validation checkpoint lands in <run>/best.
    start = time.perf_counter()
    summary = train(cfg)
    train_minutes = (time.perf_counter() - start) / 60

    # 2. Official accuracy on the test split, and a results file in the official format.
    best = run_dir / "best"
    report = evaluate_saved_model(
        best, split=cfg.data.test_split, results_path=run_dir / "test_results.json", device=cfg.train.device
    )

    # 3. One question about one test image.
    record = read_dataset(cfg.data.dataset, cfg.data.root, cfg.data.test_split)[0]
    prediction = Predictor.from_pretrained(best).predict(record.image_path, record.question, top_k=3)

    lines = [
        "",
        f"trained for {train_minutes:.1f} min ({summary.get('global_step')} steps); best model in {best}",
        f"test accuracy: {report['accuracy']:.2f}% on {report['num_questions']} questions",
    ]
    lines += [f"  {name}: {value:.2f}%" for name, value in sorted(report["per_answer_type"].items())]
    lines += [
        f"image: {record.image_path}",
        f"question: {record.question}",
        "predicted: " + ", ".join(f"{a} ({s:.3f})" for a, s in zip(prediction.answers, prediction.scores)),
        f"true answer: {record.answers[0]}",
    ]
    print("\n".join(lines))

    result = {
        "train_minutes": round(train_minutes, 2),
        "test_accuracy": report["accuracy"],
        "per_answer_type": report["per_answer_type"],
        "num_test_questions": report["num_questions"],
    }
    (run_dir / "demo_summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
