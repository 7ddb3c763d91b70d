"""End to end on a tiny generated Sort-of-CLEVR: train, evaluate, predict, and the CLI's errors."""

import json
import logging
from pathlib import Path

import pytest

from tiny_overrides import TINY_MODEL_OVERRIDES
from vqa.cli import main
from vqa.config import load_config
from vqa.data.sort_of_clevr import generate
from vqa.inference import Predictor
from vqa.metrics import load_results
from vqa.pipeline import score_results_file, train

PRESET = Path(__file__).resolve().parents[1] / "models" / "easy_vqa_dba.yaml"

TINY_MODEL = TINY_MODEL_OVERRIDES + [
    "model.image.img_size=32",
    "model.fusion.attention_options.num_latents=4",
    "model.fusion.attention_options.reduced_dim=8",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sort_of_clevr")
    generate(root, image_size=32, num_images={"train": 12, "val": 4, "test": 4}, questions_per_image=6, seed=0)
    output_dir = tmp_path_factory.mktemp("run")
    overrides = TINY_MODEL + [
        "data.dataset=sort_of_clevr",
        f"data.root={root}",
        "data.group_by_image=true",
        "data.batch_size=4",
        "data.num_workers=0",
        "optim.lr=3e-3",
        "optim.warmup_steps=0",
        "optim.schedule=constant",
        "train.epochs=20",
        "train.log_every=1",
        f"train.output_dir={output_dir}",
    ]
    summary = train(load_config(None, overrides))
    return root, output_dir, summary


@pytest.mark.slow
def test_training_lowers_loss_and_writes_run(tiny_run):
    _, output_dir, summary = tiny_run
    assert summary["global_step"] == 60  # 12 images / 4 per batch * 20 epochs
    for name in ("config.yaml", "last.pt", "metrics.jsonl", "answers.json", "best/model.safetensors"):
        assert (output_dir / name).exists(), name
    losses = [
        record["loss"]
        for record in map(json.loads, (output_dir / "metrics.jsonl").read_text().splitlines())
        if "loss" in record
    ]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first


@pytest.mark.slow
def test_evaluate_writes_official_results(tiny_run, tmp_path, capsys):
    root, output_dir, _ = tiny_run
    results = tmp_path / "results.json"
    code = main(["evaluate", "--checkpoint", str(output_dir / "best"), "--split", "test", "--results", str(results)])
    assert code == 0
    assert "accuracy:" in capsys.readouterr().out

    predictions = load_results(results)
    assert len(predictions) == 4 * 6
    assert set(predictions[0]) == {"question_id", "answer"}
    report = score_results_file(results, "sort_of_clevr", str(root), "test")
    assert report["missing"] == 0
    assert report["extra"] == 0
    assert set(report["per_group"]) == {"relational", "non-relational"}


@pytest.mark.slow
def test_predict_json_output_and_batch_agree(tiny_run, tmp_path, capsys):
    root, output_dir, _ = tiny_run
    image = sorted((root / "images" / "test").iterdir())[0]
    question = "What is the shape of the red object?"
    code = main(
        ["predict", "--checkpoint", str(output_dir / "best"), "--image", str(image),
         "--question", question, "--top-k", "3", "--json"]
    )
    assert code == 0
    single = json.loads(capsys.readouterr().out.strip())
    assert single["question"] == question
    assert len(single["answers"]) == 3
    scores = [entry["score"] for entry in single["answers"]]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert sum(scores) <= 1.0 + 1e-5  # softmax probabilities of the top 3 of a cross-entropy model

    batch_file = tmp_path / "pairs.jsonl"
    other = sorted((root / "images" / "test").iterdir())[1]
    lines = [{"image": str(other), "question": "Is the gray object on the left side of the image?"},
             {"image": str(image), "question": question}]
    batch_file.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert main(["predict", "--checkpoint", str(output_dir / "best"), "--batch", str(batch_file), "--json"]) == 0
    batch = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(batch) == 2
    assert batch[1]["answers"][0]["answer"] == single["answers"][0]["answer"]
    assert batch[1]["answers"][0]["score"] == pytest.approx(single["answers"][0]["score"], abs=1e-5)


@pytest.mark.slow
def test_predictor_api_runs_in_eval_mode(tiny_run):
    root, output_dir, _ = tiny_run
    predictor = Predictor.from_pretrained(output_dir / "best", device="cpu")
    predictor.model.train()  # inference must not depend on the mode the caller left
    image = sorted((root / "images" / "test").iterdir())[0]
    first = predictor.predict(image, "What is the shape of the blue object?", top_k=2)
    second = predictor.predict(image, "What is the shape of the blue object?", top_k=2)
    assert first.answers == second.answers
    assert first.scores == second.scores
    assert not predictor.model.training


def test_cli_reports_bad_paths_and_configs(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml not found" in caplog.text
    assert main(["train", "--config", str(PRESET), "train.epochz=3"]) == 1
    assert "epochz" in caplog.text
    assert main(["predict", "--checkpoint", str(tmp_path / "nowhere"), "--image", "x.png", "--question", "q"]) == 1
    assert "nowhere not found" in caplog.text
    assert main(["train", "--resume", str(tmp_path / "run_that_never_was")]) == 1
    assert "run_that_never_was not found" in caplog.text
    assert main(["frobnicate"]) == 2


def test_predict_requires_image_and_question(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--checkpoint", "x", "--image", "a.png"])
    assert "--question" in capsys.readouterr().err


def test_score_results_reports_missing_and_extra(tmp_path, capsys):
    root = tmp_path / "soc"
    generate(root, image_size=16, num_images={"train": 2, "val": 1, "test": 2}, questions_per_image=3, seed=1)
    from vqa.data import read_dataset

    records = read_dataset("sort_of_clevr", str(root), "test")
    results = [{"question_id": r.question_id, "answer": r.answers[0]} for r in records[1:]]
    results.append({"question_id": 999999, "answer": "yes"})
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))

    code = main(["evaluate", "--score-results", str(path), "--dataset", "sort_of_clevr",
                 "--root", str(root), "--split", "test"])
    output = capsys.readouterr().out
    assert code == 0
    assert "accuracy: 100.00 (5 of 6 questions scored)" in output
    assert "1 questions of the split have no prediction" in output
    assert "1 predictions are not in the split" in output


def tiny_overrides(root, output_dir, *extra):
    return TINY_MODEL + [
        "data.dataset=sort_of_clevr",
        f"data.root={root}",
        "data.num_workers=0",
        "train.epochs=1",
        f"train.output_dir={output_dir}",
        *extra,
    ]


@pytest.mark.slow
def test_fresh_run_refuses_to_overwrite_earlier_run(tiny_run, tmp_path):
    root, output_dir, _ = tiny_run
    best_before = (output_dir / "best" / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already contains last.pt and best"):
        train(load_config(None, tiny_overrides(root, output_dir)))
    assert (output_dir / "best" / "model.safetensors").read_bytes() == best_before

    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "last.pt").write_bytes(b"old")
    (copy / "metrics.jsonl").write_text('{"kind": "train", "step": 99}\n')
    train(load_config(None, tiny_overrides(root, copy, "train.overwrite=true")))
    records = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert all(record.get("step") != 99 for record in records)


@pytest.mark.slow
def test_resume_without_config_uses_run_config(tiny_run, tmp_path, caplog):
    root, output_dir, _ = tiny_run
    run = tmp_path / "run"
    train(load_config(None, tiny_overrides(root, run)))
    caplog.set_level(logging.INFO)
    assert main(["train", "--resume", str(run), "train.epochs=2"]) == 0
    assert "resuming with the run's own config" in caplog.text
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(step for step in steps if step is not None) == 4  # 72 questions, batch 64, two epochs


@pytest.mark.slow
def test_predict_errors_name_the_problem(tiny_run, tmp_path, caplog):
    root, output_dir, _ = tiny_run
    caplog.set_level(logging.ERROR)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    best = str(output_dir / "best")
    assert main(["predict", "--checkpoint", best, "--image", str(broken), "--question", "Is it red?"]) == 1
    assert "broken.png" in caplog.text
    image = str(sorted((root / "images" / "test").iterdir())[0])
    assert main(["predict", "--checkpoint", best, "--image", image, "--question", "   "]) == 1
    assert "question 0 is empty" in caplog.text
    assert main(["predict", "--checkpoint", str(output_dir), "--image", image, "--question", "q?"]) == 1
    assert f"pass {output_dir / 'best'}" in caplog.text
    assert main(["predict", "--checkpoint", str(output_dir / "last.pt"), "--image", image, "--question", "q?"]) == 1
    assert "last.pt is a file" in caplog.text


@pytest.mark.slow
def test_truncated_weights_file_is_named(tiny_run, tmp_path):
    import shutil

    from vqa.model import VQAModel

    _, output_dir, _ = tiny_run
    copy = tmp_path / "best"
    shutil.copytree(output_dir / "best", copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:10])
    with pytest.raises(ValueError, match="model.safetensors could not be read"):
        VQAModel.from_pretrained(copy)


def test_train_needs_config_or_resume(capsys):
    with pytest.raises(SystemExit):
        main(["train"])
    assert "pass --config PRESET" in capsys.readouterr().err


def test_score_results_rejects_empty_and_invalid_files(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    invalid = tmp_path / "invalid.json"
    invalid.write_text("{not json")
    for path, message in ((empty, "contains no predictions"), (invalid, "is not valid JSON")):
        code = main(["evaluate", "--score-results", str(path), "--dataset", "easy_vqa", "--split", "test"])
        assert code == 1
        assert f"{path.name} {message}" in caplog.text or message in caplog.text
