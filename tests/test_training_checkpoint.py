"""Checkpoint files: atomic writes, weights-only loads, RNG state and clear errors."""

import random

import numpy as np
import pytest
import torch

from training_toys import ToyVQAModel
from vqa.training import checkpoint as checkpoint_module
from vqa.training.checkpoint import (
    atomic_torch_save,
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    resolve_checkpoint_path,
    restore_rng_state,
)


def draw_all():
    return random.random(), float(np.random.rand()), torch.rand(2).tolist()


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    np.random.randn()  # leaves a cached Gaussian in numpy's legacy state
    torch.manual_seed(3)
    atomic_torch_save({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = draw_all()

    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert draw_all() == expected


def test_atomic_save_replaces_file(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save({"value": torch.tensor(1)}, path)
    atomic_torch_save({"value": torch.tensor(2)}, path)
    assert torch.load(path, weights_only=True)["value"].item() == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_failed_save_leaves_old_file_and_no_partial(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_torch_save({"value": torch.tensor(1)}, path)

    def failing_save(obj, handle):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"value": torch.tensor(2)}, path)
    monkeypatch.undo()

    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.load(path, weights_only=True)["value"].item() == 1


def test_resolve_checkpoint_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        resolve_checkpoint_path(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="has no last.pt"):
        resolve_checkpoint_path(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"")
    assert resolve_checkpoint_path(tmp_path) == tmp_path / "last.pt"


def test_load_checkpoint_rejects_foreign_file(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a dba-vqa training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_load_checkpoint_rejects_pickled_objects(tmp_path):
    torch.save({"format_version": 1, "config": object()}, tmp_path / "pickled.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_checkpoint(tmp_path / "pickled.pt")


def test_load_model_state_names_mismatches():
    model = ToyVQAModel(dim=8)
    state = ToyVQAModel(dim=16).state_dict()
    state["surplus.weight"] = torch.zeros(1)
    del state["head.bias"]
    with pytest.raises(ValueError) as error:
        load_model_state(model, state, source="run/last.pt")
    message = str(error.value)
    assert "run/last.pt" in message
    assert "1 missing (e.g. head.bias)" in message
    assert "1 unexpected (e.g. surplus.weight)" in message
    assert "6 with other shapes" in message
    assert "norm.weight: (16,) vs (8,)" in message


def test_load_model_state_loads_matching_weights():
    source, target = ToyVQAModel(seed=1), ToyVQAModel(seed=2)
    load_model_state(target, source.state_dict())
    assert torch.equal(target.head.weight, source.head.weight)
