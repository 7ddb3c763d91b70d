#!/usr/bin/env python
"""Check whether a head and fusion setting learns Sort-of-CLEVR, on cached frozen image features.

Usage:
    scripts/probe_sort_of_clevr.py --config models/ablation_sort_of_clevr.yaml [options] [key=value ...]

The image size is model.image.img_size (for example model.image.img_size=64 for 8 x 8 tokens).
The attention backend is model.fusion.attention, with its options from ablation.backend_options. Prints the test accuracy per question family every
--eval-every steps and writes them to --out as JSON.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from vqa.ablation import load_ablation_config
from vqa.ablation.probe import ProbeSettings, run_probe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a preset with a frozen CNN image encoder")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-questions", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=300)
    parser.add_argument("--no-fusion", action="store_true", help="feed the encoder tokens straight to the head")
    parser.add_argument("--logit-scale", type=float, default=None, help="the guided pool's logit scale (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="default: runs/probe/sort_of_clevr_<size>px_<train images>")
    parser.add_argument("--out", default=None, help="write the evaluations here as JSON")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, for example optim.lr=1e-3 model.image.img_size=64")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        cfg = load_ablation_config(args.config, args.overrides)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # The backend gets the same options as in the ablation runs.
    options = cfg.ablation.backend_options.get(cfg.model.fusion.attention)
    if options:
        cfg.model.fusion.attention_options = dict(options)
    size = cfg.model.image.img_size
    settings = ProbeSettings(
        data_dir=args.data_dir or f"runs/probe/sort_of_clevr_{size}px_{args.train_images}",
        train_images=args.train_images,
        test_images=args.test_images,
        steps=args.steps,
        batch_questions=args.batch_questions,
        eval_every=args.eval_every,
        use_fusion=not args.no_fusion,
        logit_scale=args.logit_scale,
        seed=args.seed,
    )
    try:
        history = run_probe(cfg, settings)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"settings": vars(settings), "overrides": args.overrides, "history": history}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
