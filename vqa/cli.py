"""Command-line entry points: ``vqa train|evaluate|predict``, also reachable as ``scripts/<name>.py``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["main", "train_main", "evaluate_main", "predict_main"]

logger = logging.getLogger("vqa")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def build_train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train",
        description="Train a VQA model from a YAML preset plus key=value overrides.",
        epilog="Example: scripts/train.py --config models/easy_vqa_dba.yaml train.epochs=3 model.fusion.attention=full",
    )
    parser.add_argument(
        "--config",
        help="YAML preset, for example models/easy_vqa_dba.yaml; required unless --resume points to a run "
        "folder, whose config.yaml is then used",
    )
    parser.add_argument(
        "--resume",
        help="checkpoint file (last.pt) or run folder to continue from; a missing path is an error",
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as optim.lr=3e-4")
    return parser


def build_evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate", description="Score a saved model with the official VQA accuracy on one split."
    )
    parser.add_argument("--checkpoint", help="model folder written by save_pretrained (run/best)")
    parser.add_argument("--split", required=True, help="split name, for example val or test")
    parser.add_argument("--results", help="write predictions here in the official results format")
    parser.add_argument(
        "--score-results",
        help="score this results file ([{question_id, answer}]) instead of running a model; needs --dataset and --root",
    )
    parser.add_argument("--dataset", help="data set name; defaults to the one the model was trained on")
    parser.add_argument(
        "--root", help="data set folder; defaults to the one the model was trained on (easy_vqa needs none)"
    )
    parser.add_argument("--batch-size", type=int, default=128, help="questions per batch")
    parser.add_argument("--max-samples", type=int, default=0, help="score only the first N questions (0: all)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return parser


def build_predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="predict", description="Answer questions about images.")
    parser.add_argument("--checkpoint", required=True, help="model folder written by save_pretrained (run/best)")
    parser.add_argument("--image", help="image file")
    parser.add_argument("--question", help="question about the image")
    parser.add_argument("--batch", help='JSONL file with one {"image": ..., "question": ...} per line')
    parser.add_argument("--top-k", type=int, default=5, help="number of answers to print per question (default: 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per question")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return parser


def train_main(argv: Optional[Sequence[str]] = None) -> dict:
    from vqa.config import load_config
    from vqa.pipeline import train

    parser = build_train_parser()
    args = parser.parse_args(argv)
    _setup_logging()
    config_path = args.config
    if config_path is None:
        if args.resume is None:
            parser.error("pass --config PRESET (see models/*.yaml), or --resume RUN_FOLDER")
        config_path = _run_config_of(Path(args.resume))
    cfg = load_config(config_path, args.overrides)
    return train(cfg, resume=args.resume)


def _run_config_of(resume: Path) -> str:
    """Return the config.yaml that a training run saved next to its checkpoints."""
    if not resume.exists():
        raise FileNotFoundError(
            f"--resume {resume} not found; pass a run folder that contains last.pt, or the checkpoint file itself"
        )
    run_dir = resume.parent if resume.is_file() else resume
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(
            f"{saved} not found, so the settings of the run to resume are unknown; pass --config with the "
            "preset and overrides the run was started with"
        )
    logger.info("resuming with the run's own config %s", saved)
    return str(saved)


def evaluate_main(argv: Optional[Sequence[str]] = None) -> dict:
    from vqa.model import VQAModel
    from vqa.pipeline import evaluate_saved_model, score_results_file

    parser = build_evaluate_parser()
    args = parser.parse_args(argv)
    _setup_logging()
    if args.score_results is not None:
        dataset, root = args.dataset, args.root
        if args.checkpoint is not None and (dataset is None or root is None):
            trained_on = VQAModel.from_pretrained(args.checkpoint).training_data or {}
            dataset = dataset or trained_on.get("dataset")
            root = root if root is not None else trained_on.get("root")
        if dataset is None:
            parser.error("--score-results needs --dataset (and --root, except for easy_vqa) or --checkpoint")
        report = score_results_file(args.score_results, dataset, root or "", args.split)
        print(format_report(report))
        return report
    if args.checkpoint is None:
        parser.error("pass --checkpoint, or --score-results with --dataset and --root")
    report = evaluate_saved_model(
        args.checkpoint,
        split=args.split,
        results_path=args.results,
        dataset=args.dataset,
        root=args.root,
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        device=args.device,
    )
    print(format_report(report))
    if args.results is not None:
        print(f"wrote the predictions in the official results format to {args.results}")
    return report


def format_report(report: dict) -> str:
    scored = report.get("num_scored", report["num_questions"])
    lines = [f"accuracy: {report['accuracy']:.2f} ({scored} of {report['num_questions']} questions scored)"]
    for answer_type, value in sorted(report.get("per_answer_type", {}).items()):
        lines.append(f"  {answer_type}: {value:.2f}")
    for group, value in sorted(report.get("per_group", {}).items()):
        lines.append(f"  {group}: {value:.2f}")
    if report.get("missing") or report.get("extra"):
        lines.append(
            f"WARNING: {report['missing']} questions of the split have no prediction and "
            f"{report['extra']} predictions are not in the split; accuracy covers the matched questions only"
        )
    return "\n".join(lines)


def predict_main(argv: Optional[Sequence[str]] = None) -> list:
    from vqa.inference import Predictor, read_jsonl_pairs

    parser = build_predict_parser()
    args = parser.parse_args(argv)
    if args.batch is None and (args.image is None or args.question is None):
        parser.error("pass --image and --question, or --batch FILE.jsonl")
    if args.batch is not None and (args.image is not None or args.question is not None):
        parser.error("--batch cannot be combined with --image/--question")
    if args.top_k < 1:
        parser.error(f"--top-k must be at least 1, got {args.top_k}")

    pairs = read_jsonl_pairs(args.batch) if args.batch else [(args.image, args.question)]
    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device)
    predictions = predictor.predict_batch(pairs, top_k=args.top_k)
    for prediction in predictions:
        if args.json:
            print(json.dumps(prediction.to_dict()))
            continue
        print(f"image: {prediction.image}")
        print(f"question: {prediction.question}")
        for answer, score in zip(prediction.answers, prediction.scores):
            print(f"  {score:7.4f}  {answer}")
    return predictions


COMMANDS = {"train": train_main, "evaluate": evaluate_main, "predict": predict_main}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: vqa {{{','.join(COMMANDS)}}} [options]; run 'vqa COMMAND --help' for details", file=sys.stderr)
        return 2
    try:
        result = COMMANDS[argv[0]](argv[1:])
    except (OSError, ValueError) as error:
        # OSError covers missing files and images that fail to decode.
        logger.error("%s", error)
        return 1
    if isinstance(result, dict) and str(result.get("stop_reason", "")).startswith("interrupted"):
        return 130
    return 0
