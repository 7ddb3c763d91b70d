"""Tests of the ablation harness in vqa.ablation (tiny models, CPU)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from vqa.ablation import expand_specs, fusion_flops_per_sample, load_ablation_config, run_ablation
from vqa.ablation.measure import TimedModel, time_side_by_side
from vqa.ablation.report import RUN_COLUMNS, summarize_runs, write_report
from vqa.config import FusionConfig
from tiny_overrides import TINY_MODEL_OVERRIDES
from vqa.fusion import FusionStack

TINY = TINY_MODEL_OVERRIDES + [
    "data.dataset=sort_of_clevr",
    "data.group_by_image=true",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "data.num_workers=0",
    "optim.lr=3e-3",
    "optim.warmup_steps=0",
    "optim.schedule=constant",
    "train.epochs=10",
    "train.max_steps=4",
    "train.log_every=1",
    "train.device=cpu",
    "ablation.backend_options.dba.num_latents=4",
    "ablation.backend_options.dba.reduced_dim=8",
    "ablation.backend_options.linformer.proj_len=4",
    "ablation.sort_of_clevr.train_images=8",
    "ablation.sort_of_clevr.val_images=4",
    "ablation.sort_of_clevr.test_images=4",
    "ablation.sort_of_clevr.questions_per_image=6",
]


def tiny_config(tmp_path, *overrides):
    return load_ablation_config(None, TINY + [f"ablation.output_dir={tmp_path}", *overrides])


# --- config and spec expansion ------------------------------------------------------------------


def test_spec_expansion_covers_grid(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "ablation.backends=[dba,full,linformer]",
        "ablation.image_sizes=[32,64]",
        "ablation.seeds=[0,1]",
        "ablation.dba_variants=[{name: dba_static, options: {static_packing: true}}, {name: dba_L2, options: {num_latents: 2}}]",
    )
    specs = expand_specs(cfg)
    assert len(specs) == 2 * 2 * (3 + 2)
    assert len({spec.name for spec in specs}) == len(specs)
    names = {spec.name for spec in specs}
    assert "full_64px_seed1" in names
    assert "dba_L2_32px_seed0" in names

    static = next(spec for spec in specs if spec.variant == "dba_static")
    assert static.backend == "dba"
    assert static.attention_options == {"num_latents": 4, "reduced_dim": 8, "static_packing": True}
    fewer = next(spec for spec in specs if spec.variant == "dba_L2")
    assert fewer.attention_options == {"num_latents": 2, "reduced_dim": 8}
    full = next(spec for spec in specs if spec.variant == "full")
    assert full.attention_options == {}
    # Ordered by size first, so a partial ablation contains whole comparisons at the small size.
    assert [spec.image_size for spec in specs] == sorted(spec.image_size for spec in specs)


def test_spec_expansion_limits_variants(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "ablation.backends=[dba,full]",
        "ablation.image_sizes=[32,64]",
        "ablation.seeds=[0,1]",
        "ablation.dba_variants=[{name: dba_static, options: {static_packing: true}}]",
        "ablation.variant_image_sizes=[64]",
        "ablation.variant_seeds=[0]",
    )
    specs = expand_specs(cfg)
    variants = [spec for spec in specs if spec.variant == "dba_static"]
    assert [(spec.image_size, spec.seed) for spec in variants] == [(64, 0)]
    assert len(specs) == 2 * 2 * 2 + 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_steps=0", "train.max_steps"),
        ("train.time_limit_min=5", "time_limit_min"),
        ("model.fusion.attention_options.num_latents=4", "backend_options"),
        ("ablation.backends=[dba,sparse]", "sparse"),
        ("ablation.dba_variants=[{name: full}]", "variant name"),
        ("ablation.seeds=[]", "ablation.seeds"),
    ],
)
def test_config_rejects_uncomparable_runs(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, override)


def test_config_rejects_unknown_key(tmp_path):
    with pytest.raises(ValueError, match="backend_optoins"):
        tiny_config(tmp_path, "ablation.backend_optoins={}")


# --- measurement --------------------------------------------------------------------------------


def fusion_stack(kind: str, image_tokens: int, **options) -> FusionStack:
    torch.manual_seed(0)
    cfg = FusionConfig(attention=kind, dim=32, num_heads=2, depth=1, dropout=0.0, attention_options=options)
    return FusionStack(cfg, max_text_len=8, max_image_tokens=image_tokens)


def test_flops_grow_faster_for_full_attention():
    flops = {}
    for kind, options in (("full", {}), ("dba", {"num_latents": 4, "reduced_dim": 8})):
        for tokens in (64, 256):
            flops[kind, tokens] = fusion_flops_per_sample(fusion_stack(kind, tokens, **options), 8, tokens, 32)
    assert all(value > 0 for value in flops.values())
    full_growth = flops["full", 256] / flops["full", 64]
    dba_growth = flops["dba", 256] / flops["dba", 64]
    assert dba_growth <= 4.2  # linear in tokens, plus the fixed text stream
    assert full_growth > dba_growth + 1.0
    # Full attention's 256 x 256 scores alone: 2 products of 2 * 256 * 256 * 32 FLOPs.
    assert flops["full", 256] > 2 * 2 * 256 * 256 * 32


def test_side_by_side_timing_records_medians_and_errors():
    class Broken(torch.nn.Module):
        def forward(self, **inputs):
            raise RuntimeError("out of memory (injected)")

    from vqa.data import AnswerVocab, QuestionRecord
    from vqa.config import load_config
    from vqa.model import VQAModel

    vocab = AnswerVocab.build([QuestionRecord(i, "x", "q", [a]) for i, a in enumerate(["yes", "no", "circle"])])
    cfg = load_config(None, TINY[:12] + ["model.image.img_size=32", "model.fusion.attention=full"])
    model = VQAModel(cfg.model, vocab)
    tokens = model.text_encoder.tokenize(["is it red?", "what shape?", "is it blue?"])
    batch = {
        "pixel_values": torch.randn(2, 3, 32, 32),
        "input_ids": tokens["input_ids"],
        "attention_mask": tokens["attention_mask"],
        "image_index": torch.tensor([0, 0, 1]),
        "targets": torch.eye(3),
    }
    broken = VQAModel(cfg.model, vocab)
    broken.forward = Broken().forward
    entries = [
        TimedModel("full", model, torch.optim.AdamW(model.parameters(), 1e-3)),
        TimedModel("broken", broken, torch.optim.AdamW(broken.parameters(), 1e-3)),
    ]
    records = time_side_by_side(entries, batch, torch.device("cpu"), "fp32", rounds=3, warmup_rounds=1)
    by_name = {record["name"]: record for record in records}
    assert by_name["full"]["rounds"] == 3
    assert by_name["full"]["error"] is None
    assert by_name["full"]["train_step_ms"] > 0
    assert by_name["full"]["fusion_train_ms"] > 0
    assert by_name["full"]["infer_ms"] > 0
    assert by_name["full"]["train_samples_per_s"] == pytest.approx(3 / (by_name["full"]["train_step_ms"] / 1000))
    assert by_name["broken"]["train_step_ms"] is None
    assert "out of memory (injected)" in by_name["broken"]["error"]


# --- report -------------------------------------------------------------------------------------


def fake_run(variant, size, seed, accuracy, status="ok"):
    backend = "dba" if variant.startswith("dba") else variant
    run = {"name": f"{variant}_{size}px_seed{seed}", "variant": variant, "backend": backend, "image_size": size,
           "seed": seed, "status": status, "image_tokens": (size // 8) ** 2, "attention_options": {}}
    if status != "ok":
        return {**run, "error": "ValueError: injected"}
    return {
        **run, "error": None, "steps": 4, "accuracy": accuracy,
        "per_group": {"relational": accuracy - 10, "non-relational": accuracy + 10},
        "per_family": {"nonrel_shape": accuracy, "rel_count": accuracy - 5},
        "train_samples_per_s": 100.0, "train_seconds": 1.0, "peak_memory_mb": 900.0, "memory_growth_mb": 50.0,
        "params_total": 1000, "params_fusion": 100, "fusion_flops_per_sample": 10**6,
        "curve": [{"step": 2, "accuracy": accuracy - 1}, {"step": 4, "accuracy": accuracy}],
    }


def test_summary_aggregates_seeds_and_ratios(tmp_path):
    runs = [fake_run("dba", 64, 0, 60.0), fake_run("dba", 64, 1, 70.0), fake_run("full", 64, 0, 50.0),
            fake_run("full", 64, 1, 0.0, status="failed")]
    speed = [{"image_size": 64, "status": "ok", "records": [
        {"name": "dba", "train_step_ms": 100.0, "fusion_train_ms": 10.0, "infer_ms": 20.0},
        {"name": "full", "train_step_ms": 250.0, "fusion_train_ms": 40.0, "infer_ms": 30.0},
    ]}]
    summary = summarize_runs(runs, speed, ["dba", "full"])
    dba, full = summary
    assert dba["accuracy_mean"] == pytest.approx(65.0)
    assert dba["accuracy_sd"] == pytest.approx(7.0710678)
    assert dba["relational_mean"] == pytest.approx(55.0)
    assert dba["full_over_train_step_ms"] == pytest.approx(2.5)
    assert dba["full_over_fusion_train_ms"] == pytest.approx(4.0)
    assert full["runs"] == 2
    assert full["runs_ok"] == 1
    assert full["accuracy_sd"] is None
    assert full["errors"] == ["full_64px_seed1: ValueError: injected"]


def test_report_files_have_expected_columns(tmp_path):
    cfg = tiny_config(tmp_path, "ablation.backends=[dba,full]", "ablation.image_sizes=[32,64]")
    runs = [fake_run(variant, size, 0, 60.0) for variant in ("dba", "full") for size in (32, 64)]
    runs.append(fake_run("full", 64, 1, 0.0, status="failed"))
    write_report(cfg, runs, [], tmp_path, wall_seconds=12.0, overrides=["model.fusion.decoder=text"])

    with (tmp_path / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5
    assert list(rows[0])[: len(RUN_COLUMNS)] == RUN_COLUMNS
    assert {"acc_nonrel_shape", "acc_rel_count"} <= set(rows[0])
    assert rows[0]["accuracy_relational"] == "50.0"
    assert rows[-1]["status"] == "failed"
    assert rows[-1]["error"] == "ValueError: injected"

    report = json.loads((tmp_path / "results.json").read_text())
    assert {"meta", "summary", "runs", "speed"} <= set(report)
    assert report["meta"]["overrides"] == ["model.fusion.decoder=text"]
    markdown = (tmp_path / "results.md").read_text()
    assert "- Overrides: `model.fusion.decoder=text`" in markdown
    assert "| 64 | 64 | full | 1/2 |" in markdown
    assert "ValueError: injected" in markdown
    for plot in ("accuracy_curves.png", "cost_vs_tokens.png"):
        assert (tmp_path / plot).stat().st_size > 1000


# --- end to end with child processes ------------------------------------------------------------


@pytest.mark.slow
def test_failing_run_is_recorded_and_others_continue(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "ablation.backends=[dba,full]",
        "ablation.image_sizes=[32]",
        "ablation.dba_variants=[{name: dba_bad, options: {num_latents: 0}}]",
        "ablation.speed=false",
    )
    report = run_ablation(cfg, log=lambda line: None)
    status = {run["name"]: run for run in report["runs"]}
    assert [run["name"] for run in report["runs"]] == ["dba_32px_seed0", "full_32px_seed0", "dba_bad_32px_seed0"]
    assert status["dba_bad_32px_seed0"]["status"] == "failed"
    assert "num_latents must be a positive int" in status["dba_bad_32px_seed0"]["error"]
    for name in ("dba_32px_seed0", "full_32px_seed0"):
        run = status[name]
        assert run["status"] == "ok", run.get("error")
        assert run["steps"] == 4
        assert 0.0 <= run["accuracy"] <= 100.0
        assert set(run["per_group"]) == {"relational", "non-relational"}
        assert run["num_questions"] == 4 * 6
        assert run["child_max_rss_mb"] > 0
        assert run["peak_memory_mb"] > 0
        assert run["fusion_flops_per_sample"] > 0
        assert run["params_fusion"] > 0
        assert run["curve"] and run["curve"][-1]["step"] == 4
        assert not (tmp_path / "runs" / name / "last.pt").exists()
    assert "dba_bad_32px_seed0" in (tmp_path / "results.md").read_text()


# --- learnability probe ---------------------------------------------------------------------------


def test_probe_scores_every_family(tmp_path):
    from vqa.ablation.probe import ProbeSettings, run_probe
    from vqa.data.sort_of_clevr import QUESTION_FAMILIES

    cfg = tiny_config(tmp_path, "model.image.img_size=32", "model.image.freeze_blocks=-1", "model.head_image_pool=guided")
    settings = ProbeSettings(
        data_dir=str(tmp_path / "data"), train_images=8, test_images=4, steps=3, batch_questions=6, eval_every=2, logit_scale=2.0
    )
    history = run_probe(cfg, settings, log=lambda line: None)
    assert [record["step"] for record in history] == [2, 3]
    for record in history:
        assert set(record["families"]) == set(QUESTION_FAMILIES)
        # Every family has 4 test questions, so the overall accuracy is the mean over families.
        mean = sum(record["families"].values()) / len(QUESTION_FAMILIES)
        assert record["accuracy"] == pytest.approx(mean, abs=0.1)
        for family, accuracy in record["families"].items():
            assert accuracy in (0.0, 25.0, 50.0, 75.0, 100.0), family
    assert (tmp_path / "data" / "questions" / "CLEVR_test_questions.json").is_file()


def test_probe_rejects_settings_it_cannot_honour(tmp_path):
    from vqa.ablation.probe import ProbeSettings, run_probe

    settings = ProbeSettings(data_dir=str(tmp_path / "data"), train_images=4, test_images=2, steps=1, batch_questions=2, logit_scale=2.0)
    trainable = tiny_config(tmp_path, "model.image.img_size=32", "model.image.freeze_blocks=0")
    with pytest.raises(ValueError, match="freeze_blocks=-1"):
        run_probe(trainable, settings, log=lambda line: None)
    self_pool = tiny_config(tmp_path, "model.image.img_size=32", "model.image.freeze_blocks=-1")
    with pytest.raises(ValueError, match="head_image_pool=guided"):
        run_probe(self_pool, settings, log=lambda line: None)


def test_probe_checks_settings_before_loading_anything(tmp_path):
    from vqa.ablation.probe import ProbeSettings

    good = dict(data_dir=str(tmp_path), train_images=4, test_images=2, steps=1, batch_questions=2, eval_every=1)
    ProbeSettings(**good).check()
    for change, message in (
        ({"steps": 0}, "steps=0 must be at least 1"),
        ({"eval_every": 0}, "eval_every=0 must be at least 1"),
        ({"train_images": 0}, "train_images=0 must be at least 1"),
        ({"batch_questions": 25}, "batch_questions=25 is larger than the 24 training questions"),
        ({"logit_scale": 0.0}, "logit_scale=0.0 must be a positive finite number"),
        ({"logit_scale": float("nan")}, "logit_scale=nan must be a positive finite number"),
    ):
        with pytest.raises(ValueError, match=message):
            ProbeSettings(**{**good, **change}).check()


REPO = Path(__file__).resolve().parents[1]


def _load_script(name):
    import importlib.util

    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablate_script_exit_status(tmp_path, monkeypatch, capsys):
    script = _load_script("ablate")
    calls = []

    def fake_run(cfg, config_path, overrides):
        calls.append(list(overrides))
        return {"runs": [{"name": "dba_32px_seed0", "status": "ok"}, {"name": "full_32px_seed0", "status": "failed"}]}

    monkeypatch.setattr(script, "run_ablation", fake_run)
    overrides = TINY + [f"ablation.output_dir={tmp_path}"]
    # A bad choice stops the script before any run starts, naming the key and the choices.
    assert script.main(["--config", str(REPO / "models/ablation_sort_of_clevr.yaml"), *overrides, "model.fusion.decoder=txt"]) == 2
    assert "model.fusion.decoder='txt' is not supported; choose one of image, text" in capsys.readouterr().err
    assert calls == []
    # A failed run gives status 1 after the tables are written.
    assert script.main(["--config", str(REPO / "models/ablation_sort_of_clevr.yaml"), *overrides]) == 1
    assert "failed runs: full_32px_seed0" in capsys.readouterr().err
    assert calls == [overrides]
