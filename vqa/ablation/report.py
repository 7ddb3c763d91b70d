"""Tables and plots of an ablation: results.md, results.csv, results.json and PNG plots.

Accuracy is aggregated over seeds as mean and sample standard deviation. Speed ratios come
from the side-by-side phase, where all variants were timed in the same rounds.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import statistics
from datetime import date
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from vqa.data.sort_of_clevr import QUESTION_FAMILIES

__all__ = ["RUN_COLUMNS", "summarize_runs", "write_report", "format_markdown"]

RELATIONAL, NON_RELATIONAL = "relational", "non-relational"
# Columns of results.csv, one row per run; acc_<family> columns follow for every question family seen.
RUN_COLUMNS = [
    "name", "variant", "backend", "image_size", "image_tokens", "seed", "status", "error", "steps",
    "accuracy", "accuracy_relational", "accuracy_non_relational",
    "train_samples_per_s", "train_seconds", "peak_memory_mb", "memory_growth_mb", "memory_kind", "child_max_rss_mb",
    "params_total", "params_trainable", "params_fusion", "fusion_flops_per_sample", "text_tokens",
    "sbs_train_step_ms", "sbs_train_samples_per_s", "sbs_fusion_train_ms", "sbs_infer_ms",
    "attention_options", "wall_seconds",
]
SPEED_KEYS = ("train_step_ms", "train_samples_per_s", "fusion_train_ms", "infer_ms")


def _mean_sd(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _speed_index(speed: list[dict[str, Any]]) -> dict[tuple[int, str], dict[str, Any]]:
    index = {}
    for phase in speed:
        for record in phase.get("records") or []:
            index[(phase["image_size"], record["name"])] = record
    return index


def _flat_run(run: dict[str, Any], speed_index: dict) -> dict[str, Any]:
    """Flatten a run into one results.csv row, with the side-by-side numbers of its variant and size."""
    groups = run.get("per_group") or {}
    row = {key: run.get(key) for key in RUN_COLUMNS}
    row["accuracy_relational"] = groups.get(RELATIONAL)
    row["accuracy_non_relational"] = groups.get(NON_RELATIONAL)
    row["attention_options"] = json.dumps(run.get("attention_options") or {}, sort_keys=True)
    measured = speed_index.get((run["image_size"], run["variant"])) or {}
    for key in SPEED_KEYS:
        row[f"sbs_{key}"] = measured.get(key)
    for family, value in (run.get("per_family") or {}).items():
        row[f"acc_{family}"] = value
    return row


def summarize_runs(runs: list[dict[str, Any]], speed: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
    """Aggregate the runs per (image size, variant) and join the side-by-side speed and the ratios.

    Returns:
        One dict per (image size, variant), sizes ascending, variants in ``variants`` order, with
        ``<metric>_mean`` / ``<metric>_sd`` for the accuracies, the other costs, the speed-phase
        medians and ``full_over_<key>`` ratios (full attention's time over this variant's).
    """
    speed_index = _speed_index(speed)
    tokens_by_size = {run["image_size"]: run["image_tokens"] for run in runs if run.get("image_tokens")}
    summary = []
    for size in sorted({run["image_size"] for run in runs} | {phase["image_size"] for phase in speed}):
        for variant in variants:
            group = [run for run in runs if run["image_size"] == size and run["variant"] == variant]
            measured = speed_index.get((size, variant))
            if not group and not measured:
                continue
            ok = [run for run in group if run.get("status") == "ok"]
            row: dict[str, Any] = {
                "image_size": size,
                "variant": variant,
                "image_tokens": tokens_by_size.get(size),
                "runs": len(group),
                "runs_ok": len(ok),
                "seeds": [run["seed"] for run in ok],
                "errors": [f"{run['name']}: {run.get('error')}" for run in group if run.get("status") != "ok"],
            }
            metrics = {
                "accuracy": [run.get("accuracy") for run in ok],
                "relational": [(run.get("per_group") or {}).get(RELATIONAL) for run in ok],
                "non_relational": [(run.get("per_group") or {}).get(NON_RELATIONAL) for run in ok],
                "train_samples_per_s": [run.get("train_samples_per_s") for run in ok],
                "train_seconds": [run.get("train_seconds") for run in ok],
            }
            families = sorted({f for run in ok for f in (run.get("per_family") or {})}, key=_family_order)
            for family in families:
                metrics[f"acc_{family}"] = [(run.get("per_family") or {}).get(family) for run in ok]
            for key, values in metrics.items():
                row[f"{key}_mean"], row[f"{key}_sd"] = _mean_sd(values)
            row["families"] = families
            row["peak_memory_mb"] = max((run.get("peak_memory_mb") or 0 for run in ok), default=None) or None
            row["memory_growth_mb"] = max((run.get("memory_growth_mb") or 0 for run in ok), default=None) or None
            for key in ("params_total", "params_fusion", "fusion_flops_per_sample", "steps", "text_tokens"):
                row[key] = next((run.get(key) for run in ok if run.get(key) is not None), None)
            row["curves"] = {run["seed"]: run.get("curve") or [] for run in ok}
            for key in SPEED_KEYS:
                row[f"sbs_{key}"] = (measured or {}).get(key)
            row["sbs_peak_memory_mb"] = (measured or {}).get("peak_memory_mb")
            row["sbs_error"] = (measured or {}).get("error")
            summary.append(row)

    for row in summary:
        full = next((r for r in summary if r["image_size"] == row["image_size"] and r["variant"] == "full"), None)
        for key in ("train_step_ms", "fusion_train_ms", "infer_ms"):
            ours, theirs = row.get(f"sbs_{key}"), (full or {}).get(f"sbs_{key}")
            row[f"full_over_{key}"] = theirs / ours if ours and theirs else None
    return summary


def _family_order(family: str) -> tuple[int, str]:
    return (QUESTION_FAMILIES.index(family), family) if family in QUESTION_FAMILIES else (len(QUESTION_FAMILIES), family)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_mean_sd(row: dict[str, Any], key: str) -> str:
    mean, sd = row.get(f"{key}_mean"), row.get(f"{key}_sd")
    if mean is None:
        return "-"
    return f"{mean:.1f} ± {sd:.1f}" if sd is not None else f"{mean:.1f}"


def _fmt_count(value: Optional[float], unit: float, digits: int = 2) -> str:
    return "-" if value is None else f"{value / unit:.{digits}f}"


def _machine() -> str:
    return f"{platform.machine()} CPU with {os.cpu_count()} cores, " + (
        f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    ) + f", torch {torch.__version__}, Python {platform.python_version()}"


def format_markdown(summary: list[dict[str, Any]], runs: list[dict[str, Any]], speed: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Render results.md: accuracy and cost per variant, side-by-side speed, per-family accuracy, runs."""
    lines = [
        "# Ablation results",
        "",
        f"- Config: `{meta['config']}`; output: `{meta['output_dir']}`; the merged config is in "
        "`ablation_config.yaml` there",
        "- Overrides: " + (" ".join(f"`{item}`" for item in meta.get("overrides", [])) or "none"),
        f"- Machine: {meta['machine']}; date {meta['date']}; wall time {meta['wall_seconds'] / 60:.1f} min",
        f"- Budget: {meta['max_steps']} optimizer steps per run, batch {meta['batch_size']} images "
        f"(all of their questions); accuracy on the `{meta['eval_split']}` split of the best checkpoint by "
        f"validation accuracy; mean ± sample sd over seeds where more than one seed ran.",
        "",
        "## Accuracy and cost",
        "",
        "Train q/s is questions per second during training (median of the logged windows), so it varies "
        "with the machine's load. Peak MB is the run's peak RSS on CPU (the whole process, libraries "
        "included) or the peak allocated CUDA memory; growth is that peak minus the process's RSS before "
        "the model was built (CPU only). FLOPs are one forward pass of the fusion stack for one question "
        "(matrix products only).",
        "",
        "| size | image tokens | variant | seeds ok | accuracy % | relational % | non-relational % | train q/s | "
        "peak MB | growth MB | fusion params (k) | fusion MFLOP/question |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        if not row["runs"]:
            continue
        lines.append(
            f"| {row['image_size']} | {_fmt(row['image_tokens'])} | {row['variant']} | {row['runs_ok']}/{row['runs']} | "
            f"{_fmt_mean_sd(row, 'accuracy')} | {_fmt_mean_sd(row, 'relational')} | {_fmt_mean_sd(row, 'non_relational')} | "
            f"{_fmt(row.get('train_samples_per_s_mean'))} | {_fmt(row.get('peak_memory_mb'), 0)} | "
            f"{_fmt(row.get('memory_growth_mb'), 0)} | "
            f"{_fmt_count(row.get('params_fusion'), 1e3, 1)} | {_fmt_count(row.get('fusion_flops_per_sample'), 1e6, 1)} |"
        )

    lines += [
        "",
        "## Side-by-side speed",
        "",
        "Every variant built fresh and timed in interleaved rounds in one process on one fixed batch; medians. "
        "Train step: forward, backward and AdamW step of the whole model. Fusion: forward and backward of the "
        "fusion stack alone on fixed encoder outputs. Inference: one forward pass of the batch. "
        "full/x is full attention's time over this variant's (above 1: this variant is faster).",
        "",
    ]
    if not speed:
        lines.append("Not run (`ablation.speed: false`).")
    else:
        for phase in speed:
            if phase.get("status") != "ok":
                lines.append(f"- {phase['image_size']}px: speed phase failed: {phase.get('error')}")
            else:
                first = next((r for r in phase["records"] if r.get("batch_questions")), {})
                lines.append(
                    f"- {phase['image_size']}px: {phase['device']}, {phase['precision']}, {phase['threads']} threads, "
                    f"batch of {first.get('batch_questions', '-')} questions, {first.get('rounds', '-')} timed rounds"
                )
        lines += [
            "",
            "| size | variant | train step ms | train q/s | fusion fwd+bwd ms | inference ms/batch | full/x train | "
            "full/x fusion | full/x inference | error |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for row in summary:
        if row.get("sbs_train_step_ms") is None and not row.get("sbs_error"):
            continue
        lines.append(
            f"| {row['image_size']} | {row['variant']} | {_fmt(row['sbs_train_step_ms'], 0)} | "
            f"{_fmt(row['sbs_train_samples_per_s'])} | {_fmt(row['sbs_fusion_train_ms'], 0)} | {_fmt(row['sbs_infer_ms'], 0)} | "
            f"{_fmt(row['full_over_train_step_ms'], 2)} | {_fmt(row['full_over_fusion_train_ms'], 2)} | "
            f"{_fmt(row['full_over_infer_ms'], 2)} | {row.get('sbs_error') or ''} |"
        )

    families = sorted({f for row in summary for f in row.get("families", [])}, key=_family_order)
    if families:
        lines += ["", "## Accuracy per question family (%)", "", "| size | variant | " + " | ".join(families) + " |",
                  "|---|---|" + "---|" * len(families)]
        for row in summary:
            if row["runs_ok"]:
                lines.append(f"| {row['image_size']} | {row['variant']} | " + " | ".join(
                    _fmt_mean_sd(row, f"acc_{family}") for family in families) + " |")

    lines += ["", "## Runs", "", "| run | status | steps | accuracy % | relational % | non-relational % | train s | "
              "peak MB | wall s | error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        groups = run.get("per_group") or {}
        error = (run.get("error") or "").replace("|", "/").replace("\n", " ")
        lines.append(
            f"| {run['name']} | {run.get('status')} | {_fmt(run.get('steps'))} | {_fmt(run.get('accuracy'), 2)} | "
            f"{_fmt(groups.get(RELATIONAL), 2)} | {_fmt(groups.get(NON_RELATIONAL), 2)} | {_fmt(run.get('train_seconds'), 0)} | "
            f"{_fmt(run.get('peak_memory_mb'), 0)} | {_fmt(run.get('wall_seconds'), 0)} | {error[:300]} |"
        )
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, runs: list[dict[str, Any]], speed: list[dict[str, Any]]) -> None:
    speed_index = _speed_index(speed)
    rows = [_flat_run(run, speed_index) for run in runs]
    families = sorted({key for row in rows for key in row if key.startswith("acc_")},
                      key=lambda key: _family_order(key[len("acc_"):]))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RUN_COLUMNS + families, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})


def _write_plots(summary: list[dict[str, Any]], out: Path) -> list[str]:
    """Write accuracy_curves.png and cost_vs_tokens.png; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    sizes = sorted({row["image_size"] for row in summary})
    variants = list(dict.fromkeys(row["variant"] for row in summary))
    colors = {variant: f"C{i % 10}" for i, variant in enumerate(variants)}

    figure, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4), squeeze=False)
    for axis, size in zip(axes[0], sizes):
        for row in (r for r in summary if r["image_size"] == size):
            for index, (seed, curve) in enumerate(sorted(row["curves"].items())):
                if curve:
                    axis.plot([p["step"] for p in curve], [p["accuracy"] for p in curve], marker="o", color=colors[row["variant"]],
                              alpha=0.9 if index == 0 else 0.5, label=row["variant"] if index == 0 else None)
        tokens = next((r["image_tokens"] for r in summary if r["image_size"] == size and r["image_tokens"]), None)
        axis.set_title(f"{size}px ({tokens} image tokens)")
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("validation accuracy (%)")
        axis.grid(True, alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.tight_layout()
    path = out / "accuracy_curves.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(str(path))

    panels = [
        ("sbs_train_step_ms", "train step (ms, median)"),
        ("sbs_infer_ms", "inference per batch (ms, median)"),
        ("memory_growth_mb", "peak memory growth in training (MB)"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    for axis, (key, label) in zip(axes, panels):
        for variant in variants:
            points = sorted((r["image_tokens"], r[key]) for r in summary
                            if r["variant"] == variant and r.get(key) is not None and r.get("image_tokens"))
            if points:
                axis.plot(*zip(*points), marker="o", color=colors[variant], label=variant)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("image tokens")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.tight_layout()
    path = out / "cost_vs_tokens.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(str(path))
    return written


def write_report(
    cfg: Any,
    runs: list[dict[str, Any]],
    speed: list[dict[str, Any]],
    out: Path,
    wall_seconds: float,
    config_path: str = "",
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Write results.md, results.csv, results.json and the plots into ``out``.

    Args:
        cfg: The ``AblationConfig``.
        runs: One dict per run: the ``RunSpec`` fields merged with the child's result.
        speed: One dict per image size: ``image_size`` merged with the speed child's result.
        out: The ablation's output folder.
        wall_seconds: Wall time of the whole ablation so far.
        config_path: The preset the ablation was loaded from, for the header.
        overrides: The ``key=value`` overrides given on top of the preset, for the header.

    Returns:
        The dict written to results.json: ``meta``, ``summary``, ``runs`` and ``speed``.
    """
    from vqa.ablation.spec import variant_names

    out.mkdir(parents=True, exist_ok=True)
    summary = summarize_runs(runs, speed, variant_names(cfg))
    meta = {
        "config": config_path or cfg.ablation.output_dir + "/ablation_config.yaml",
        "overrides": list(overrides),
        "output_dir": str(out),
        "machine": _machine(),
        "date": date.today().isoformat(),
        "wall_seconds": wall_seconds,
        "max_steps": cfg.train.max_steps,
        "batch_size": cfg.data.batch_size,
        "eval_split": cfg.ablation.eval_split,
    }
    report = {"meta": meta, "summary": summary, "runs": runs, "speed": speed}
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    _write_csv(out / "results.csv", runs, speed)
    meta["plots"] = _write_plots(summary, out)
    (out / "results.md").write_text(format_markdown(summary, runs, speed, meta))
    return report
