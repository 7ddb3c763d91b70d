"""Training loop on a toy model: loss goes down, files appear, and kill-and-resume is exact."""

import json
import math
import os
import signal

import pytest
import torch

from training_toys import ToyVQADataset, ToyVQAModel, make_config, toy_collate, toy_score
from vqa.training import Trainer


class SimulatedKill(RuntimeError):
    pass


class RecordingCollate:
    """Collate that remembers the question ids of every batch it builds."""

    def __init__(self):
        self.seen = []

    def __call__(self, items):
        batch = toy_collate(items)
        self.seen.extend(batch["question_ids"])
        return batch


def make_trainer(cfg, model=None, train_size=20, collate=None, **kwargs):
    return Trainer(
        cfg,
        model or ToyVQAModel(),
        ToyVQADataset(train_size),
        collate or toy_collate,
        val_dataset=ToyVQADataset(7, offset=500),
        score_fn=toy_score,
        **kwargs,
    )


def read_records(output_dir, kind):
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


def test_fit_lowers_loss_and_writes_run_files(tmp_path):
    cfg = make_config(tmp_path, train={"epochs": 4}, optim={"warmup_steps": 1})
    summary = make_trainer(cfg, train_size=24).fit()

    train = read_records(tmp_path, "train")
    evals = read_records(tmp_path, "eval")
    first, last = train[0]["loss"], sum(r["loss"] for r in train[-3:]) / 3
    assert last < 0.6 * first, (first, last)
    assert summary["global_step"] == 4 * 6
    assert summary["stop_reason"].startswith("finished")
    assert [r["epoch"] for r in evals] == [1.0, 2.0, 3.0, 4.0]
    assert train[0]["epoch"] == pytest.approx(1 / 6)
    assert evals[-1]["num_questions"] == 7
    assert summary["best_value"] == max(r["accuracy"] for r in evals)
    assert {"lr", "loss_avg", "samples_per_s", "data_time_s", "grad_norm"} <= set(train[0])

    assert (tmp_path / "config.yaml").read_text().count("batch_size: 4") == 1
    assert (tmp_path / "best" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "best.json").read_text())["value"] == summary["best_value"]
    assert len(json.loads((tmp_path / "best_predictions.json").read_text())) == 7
    assert any((tmp_path / "tensorboard").iterdir())


def test_checkpoint_loads_with_weights_only(tmp_path):
    cfg = make_config(tmp_path, train={"epochs": 1})
    make_trainer(cfg).fit()

    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert checkpoint["batches_done"] == 0
    assert checkpoint["global_step"] == 5
    assert checkpoint["sampler"]["num_items"] == 20
    assert {"model", "optimizer", "scheduler", "scaler", "rng"} <= set(checkpoint)
    assert "batch_size: 4" in checkpoint["config_yaml"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def run_with_kill(cfg, kill_at_step, recorder):
    lrs = {}

    def hook(trainer):
        lrs[trainer.global_step] = [group["lr"] for group in trainer.optimizer.param_groups]
        if trainer.global_step == kill_at_step:
            raise SimulatedKill(f"killed after step {kill_at_step}")

    return make_trainer(cfg, collate=recorder, on_step_end=hook), lrs


@pytest.mark.parametrize("num_workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, num_workers):
    # 20 samples, batch 4, 2 micro-batches per step: steps of 2, 2 and 1 batches per epoch.
    sections = {
        "data": {"num_workers": num_workers},
        "optim": {"grad_accum_steps": 2},
        "train": {"epochs": 3, "checkpoint_every": 1},
    }

    full_seen = RecordingCollate()
    full, full_lrs = run_with_kill(make_config(tmp_path / "full", **sections), -1, full_seen)
    full_summary = full.fit()

    killed_seen = RecordingCollate()
    killed, killed_lrs = run_with_kill(make_config(tmp_path / "killed", **sections), 5, killed_seen)
    with pytest.raises(SimulatedKill):
        killed.fit()
    checkpoint = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["batches_done"], checkpoint["global_step"]) == (1, 4, 5)

    resumed_seen = RecordingCollate()
    resumed_cfg = make_config(tmp_path / "killed", **sections)
    resumed, resumed_lrs = run_with_kill(resumed_cfg, -1, resumed_seen)
    resumed.model.load_state_dict(ToyVQAModel(seed=123).state_dict())
    resumed_summary = resumed.fit(resume=tmp_path / "killed")

    if num_workers == 0:
        # With workers the collate runs in child processes, where the recorder cannot report back.
        assert killed_seen.seen + resumed_seen.seen == full_seen.seen
        assert len(full_seen.seen) == 3 * 20 + 3 * 7  # three epochs of training plus three evaluations
    assert {**killed_lrs, **resumed_lrs} == full_lrs
    assert resumed_summary["global_step"] == full_summary["global_step"] == 9
    assert resumed_summary["best_value"] == full_summary["best_value"]
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    for name, tensor in full_state.items():
        assert torch.equal(tensor, resumed_state[name]), name
    for group_full, group_resumed in zip(full.optimizer.param_groups, resumed.optimizer.param_groups):
        assert group_full["lr"] == group_resumed["lr"]

    resumed_steps = [r["step"] for r in read_records(tmp_path / "killed", "train")]
    assert resumed_steps == list(range(1, 10))


def test_resume_with_more_epochs_stretches_schedule(tmp_path):
    make_trainer(make_config(tmp_path, train={"epochs": 1})).fit()
    longer = make_trainer(make_config(tmp_path, train={"epochs": 3}))
    longer.load_checkpoint(tmp_path)

    assert longer.global_step == 5
    assert longer.scheduler.lr_lambdas[0].total_steps == 15
    fresh = make_trainer(make_config(tmp_path / "fresh", train={"epochs": 3}))
    for _ in range(5):
        fresh.optimizer.step()  # no gradients, so the weights stay; only the schedule advances
        fresh.scheduler.step()
    assert [g["lr"] for g in longer.optimizer.param_groups] == pytest.approx(
        [g["lr"] for g in fresh.optimizer.param_groups]
    )
    assert longer.current_lr() == pytest.approx(fresh.current_lr())


def test_resume_missing_path_raises(tmp_path):
    trainer = make_trainer(make_config(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        trainer.fit(resume=tmp_path / "does-not-exist")
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(FileNotFoundError, match="has no last.pt"):
        trainer.fit(resume=tmp_path / "empty-run")


def test_resume_rejects_other_model(tmp_path):
    make_trainer(make_config(tmp_path, train={"epochs": 1})).fit()
    other = make_trainer(make_config(tmp_path / "other"), model=ToyVQAModel(dim=8))
    with pytest.raises(ValueError, match="do not match this model"):
        other.fit(resume=tmp_path / "last.pt")


def test_max_steps_stops_mid_epoch_then_evaluates(tmp_path):
    cfg = make_config(tmp_path, train={"max_steps": 3})
    trainer = make_trainer(cfg)
    summary = trainer.fit()

    assert summary["global_step"] == 3
    assert "max_steps" in summary["stop_reason"]
    assert trainer.total_steps == 3
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["batches_done"]) == (0, 3)
    assert [r["step"] for r in read_records(tmp_path, "eval")] == [3]


def test_time_limit_stops_after_first_step(tmp_path):
    cfg = make_config(tmp_path, train={"time_limit_min": 1e-9})
    summary = make_trainer(cfg).fit()
    assert summary["global_step"] == 1
    assert "time_limit_min" in summary["stop_reason"]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["global_step"] == 1


def test_grad_accumulation_matches_large_batch(tmp_path):
    small = make_config(tmp_path / "small", data={"batch_size": 2}, optim={"grad_accum_steps": 2}, train={"epochs": 1})
    large = make_config(tmp_path / "large", data={"batch_size": 4}, train={"epochs": 1})
    small_trainer = make_trainer(small, model=ToyVQAModel(dropout=0.0), train_size=16)
    large_trainer = make_trainer(large, model=ToyVQAModel(dropout=0.0), train_size=16)
    small_trainer.fit()
    large_trainer.fit()

    assert small_trainer.global_step == large_trainer.global_step == 4
    for (name, a), b in zip(small_trainer.model.state_dict().items(), large_trainer.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_unreadable_images_are_counted_and_skipped(tmp_path):
    cfg = make_config(tmp_path, data={"batch_size": 1}, train={"epochs": 1})
    trainer = Trainer(
        cfg,
        ToyVQAModel(),
        ToyVQADataset(8, unreadable=(2, 5)),
        toy_collate,
        val_dataset=ToyVQADataset(7, offset=500, unreadable=(0,)),
        score_fn=toy_score,
    )
    summary = trainer.fit()

    assert summary["global_step"] == 8
    assert summary["skipped_images"] == 2
    train = read_records(tmp_path, "train")
    assert sum(record["skipped_images"] for record in train) == 2
    losses = [record["loss"] for record in train]
    # A step whose only batch was unreadable has no loss.
    assert losses.count(None) == 2
    assert all(math.isfinite(loss) for loss in losses if loss is not None)
    assert summary["last_eval"]["num_questions"] == 6
    assert summary["last_eval"]["skipped"] == 1


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("optim", "grad_accum_steps", 0, "grad_accum_steps=0"),
        ("train", "log_every", 0, "log_every=0"),
        ("optim", "schedule", "linear", "schedule='linear'"),
        ("train", "precision", "fp16", "needs a CUDA device"),
        ("train", "precision", "int8", "precision='int8'"),
    ],
)
def test_invalid_config_raises(tmp_path, section, key, value, message):
    cfg = make_config(tmp_path, **{section: {key: value}})
    with pytest.raises(ValueError, match=message):
        make_trainer(cfg)


def test_bf16_autocast_on_cpu_trains(tmp_path):
    cfg = make_config(tmp_path, train={"precision": "bf16", "epochs": 1})
    trainer = make_trainer(cfg)
    summary = trainer.fit()
    assert trainer.precision == "bf16"
    assert summary["global_step"] == 5
    assert summary["last_eval"]["num_questions"] == 7
    for name, param in trainer.model.named_parameters():
        assert param.dtype == torch.float32, name
        assert torch.isfinite(param).all(), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a gradient scaler needs a CUDA device")
def test_fp16_on_cuda_resumes_scaler(tmp_path):
    cfg = make_config(tmp_path, train={"precision": "fp16", "device": "cuda", "epochs": 1})
    trainer = make_trainer(cfg)
    trainer.fit()
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    assert checkpoint["scaler"]["scale"] > 0

    resumed = make_trainer(make_config(tmp_path, train={"precision": "fp16", "device": "cuda", "epochs": 2}))
    resumed.fit(resume=tmp_path)
    assert resumed.global_step == 10


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_and_resumes_exactly(tmp_path, signum):
    sections = {"train": {"epochs": 2, "checkpoint_every": 0}}
    full = make_trainer(make_config(tmp_path / "full", **sections))
    full.fit()

    def send_signal(trainer):
        if trainer.global_step == 3:
            os.kill(os.getpid(), signum)

    stopped = make_trainer(make_config(tmp_path / "stopped", **sections), on_step_end=send_signal)
    summary = stopped.fit()
    assert summary["stop_reason"] == f"interrupted by {signal.Signals(signum).name}"
    assert summary["global_step"] == 3
    checkpoint = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["batches_done"], checkpoint["global_step"]) == (0, 3, 3)
    assert signal.getsignal(signum) is not None  # the previous handler is back

    resumed = make_trainer(make_config(tmp_path / "stopped", **sections))
    resumed.model.load_state_dict(ToyVQAModel(seed=7).state_dict())
    assert resumed.fit(resume=tmp_path / "stopped")["global_step"] == full.global_step
    for name, tensor in full.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
