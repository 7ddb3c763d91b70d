"""Typed configuration of an ablation: a run config plus an ``ablation:`` section.

The run config (``model``, ``data``, ``optim``, ``train``) is the base that every run shares.
The ``ablation`` section lists what varies between runs: the attention backend, the image size,
the seed and DBA's own options. ``load_ablation_config`` merges a YAML preset and ``key=value``
overrides onto these dataclasses with OmegaConf, so a misspelled key fails at load time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence


from vqa.attention import ATTENTION_KINDS
from vqa.config import RunConfig, load_config

__all__ = ["DBAVariant", "SortOfClevrData", "AblationSection", "AblationConfig", "load_ablation_config"]


@dataclass
class DBAVariant:
    """One of DBA's own ablations: a name for the table and the DBA options it changes.

    Example: ``{name: dba_static, options: {static_packing: true}}``. The options are applied on
    top of ``ablation.backend_options.dba``.
    """

    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SortOfClevrData:
    """Sort-of-CLEVR written by ``vqa.data.sort_of_clevr.generate`` once per image size.

    The same seed gives the same scenes, questions and answers at every size, so runs at
    different sizes differ only in resolution.
    """

    generate: bool = True
    train_images: int = 400
    val_images: int = 100
    test_images: int = 300
    questions_per_image: int = 6
    object_size: float = 10 / 75
    seed: int = 0


@dataclass
class AblationSection:
    """What varies between the runs of an ablation, and how speed is measured."""

    backends: list[str] = field(default_factory=lambda: ["dba", "full", "linformer"])
    # Options per backend; model.fusion.attention_options must stay empty.
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    image_sizes: list[int] = field(default_factory=lambda: [128, 256])
    seeds: list[int] = field(default_factory=lambda: [0])
    dba_variants: list[DBAVariant] = field(default_factory=list)
    # Run the DBA variants only at these image sizes and seeds (empty: all of them).
    variant_image_sizes: list[int] = field(default_factory=list)
    variant_seeds: list[int] = field(default_factory=list)
    sort_of_clevr: SortOfClevrData = field(default_factory=SortOfClevrData)
    # Split scored for the final accuracy; the best checkpoint is picked on data.val_split.
    eval_split: str = "test"
    output_dir: str = "runs/ablation/default"
    # A run still going after this many minutes is stopped and recorded as timed out.
    run_timeout_min: float = 30.0
    # Side-by-side speed phase: rounds of (every variant once), medians over the timed rounds.
    speed: bool = True
    speed_rounds: int = 5
    speed_warmup_rounds: int = 1
    # Images in the fixed speed batch (0: data.batch_size); each brings all of its questions.
    speed_batch_images: int = 0
    # Set in every child process; PASSIVE stops idle OpenMP threads from spinning on busy cores.
    omp_wait_policy: str = "PASSIVE"
    # torch CPU threads in every child process (0: torch's default).
    threads: int = 0
    # Delete each run's last.pt after it finishes (the best model is kept for evaluation).
    keep_last_checkpoint: bool = False


@dataclass
class AblationConfig(RunConfig):
    """A run config that every ablation run starts from, plus the ``ablation`` section."""

    ablation: AblationSection = field(default_factory=AblationSection)


def load_ablation_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> AblationConfig:
    """Merge a YAML preset and ``key=value`` overrides onto the ``AblationConfig`` defaults, and check it.

    Args:
        path: YAML preset such as ``models/ablation_sort_of_clevr.yaml``; None uses the defaults.
        overrides: Dotted assignments such as ``ablation.seeds=[0,1]`` or ``train.max_steps=100``.

    Raises:
        FileNotFoundError: The preset does not exist.
        ValueError: An unknown key, a value of the wrong type, a malformed override, or an
            inconsistent ablation (see ``check_ablation_config``).
    """
    cfg = load_config(path, overrides, schema=AblationConfig)
    check_ablation_config(cfg)
    return cfg


def check_ablation_config(cfg: AblationConfig) -> None:
    """Raise ValueError when the ablation cannot give comparable runs.

    Every run must have the same budget in optimizer steps (``train.max_steps`` > 0, no time
    limit), at least one backend and size, and variant names that are unique.
    """
    section = cfg.ablation
    if cfg.train.max_steps <= 0:
        raise ValueError(
            f"train.max_steps={cfg.train.max_steps}: an ablation budgets every run by optimizer steps, "
            "so that all backends see the same samples; set train.max_steps > 0"
        )
    if cfg.train.time_limit_min != 0:
        raise ValueError(
            f"train.time_limit_min={cfg.train.time_limit_min}: a time limit gives faster backends more steps; "
            "set it to 0 and budget with train.max_steps"
        )
    if cfg.model.fusion.attention_options:
        raise ValueError(
            f"model.fusion.attention_options={cfg.model.fusion.attention_options} is not used by an ablation; "
            "set the options per backend under ablation.backend_options.<backend>"
        )
    if not section.backends:
        raise ValueError("ablation.backends is empty; list at least one of " + ", ".join(sorted(ATTENTION_KINDS)))
    unknown = sorted(set(section.backends) - set(ATTENTION_KINDS))
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown} in ablation.backends; valid: {sorted(ATTENTION_KINDS)}")
    unknown = sorted(set(section.backend_options) - set(ATTENTION_KINDS))
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown} in ablation.backend_options; valid: {sorted(ATTENTION_KINDS)}")
    if not section.image_sizes or min(section.image_sizes) < 8:
        raise ValueError(f"ablation.image_sizes={section.image_sizes} must list image sides of at least 8 pixels")
    if not section.seeds:
        raise ValueError("ablation.seeds is empty; list at least one seed, for example [0]")
    names = [variant.name for variant in section.dba_variants]
    for name in names:
        if not name or name in ATTENTION_KINDS or names.count(name) > 1:
            raise ValueError(
                f"DBA variant name {name!r} is empty, repeated or a backend name; give each variant "
                "a unique name such as dba_static"
            )
    if section.dba_variants and "dba" not in section.backends:
        raise ValueError("ablation.dba_variants needs 'dba' in ablation.backends, the baseline they are compared to")
    if section.speed_rounds < 1 or section.speed_warmup_rounds < 0:
        raise ValueError(
            f"ablation.speed_rounds={section.speed_rounds} must be >= 1 and "
            f"ablation.speed_warmup_rounds={section.speed_warmup_rounds} >= 0"
        )
    if section.run_timeout_min <= 0:
        raise ValueError(f"ablation.run_timeout_min={section.run_timeout_min} must be > 0")
