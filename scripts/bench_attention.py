"""Benchmark forward plus backward time and memory of the attention backends against sequence length.

Example (CPU, fp32):
    python scripts/bench_attention.py --json runs/bench_attention.json --plot runs/bench_attention.png

Prints a table with the full/DBA time ratio, DBA's achieved GFLOP/s against a large matmul timed in
the same run, and a check of the scaling targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from vqa.attention.benchmark import BACKENDS, BenchConfig, Measurement, measure_matmul_rate, run_benchmark
from vqa.attention.report import format_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=defaults.lengths,
                        help="sequence lengths N to run (default: %(default)s)")
    parser.add_argument("--batch-tokens", type=int, default=defaults.batch_tokens,
                        help="batch * N of the fixed-token series (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=defaults.dim, help="model width D (default: %(default)s)")
    parser.add_argument("--heads", type=int, default=defaults.heads, help="number of heads H (default: %(default)s)")
    parser.add_argument("--latents", type=int, default=defaults.latents,
                        help="DBA latent slots L, also Linformer's projected length k (default: %(default)s)")
    parser.add_argument("--reduced-dim", type=int, default=defaults.reduced_dim,
                        help="DBA reduced width r (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=defaults.repeats,
                        help="timed repeats per measurement, median reported (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup,
                        help="untimed warm-up runs per measurement (default: %(default)s)")
    parser.add_argument("--max-full-length", type=int, default=defaults.max_full_length,
                        help="longest N at which full attention runs; it is quadratic (default: %(default)s)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS),
                        help="backends to run (default: all)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu runs fp32, cuda runs bf16 autocast (default: %(default)s)")
    parser.add_argument("--matmul-size", type=int, default=defaults.matmul_size,
                        help="size of the square reference matmul timed in every round (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="write the measurement records to this JSON file")
    parser.add_argument("--plot", type=Path, default=None, help="write a time-vs-length plot to this PNG file")
    return parser.parse_args(argv)


def write_plot(results: list[Measurement], batch_tokens: int, path: Path) -> None:
    """Write log-log time against length, one panel per series, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    series = [
        ("batch 1", lambda m: m.batch == 1),
        (f"batch * N = {batch_tokens}", lambda m: m.batch * m.length == batch_tokens),
    ]
    for axis, (title, keep) in zip(axes, series):
        for backend in BACKENDS:
            points = sorted((m.length, m.ms_median) for m in results if m.backend == backend and keep(m))
            if points:
                lengths, times = zip(*points)
                axis.plot(lengths, times, marker="o", label=backend)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("sequence length N")
        axis.set_ylabel("forward + backward (ms, median)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda was requested but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = BenchConfig(
        lengths=sorted(args.lengths),
        batch_tokens=args.batch_tokens,
        dim=args.dim,
        heads=args.heads,
        latents=args.latents,
        reduced_dim=args.reduced_dim,
        repeats=args.repeats,
        warmup=args.warmup,
        max_full_length=args.max_full_length,
        device=args.device,
        backends=tuple(args.backends),
        matmul_size=args.matmul_size,
    )
    print(
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
        f"device {args.device}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    print(f"matmul 4096^3 before the run: {measure_matmul_rate(args.device):.1f} GFLOP/s (median of 5)")
    results = run_benchmark(config)
    print(f"matmul 4096^3 after the run: {measure_matmul_rate(args.device):.1f} GFLOP/s (median of 5)")
    print()
    print(format_report(results, config))

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([m.record() for m in results], indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot is not None:
        write_plot(results, config.batch_tokens, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
