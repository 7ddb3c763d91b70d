#!/usr/bin/env python
"""Train the same VQA model with each attention backend and compare accuracy, speed and memory.

Usage: scripts/ablate.py --config models/ablation_sort_of_clevr.yaml [key=value ...]
Writes results.md, results.csv, results.json and PNG plots into ablation.output_dir.
Exits with 1 when any run failed (the tables still list it with its error), 2 on a bad config.
"""

import argparse
import logging
import sys

from vqa.ablation import load_ablation_config, run_ablation


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="ablation preset, for example models/ablation_sort_of_clevr.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, for example ablation.seeds=[0,1] train.max_steps=100")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        cfg = load_ablation_config(args.config, args.overrides)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = run_ablation(cfg, config_path=args.config, overrides=args.overrides)
    failed = [run["name"] for run in report["runs"] if run.get("status") != "ok"]
    print(f"{len(report['runs']) - len(failed)} of {len(report['runs'])} runs finished; results in {cfg.ablation.output_dir}/results.md")
    if failed:
        # The tables are written either way; the status lets a script or CI job notice the failures.
        print("failed runs: " + ", ".join(failed) + "; their errors are in the tables", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
