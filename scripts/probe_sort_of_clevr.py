#!/usr/bin/env python
"""Check whether a head and fusion setting learns Sort-of-CLEVR, on cached frozen image features.

Usage:
    scripts/probe_sort_of_clevr.py --config models/ablation_sort_of_clevr.yaml [options] [key=value ...]

The image size is model.image.img_size (for example model.image.img_size=64 for 8 x 8 tokens at stride 8).
At 64 px a thousand steps take one or two minutes on 2 CPU cores. The token count grows with the
square of the image size, and the time grows with it.
The attention backend is model.fusion.attention, with its options from ablation.backend_options. Prints the test accuracy per question family every
--eval-every steps and writes them to --out as JSON.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from vqa.ablation.config import AblationConfig
from vqa.ablation.probe import ProbeSettings, run_probe
from vqa.config import load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--config", required=True, help="a preset with a frozen CNN image encoder (freeze_blocks: -1)")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    parser.add_argument("--batch-questions", type=int, default=64, help="questions per step")
    parser.add_argument("--eval-every", type=int, default=250, help="steps between test evaluations")
    parser.add_argument("--train-images", type=int, default=2000, help="training images, one question per family each")
    parser.add_argument("--test-images", type=int, default=300, help="test images, one question per family each")
    parser.add_argument("--no-fusion", action="store_true", help="feed the encoder tokens straight to the head")
    parser.add_argument("--logit-scale", type=float, default=None, help="the guided pool's logit scale (None keeps the model's, 8)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the model and the batch order")
    parser.add_argument("--data-dir", default=None, help="None: runs/probe/sort_of_clevr_<size>px")
    parser.add_argument("--out", default=None, help="write the evaluations here as JSON")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, for example optim.lr=1e-3 model.image.img_size=64")
    return parser


def main(argv=None) -> int:
    # Intermixed parsing accepts overrides both before and after the options.
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        # The ablation schema gives ablation.backend_options; its checks on the run budget do not
        # apply, because the probe counts its own steps.
        cfg = load_config(args.config, args.overrides, schema=AblationConfig)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # The backend gets the same options as in the ablation runs, unless the preset sets its own.
    options = cfg.ablation.backend_options.get(cfg.model.fusion.attention)
    if options and not cfg.model.fusion.attention_options:
        cfg.model.fusion.attention_options = dict(options)

    size = cfg.model.image.img_size
    settings = ProbeSettings(
        data_dir=args.data_dir or f"runs/probe/sort_of_clevr_{size}px",
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
