"""Ablation harness: train the same VQA model with each attention backend and compare accuracy and cost.

See docs/ablation.md. Entry point: ``scripts/ablate.py --config models/ablation_sort_of_clevr.yaml``.
"""

from vqa.ablation.config import AblationConfig, AblationSection, DBAVariant, SortOfClevrData, load_ablation_config
from vqa.ablation.measure import count_parameters, fusion_flops_per_sample, time_side_by_side
from vqa.ablation.report import RUN_COLUMNS, summarize_runs, write_report
from vqa.ablation.runner import run_ablation
from vqa.ablation.spec import RunSpec, expand_specs

__all__ = [
    "AblationConfig",
    "AblationSection",
    "DBAVariant",
    "RUN_COLUMNS",
    "RunSpec",
    "SortOfClevrData",
    "count_parameters",
    "expand_specs",
    "fusion_flops_per_sample",
    "load_ablation_config",
    "run_ablation",
    "summarize_runs",
    "time_side_by_side",
    "write_report",
]
