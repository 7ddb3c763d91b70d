"""Run an ablation: prepare the data, train each run in its own process, time the variants side by side.

Example::

    cfg = load_ablation_config("models/ablation_sort_of_clevr.yaml")
    results = run_ablation(cfg)   # writes results.md, .csv, .json and plots into cfg.ablation.output_dir
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from omegaconf import OmegaConf

from vqa.ablation.config import AblationConfig
from vqa.ablation.report import write_report
from vqa.ablation.spec import RunSpec, dataset_root, expand_specs, run_config_for, run_config_to_dict, variant_names, variant_options
from vqa.data.sort_of_clevr import generate_once

__all__ = ["run_ablation", "prepare_data", "run_child", "image_tokens"]

logger = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
RESULT_FILE = "result.json"
LOG_FILE = "run.log"
# Lines of a failed child's log copied into its error message when it wrote no result.
LOG_TAIL_LINES = 5


def prepare_data(cfg: AblationConfig, log: Callable[[str], None]) -> None:
    """Write Sort-of-CLEVR at every image size unless an identical copy is already there."""
    data = cfg.ablation.sort_of_clevr
    if cfg.data.dataset != "sort_of_clevr" or not data.generate:
        return
    counts = {"train": data.train_images, "val": data.val_images, "test": data.test_images}
    for size in cfg.ablation.image_sizes:
        root = Path(dataset_root(cfg, size))
        start = time.perf_counter()
        written = generate_once(
            root,
            stamp_name="ablation_data.json",
            image_size=size,
            object_size=data.object_size,
            num_images=counts,
            questions_per_image=data.questions_per_image,
            seed=data.seed,
        )
        if not written:
            log(f"data at {size}px: reusing {root}")
            continue
        log(f"data at {size}px: wrote {root} in {time.perf_counter() - start:.0f}s")


def _child_env(cfg: AblationConfig) -> dict[str, str]:
    env = dict(os.environ)
    if cfg.ablation.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = cfg.ablation.omp_wait_policy
    # The encoders load from installed packages or local files; a hub lookup would stall offline.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _log_tail(path: Path) -> str:
    if not path.is_file():
        return ""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-LOG_TAIL_LINES:])


def run_child(
    flag: str, spec: dict[str, Any], folder: Path, env: dict[str, str], timeout_s: float
) -> dict[str, Any]:
    """Run ``python -m vqa.ablation.run_one FLAG folder/spec.json`` and collect its result.

    The child gets its own process group, so a timeout kills it and any data-loader workers. Its
    peak RSS comes from ``os.wait4``, which reports the resources of that one child, also when it
    was killed (for example by the kernel's out-of-memory killer).

    Returns:
        The child's result.json, or a failed result naming the exit status and the log's last
        lines, with ``returncode``, ``wall_seconds`` and ``child_max_rss_mb`` added.
    """
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = folder / SPEC_FILE, folder / RESULT_FILE, folder / LOG_FILE
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}, indent=2) + "\n")
    command = [sys.executable, "-m", "vqa.ablation.run_one", flag, str(spec_path)]

    start = time.perf_counter()
    timed_out = False
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout_s:
                timed_out = True
                os.killpg(process.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.5)
    returncode = os.waitstatus_to_exitcode(status)
    process.returncode = returncode  # already reaped by wait4

    result: dict[str, Any]
    if result_path.is_file():
        result = json.loads(result_path.read_text())
    elif timed_out:
        result = {"status": "failed", "error": f"timed out after {timeout_s / 60:.1f} min (ablation.run_timeout_min)"}
    else:
        cause = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
        if returncode == -signal.SIGKILL:
            cause += " (often the out-of-memory killer)"
        result = {"status": "failed", "error": f"{cause} without a result; log: {_log_tail(log_path)}"}
    result["returncode"] = returncode
    result["wall_seconds"] = time.perf_counter() - start
    # Linux reports ru_maxrss in KiB.
    result["child_max_rss_mb"] = usage.ru_maxrss / 1024
    result["log"] = str(log_path)
    return result


def image_tokens(cfg: AblationConfig, image_size: int) -> Optional[int]:
    """Return the image tokens per image at ``image_size``, from the encoder built with random weights."""
    from vqa.ablation.spec import run_config_for
    from vqa.encoders import ImageEncoder

    run = run_config_for(cfg, "full", {}, image_size, 0, "")
    try:
        encoder = ImageEncoder(run.model.image, run.model.fusion.dim, load_weights=False)
    except (RuntimeError, ValueError) as error:
        logger.warning("cannot build the image encoder at %dpx to count its tokens: %s", image_size, error)
        return None
    return encoder.num_tokens()


def _train_spec(cfg: AblationConfig, spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    run = run_config_for(cfg, spec.backend, spec.attention_options, spec.image_size, spec.seed, str(run_dir))
    return {
        **spec.to_dict(),
        "config": run_config_to_dict(run),
        "eval_split": cfg.ablation.eval_split,
        "keep_last_checkpoint": cfg.ablation.keep_last_checkpoint,
        "threads": cfg.ablation.threads,
    }


def _speed_spec(cfg: AblationConfig, image_size: int) -> dict[str, Any]:
    configs = {}
    for name in variant_names(cfg):
        backend, options = variant_options(cfg, name)
        run = run_config_for(cfg, backend, options, image_size, cfg.ablation.seeds[0], "")
        configs[name] = run_config_to_dict(run)
    return {
        "image_size": image_size,
        "configs": configs,
        "rounds": cfg.ablation.speed_rounds,
        "warmup_rounds": cfg.ablation.speed_warmup_rounds,
        "batch_images": cfg.ablation.speed_batch_images or cfg.data.batch_size,
        "threads": cfg.ablation.threads,
    }


def run_ablation(
    cfg: AblationConfig,
    log: Optional[Callable[[str], None]] = None,
    config_path: str = "",
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Run every spec of ``cfg`` one at a time, then the speed phase, and write the report.

    A run that fails (an exception, an out-of-memory kill, a timeout) is recorded with its error
    and the others continue.

    Args:
        cfg: The ablation; see ``load_ablation_config``.
        log: Receives progress lines; defaults to this module's logger.
        config_path: The preset ``cfg`` was loaded from, named in results.md.
        overrides: The ``key=value`` overrides applied on top of it, listed in results.md.

    Returns:
        The report dict that ``results.json`` contains: ``runs``, ``speed`` and ``summary``.
    """
    log = log or logger.info
    out = Path(cfg.ablation.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    env = _child_env(cfg)
    timeout_s = cfg.ablation.run_timeout_min * 60
    start = time.perf_counter()

    prepare_data(cfg, log)
    specs = expand_specs(cfg)
    tokens = {size: image_tokens(cfg, size) for size in cfg.ablation.image_sizes}
    log("image tokens per size: " + ", ".join(f"{size}px: {count}" for size, count in tokens.items()))
    runs = []
    for index, spec in enumerate(specs, start=1):
        log(f"[{index}/{len(specs)}] {spec.name}: training ({spec.backend}, options {spec.attention_options})")
        run_dir = out / "runs" / spec.name
        result = run_child("--spec", _train_spec(cfg, spec, run_dir), run_dir, env, timeout_s)
        runs.append({**spec.to_dict(), "image_tokens": tokens[spec.image_size], **result})
        if result["status"] == "ok":
            log(
                f"[{index}/{len(specs)}] {spec.name}: accuracy {result['accuracy']:.2f}% after {result['steps']} steps, "
                f"{result['wall_seconds']:.0f}s"
            )
        else:
            log(f"[{index}/{len(specs)}] {spec.name}: FAILED: {result['error']}")

    speed = []
    if cfg.ablation.speed:
        for size in cfg.ablation.image_sizes:
            log(f"speed phase at {size}px: {', '.join(variant_names(cfg))} in {cfg.ablation.speed_rounds} rounds")
            result = run_child("--speed", _speed_spec(cfg, size), out / "speed" / f"{size}px", env, timeout_s)
            if result["status"] != "ok":
                log(f"speed phase at {size}px: FAILED: {result['error']}")
            speed.append({"image_size": size, **result})

    report = write_report(
        cfg, runs, speed, out, wall_seconds=time.perf_counter() - start, config_path=config_path, overrides=overrides
    )
    log(f"wrote {out / 'results.md'}, results.csv, results.json and plots in {time.perf_counter() - start:.0f}s")
    return report
