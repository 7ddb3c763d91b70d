"""Optimizer parameter groups and the learning-rate schedule."""

import math

import pytest

from training_toys import ToyVQAModel
from vqa.config import OptimConfig
from vqa.training.optim import WarmupDecay, build_optimizer, build_param_groups, build_scheduler


def groups_by_name(groups):
    return {group["name"]: group for group in groups}


def test_param_groups_split_decay_and_apply_lr_mult():
    model = ToyVQAModel()
    groups = groups_by_name(build_param_groups(model, lr=0.1, weight_decay=0.05))

    assert set(groups) == {"text/no_decay", "fusion/decay", "fusion/no_decay"}
    # The 2-D token embedding gets no weight decay because of its name.
    assert groups["text/no_decay"]["params"] == [model.token_embedding.weight]
    assert groups["text/no_decay"]["lr"] == pytest.approx(0.05)
    assert groups["fusion/decay"]["weight_decay"] == 0.05
    assert {id(p) for p in groups["fusion/decay"]["params"]} == {id(model.image_proj.weight), id(model.head.weight)}
    no_decay = {id(p) for p in groups["fusion/no_decay"]["params"]}
    assert no_decay == {id(model.image_proj.bias), id(model.head.bias), id(model.norm.weight), id(model.norm.bias)}
    assert groups["fusion/no_decay"]["weight_decay"] == 0.0


class PartlyGroupedModel(ToyVQAModel):
    """Lists only the head in ``param_groups()``."""

    def param_groups(self):
        return [{"name": "head", "params": list(self.head.parameters()), "lr_mult": 2.0}]


def test_param_groups_skip_frozen_and_keep_ungrouped(caplog):
    model = PartlyGroupedModel()
    model.head.weight.requires_grad_(False)
    groups = groups_by_name(build_param_groups(model, lr=0.1, weight_decay=0.05))

    assert set(groups) == {"head/no_decay", "ungrouped/decay", "ungrouped/no_decay"}
    assert groups["head/no_decay"]["params"] == [model.head.bias]
    assert groups["head/no_decay"]["lr"] == pytest.approx(0.2)
    assert {id(p) for p in groups["ungrouped/decay"]["params"]} == {id(model.image_proj.weight)}
    assert groups["ungrouped/decay"]["lr"] == pytest.approx(0.1)
    trained = {id(p) for group in groups.values() for p in group["params"]}
    assert id(model.head.weight) not in trained
    assert "image_proj.weight" in caplog.text


def test_optimizer_rejects_non_positive_lr():
    with pytest.raises(ValueError, match="optim.lr=0"):
        build_optimizer(ToyVQAModel(), OptimConfig(lr=0.0))


def test_cosine_schedule_warms_up_then_decays_to_min():
    schedule = WarmupDecay("cosine", total_steps=12, warmup_steps=2, min_lr_ratio=0.1)
    assert schedule(0) == pytest.approx(0.5)
    assert schedule(1) == pytest.approx(1.0)
    assert schedule(2) == pytest.approx(1.0)
    assert schedule(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule(12) == pytest.approx(0.1)
    assert schedule(50) == pytest.approx(0.1)


def test_step_and_constant_schedules():
    step = WarmupDecay("step", total_steps=10, warmup_steps=0, step_milestones=[0.5, 0.8], step_gamma=0.1)
    assert [step(s) for s in (0, 4, 5, 7, 8, 9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    constant = WarmupDecay("constant", total_steps=10, warmup_steps=4)
    assert [constant(s) for s in (0, 3, 4, 9)] == pytest.approx([0.25, 1, 1, 1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "poly"}, "schedule='poly'"),
        ({"total_steps": 0}, "total_steps=0"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio=1.5"),
        ({"step_milestones": [2.0]}, "contains 2.0"),
    ],
)
def test_schedule_rejects_invalid_settings(kwargs, message):
    arguments = {"schedule": "cosine", "total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        WarmupDecay(**arguments)


def test_scheduler_scales_each_group_and_round_trips():
    model = ToyVQAModel()
    cfg = OptimConfig(lr=0.1, warmup_steps=2, schedule="cosine", min_lr_ratio=0.0)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=10)
    lrs = groups_by_name(optimizer.param_groups)
    assert lrs["text/no_decay"]["lr"] == pytest.approx(0.025)
    assert lrs["fusion/decay"]["lr"] == pytest.approx(0.05)

    for _ in range(4):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    fresh_optimizer = build_optimizer(ToyVQAModel(), cfg)
    fresh = build_scheduler(fresh_optimizer, cfg, total_steps=99)
    fresh.load_state_dict(state)
    assert fresh.get_last_lr() == scheduler.get_last_lr()
    assert fresh.lr_lambdas[0].total_steps == 10
