"""Text table and target checks for the attention benchmark."""

from __future__ import annotations

from vqa.attention.benchmark import BenchConfig, Measurement

# Scaling targets on CPU, fp32, forward plus backward.
MIN_SPEEDUP_BATCH1 = {4096: 5.0, 8192: 10.0}
MIN_SPEEDUP_FIXED_TOKENS = 1.0
MIN_MATMUL_FRACTION = 0.6
MATMUL_FRACTION_LENGTH = 8192


def format_report(results: list[Measurement], config: BenchConfig) -> str:
    """Return the results table followed by the target checks, as text.

    Args:
        results: Measurements from `run_benchmark`.
        config: The benchmark settings.
    """
    by_point: dict[tuple[int, int], dict[str, Measurement]] = {}
    for m in results:
        by_point.setdefault((m.batch, m.length), {})[m.backend] = m
    metric = results[0].memory_metric if results else "n/a"

    header = (
        f"{'batch':>5} {'N':>6} | {'dba ms':>9} {'full ms':>9} {'linf ms':>9} | {'full/dba':>8} | "
        f"{'dba GFLOP/s':>11} {'of matmul':>9} | {'dba MB':>8} {'full MB':>8} {'linf MB':>8}"
    )
    lines = [
        f"D={config.dim} H={config.heads} L={config.latents} r={config.reduced_dim}, "
        f"median of {config.repeats} after {config.warmup} warm-up, "
        f"memory = {metric}",
        f"'of matmul' = DBA GFLOP/s over a {config.matmul_size}^3 matmul timed in the same rounds",
    ]
    series = [
        ("batch 1", lambda batch, length: batch == 1),
        (f"batch * N = {config.batch_tokens}", lambda batch, length: batch * length == config.batch_tokens),
    ]
    for title, keep in series:
        points = sorted((point for point in by_point if keep(*point)), key=lambda point: point[1])
        if not points:
            continue
        lines.extend(["", title, header, "-" * len(header)])
        lines.extend(_row(batch, length, by_point[(batch, length)]) for batch, length in points)
    lines.append("")
    lines.extend(check_targets(results, config))
    return "\n".join(lines)


def _row(batch: int, length: int, row: dict[str, Measurement]) -> str:
    def ms(kind: str) -> str:
        return f"{row[kind].ms_median:9.1f}" if kind in row else f"{'-':>9}"

    def mb(kind: str) -> str:
        return f"{row[kind].peak_mem_mb:8.1f}" if kind in row else f"{'-':>8}"

    ratio = f"{row['full'].ms_median / row['dba'].ms_median:8.2f}" if {"full", "dba"} <= row.keys() else f"{'-':>8}"
    if "dba" in row:
        efficiency = f"{row['dba'].gflops:11.1f} {100 * row['dba'].matmul_fraction:8.0f}%"
    else:
        efficiency = f"{'-':>11} {'-':>9}"
    return (
        f"{batch:>5} {length:>6} | {ms('dba')} {ms('full')} {ms('linformer')} | {ratio} | "
        f"{efficiency} | {mb('dba')} {mb('full')} {mb('linformer')}"
    )


def check_targets(results: list[Measurement], config: BenchConfig) -> list[str]:
    """Return one line per scaling target: PASS, FAIL or not measured, with the measured value."""
    times = {(m.backend, m.batch, m.length): m for m in results}

    def speedup(batch: int, length: int) -> float | None:
        full, dba = times.get(("full", batch, length)), times.get(("dba", batch, length))
        return None if full is None or dba is None else full.ms_median / dba.ms_median

    lines = ["targets (CPU fp32 forward + backward):"]
    for length, minimum in MIN_SPEEDUP_BATCH1.items():
        lines.append(_verdict(f"batch 1, N={length}: full/dba >= {minimum:g}", speedup(1, length), minimum, "x"))

    fixed = [
        (length, speedup(batch, length))
        for (backend, batch, length) in times
        if backend == "dba" and batch * length == config.batch_tokens and length >= 256
    ]
    measured = [(length, value) for length, value in sorted(fixed) if value is not None]
    worst = min(measured, key=lambda item: item[1]) if measured else None
    label = f"batch * N = {config.batch_tokens}, every N >= 256: full/dba >= {MIN_SPEEDUP_FIXED_TOKENS:g}"
    if worst is not None:
        label += f" (lowest at N={worst[0]})"
    lines.append(_verdict(label, None if worst is None else worst[1], MIN_SPEEDUP_FIXED_TOKENS, "x"))

    dba = times.get(("dba", 1, MATMUL_FRACTION_LENGTH))
    fraction = None if dba is None else dba.matmul_fraction
    lines.append(
        _verdict(
            f"batch 1, N={MATMUL_FRACTION_LENGTH}: dba GFLOP/s >= {MIN_MATMUL_FRACTION:.0%} of matmul",
            fraction,
            MIN_MATMUL_FRACTION,
            "",
        )
    )
    return lines


def _verdict(label: str, value: float | None, minimum: float, unit: str) -> str:
    if value is None:
        return f"  not measured  {label}"
    shown = f"{value:.2f}{unit}" if unit else f"{value:.0%}"
    return f"  {'PASS' if value >= minimum else 'FAIL'} ({shown})  {label}"
