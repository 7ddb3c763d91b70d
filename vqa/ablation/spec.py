"""Expansion of an ablation config into one run spec per (variant, image size, seed)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vqa.ablation.config import AblationConfig
from vqa.config import RunConfig

__all__ = [
    "RunSpec",
    "dataset_root",
    "expand_specs",
    "run_config_for",
    "run_config_from_dict",
    "run_config_to_dict",
    "variant_names",
    "variant_options",
]


@dataclass
class RunSpec:
    """One training run of an ablation.

    Attributes:
        name: Unique run name, also the folder under ``<output_dir>/runs``.
        variant: Row label in the tables: the backend name, or a DBA variant's name.
        backend: Attention backend, ``dba``, ``full`` or ``linformer``.
        image_size: Image side in pixels.
        seed: ``train.seed`` of the run.
        attention_options: Options passed to ``vqa.attention.build_attention``.
    """

    name: str
    variant: str
    backend: str
    image_size: int
    seed: int
    attention_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def variant_options(cfg: AblationConfig, variant: str) -> tuple[str, dict[str, Any]]:
    """Return (backend, attention options) of a variant name: a backend or a DBA variant."""
    section = cfg.ablation
    if variant in section.backends:
        return variant, dict(section.backend_options.get(variant, {}))
    for dba_variant in section.dba_variants:
        if dba_variant.name == variant:
            return "dba", {**section.backend_options.get("dba", {}), **dba_variant.options}
    raise ValueError(f"unknown variant {variant!r}; valid: {variant_names(cfg)}")


def variant_names(cfg: AblationConfig) -> list[str]:
    """Return the backends, then the DBA variants, in config order."""
    return list(cfg.ablation.backends) + [variant.name for variant in cfg.ablation.dba_variants]


def expand_specs(cfg: AblationConfig) -> list[RunSpec]:
    """List the runs of an ablation: every backend at every size and seed, then the DBA variants.

    The DBA variants run only at ``ablation.variant_image_sizes`` and ``ablation.variant_seeds``
    when those are set. Runs are ordered by image size, then seed, then variant, so that a
    partial ablation contains complete comparisons at the smaller sizes.
    """
    section = cfg.ablation
    specs = []
    for size in section.image_sizes:
        for seed in section.seeds:
            names = list(section.backends)
            size_ok = not section.variant_image_sizes or size in section.variant_image_sizes
            seed_ok = not section.variant_seeds or seed in section.variant_seeds
            if size_ok and seed_ok:
                names += [variant.name for variant in section.dba_variants]
            for name in names:
                backend, options = variant_options(cfg, name)
                specs.append(
                    RunSpec(
                        name=f"{name}_{size}px_seed{seed}",
                        variant=name,
                        backend=backend,
                        image_size=size,
                        seed=seed,
                        attention_options=options,
                    )
                )
    return specs


def dataset_root(cfg: AblationConfig, image_size: int) -> str:
    """Return the data folder of runs at ``image_size``: a generated Sort-of-CLEVR copy, or ``data.root``."""
    if cfg.data.dataset == "sort_of_clevr" and cfg.ablation.sort_of_clevr.generate:
        return str(Path(cfg.ablation.output_dir) / "data" / f"sort_of_clevr_{image_size}px")
    return cfg.data.root


def run_config_for(cfg: AblationConfig, backend: str, options: dict[str, Any], image_size: int, seed: int, output_dir: str) -> RunConfig:
    """Build the run config of one run: the shared base with the backend, size, seed and folder set."""
    run = RunConfig(
        model=copy.deepcopy(cfg.model),
        data=copy.deepcopy(cfg.data),
        optim=copy.deepcopy(cfg.optim),
        train=copy.deepcopy(cfg.train),
    )
    run.model.image.img_size = image_size
    run.model.fusion.attention = backend
    run.model.fusion.attention_options = dict(options)
    run.data.root = dataset_root(cfg, image_size)
    run.train.seed = seed
    run.train.output_dir = output_dir
    return run


def run_config_to_dict(run: RunConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(run))


def run_config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Rebuild a ``RunConfig`` from ``run_config_to_dict`` output, checking keys and types."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), values))
