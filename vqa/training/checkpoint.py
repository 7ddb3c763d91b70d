"""Training checkpoints: atomic writes, safe loads and random-number-generator state.

A checkpoint is a dict of tensors and plain Python values (numbers, strings, lists,
dicts), so it loads with ``torch.load(weights_only=True)``. Configs are stored as YAML
text, never as pickled objects.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import torch
from torch import nn

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT_VERSION",
    "capture_rng_state",
    "restore_rng_state",
    "atomic_torch_save",
    "resolve_checkpoint_path",
    "load_checkpoint",
    "load_model_state",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
FORMAT_VERSION = 1
PathLike = Union[str, os.PathLike]


def capture_rng_state() -> dict[str, Any]:
    """Return the states of Python's ``random``, numpy's global RNG, torch CPU and CUDA as plain data."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states written by ``capture_rng_state``."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning(
                "the checkpoint contains %d CUDA RNG states but %d devices are visible, so the CUDA RNG is not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; some file systems and platforms cannot open a folder.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """Write ``torch.save(obj)`` to ``path`` so that readers see the old file or the whole new one.

    The data goes to a temporary file in the same folder, is flushed and fsynced, and then
    replaces ``path`` with ``os.replace``. If anything fails, the temporary file is removed
    and ``path`` is left as it was.

    Args:
        obj: the object to save.
        path: destination file; its folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)
    return path


def resolve_checkpoint_path(path: PathLike) -> Path:
    """Return the checkpoint file for ``--resume PATH``: the file itself or ``PATH/last.pt``.

    Raises:
        FileNotFoundError: when the path or the folder's ``last.pt`` does not exist.
    """
    path = Path(path)
    if path.is_dir():
        candidate = path / CHECKPOINT_NAME
        if not candidate.is_file():
            raise FileNotFoundError(
                f"cannot resume: the run folder {path} has no {CHECKPOINT_NAME}; pass a checkpoint file "
                f"or the output_dir of an earlier run"
            )
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: checkpoint {path} does not exist")
    return path


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Load a training checkpoint with ``torch.load(weights_only=True)``.

    Args:
        path: a checkpoint file or a run folder holding ``last.pt``.
        map_location: where to put the tensors.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a training checkpoint of a supported version.
    """
    file = resolve_checkpoint_path(path)
    checkpoint = torch.load(file, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise ValueError(f"{file} is not a dba-vqa training checkpoint (no format_version key)")
    if checkpoint["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{file} has checkpoint format {checkpoint['format_version']}, newer than the supported "
            f"{FORMAT_VERSION}; update dba-vqa"
        )
    return checkpoint


def load_model_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a model state dict strictly, raising one clear error for any key or shape mismatch.

    Args:
        model: the unwrapped model.
        state_dict: the saved ``model.state_dict()``.
        source: name of the file, for the error message.

    Raises:
        ValueError: keys are missing or unexpected, or shapes differ.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        key for key in set(expected) & set(state_dict) if tuple(expected[key].shape) != tuple(state_dict[key].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:5])})")
        if mismatched:
            shapes = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched[:5]]
            parts.append(f"{len(mismatched)} with other shapes ({'; '.join(shapes)})")
        raise ValueError(
            f"the model weights in {source} do not match this model: {', '.join(parts)}; "
            f"resume with the model config the checkpoint was trained with"
        )
    model.load_state_dict(state_dict, strict=True)
