"""Image encoder: any timm model, turned into a sequence of tokens of width ``dim``.

Vision transformers (models with ``num_prefix_tokens``) give their patch tokens,
optionally with the class and register tokens in front. Every other model
(CNNs, hierarchical transformers) gives the feature map of one stage of
``feature_info``, flattened row by row, with a fixed 2-D sine-cosine position
embedding added after the projection, so any image size works.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import timm
import torch
from timm.data import create_transform, resolve_data_config
from torch import nn
from torchvision import transforms

from vqa.config import ImageEncoderConfig
from vqa.encoders import pretrained as weights
from vqa.encoders.efficientnet_lite import (
    LITE_ARCHITECTURES,
    LITE_MEAN,
    LITE_STD,
    LITE_TIMM_KWARGS,
    convert_lite_state_dict,
)

__all__ = ["FreezableEncoder", "ImageEncoder", "sincos_position_embedding_2d"]

# Spellings of ``pretrained`` that mean "random init" and "timm's default hub weights".
# YAML reads an unquoted ``off``/``on`` as a boolean, which OmegaConf stores in a str field as "False"/"True".
OFF_VALUES = {"off", "false", "none", "no", "0", ""}
HUB_VALUES = {"hub", "true", "on", "yes", "1"}

# Strength of the photometric training augmentation. No geometric augmentation is
# applied, because crops and flips change the answers to "what is on the left" questions.
COLOR_JITTER = 0.2

# Top-level child names that contain the sequence of blocks or stages of a timm model
# (``features_only`` wrappers flatten them to ``stages_0``, ``layer1`` and so on).
_BLOCK_CONTAINERS = {"blocks", "stages", "layers"}
_BLOCK_NAME = re.compile(r"^(blocks|stages|layers|layer)_?\d+$")


def normalize_pretrained(value: Any) -> str:
    """Map the spellings of ``ImageEncoderConfig.pretrained`` onto "off", "hub" or the value itself."""
    text = str(value).strip()
    if text.lower() in OFF_VALUES:
        return "off"
    if text.lower() in HUB_VALUES:
        return "hub"
    return text


def sincos_position_embedding_2d(height: int, width: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Build a fixed 2-D sine-cosine position embedding of shape (height * width, dim).

    A quarter of the channels encode sin and cos of the row, another quarter of the
    column, at geometrically spaced frequencies, in the order of a row-major flatten.

    Raises:
        ValueError: ``dim`` is not a multiple of 4.
    """
    if dim % 4 != 0:
        raise ValueError(f"The 2-D sine-cosine position embedding needs a width divisible by 4, got dim={dim}.")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    rows = rows.reshape(-1, 1) * omega  # (H*W, dim/4)
    cols = cols.reshape(-1, 1) * omega
    return torch.cat([rows.sin(), rows.cos(), cols.sin(), cols.cos()], dim=1)  # (H*W, dim)


class FreezableEncoder(nn.Module):
    """Base of both encoders: freezing by blocks, frozen modules kept in eval mode, LR groups.

    Subclasses set ``backbone``, ``lr_mult`` and call ``freeze(k)``. ``param_groups``
    is the interface the trainer uses: the backbone at ``base_lr * lr_mult``, the
    projection layers at ``base_lr``, frozen parameters left out.
    """

    backbone: nn.Module
    lr_mult: float

    def _freeze_parts(self) -> tuple[list[nn.Parameter], list[nn.Module], list[nn.Module]]:
        """Return (stem parameters outside any stem module, stem modules, blocks) of the backbone."""
        raise NotImplementedError

    def freeze(self, num_blocks: int) -> None:
        """Freeze part of the backbone, keeping the projection layers trainable.

        Frozen modules get ``requires_grad=False`` and stay in eval mode, so their
        BatchNorm statistics and dropout do not change in training. Calling it again
        with a smaller value unfreezes.

        Args:
            num_blocks: 0 trains everything; k > 0 freezes the stem (or embeddings)
                and the first k blocks; -1 freezes the whole backbone.

        Raises:
            ValueError: ``num_blocks`` is below -1 or above the number of blocks.
        """
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(True)
        self._frozen_modules: list[nn.Module] = []

        if num_blocks < -1:
            raise ValueError(f"freeze_blocks must be -1, 0 or a positive block count, got {num_blocks}.")
        if num_blocks == -1:
            self._frozen_modules = [self.backbone]
        elif num_blocks > 0:
            stem_parameters, stem_modules, blocks = self._freeze_parts()
            if num_blocks > len(blocks):
                raise ValueError(
                    f"freeze_blocks={num_blocks} is invalid because the backbone has {len(blocks)} blocks. "
                    f"Use a value up to {len(blocks)}, or -1 to freeze the whole backbone."
                )
            for parameter in stem_parameters:
                parameter.requires_grad_(False)
            self._frozen_modules = stem_modules + blocks[:num_blocks]

        for module in self._frozen_modules:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "FreezableEncoder":
        """Set the training mode, keeping frozen backbone modules in eval mode."""
        super().train(mode)
        for module in getattr(self, "_frozen_modules", []):
            module.eval()
        return self

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Return optimizer parameter groups for the trainable parameters.

        Args:
            base_lr: Learning rate of the fusion stack.

        Returns:
            Up to two groups, each with ``params``, ``lr`` and a ``name``: the backbone
            at ``base_lr * lr_mult`` and the projection layers at ``base_lr``. Empty
            groups are left out.
        """
        backbone_ids = {id(parameter) for parameter in self.backbone.parameters()}
        backbone_params = [p for p in self.backbone.parameters() if p.requires_grad]
        head_params = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]
        prefix = type(self).__name__
        groups = [
            {"name": f"{prefix}.backbone", "params": backbone_params, "lr": base_lr * self.lr_mult},
            {"name": f"{prefix}.projection", "params": head_params, "lr": base_lr},
        ]
        return [group for group in groups if group["params"]]


@contextmanager
def _quiet_timm_loading() -> Iterator[None]:
    """Silence timm's unexpected-key warnings while a features model takes a subset of a checked state dict."""
    builder_logger = logging.getLogger("timm.models._builder")
    level = builder_logger.level
    builder_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        builder_logger.setLevel(level)


class ImageEncoder(FreezableEncoder):
    """Image tokens from any timm model, projected to the fusion width.

    Args:
        cfg: Model name, weights source, image size, feature stage, freezing.
        dim: Fusion width D of the output tokens.
        load_weights: ``False`` builds the architecture of ``cfg`` with random
            weights whatever ``cfg.pretrained`` says, to load a checkpoint on top.

    Attributes:
        backbone: The timm module (``lr_mult`` applies to it in ``param_groups``).
        is_vit: Whether the tokens are ViT patch tokens rather than a flattened feature map.
        data_config: timm data config (input size, mean, std, interpolation) for ``cfg.img_size``.
    """

    def __init__(self, cfg: ImageEncoderConfig, dim: int, load_weights: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.dim = dim
        self.lr_mult = cfg.lr_mult
        self._num_tokens_cache: dict[int, int] = {}

        model_name, model_kwargs, cfg_overlay = self._architecture(cfg)
        state_dict = self._read_weights(cfg, model_name, model_kwargs) if load_weights else None
        self.backbone, self.is_vit, width = self._build_backbone(
            cfg, model_name, model_kwargs, cfg_overlay, state_dict
        )

        self.proj = nn.Linear(width, dim)
        self.norm = nn.LayerNorm(dim)
        if not self.is_vit and dim % 4 != 0:
            raise ValueError(f"A CNN image encoder adds a 2-D sine-cosine position embedding, so dim must be a multiple of 4, got {dim}.")

        self.data_config = resolve_data_config(
            args={"input_size": (3, cfg.img_size, cfg.img_size), "crop_pct": 1.0, "crop_mode": "squash"},
            pretrained_cfg=self.backbone.pretrained_cfg,
        )
        self.freeze(cfg.freeze_blocks)

    # ------------------------------------------------------------------ construction

    @staticmethod
    def _architecture(cfg: ImageEncoderConfig) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """Derive the timm model name, build kwargs and pretrained-cfg overlay from ``cfg`` alone.

        The result depends on the config, never on files, so ``load_weights=False``
        rebuilds exactly the architecture that was trained.
        """
        model_kwargs = dict(cfg.model_kwargs)
        cfg_overlay = dict(model_kwargs.pop("pretrained_cfg_overlay", None) or {})
        model_name = cfg.name
        source = normalize_pretrained(cfg.pretrained)

        if source == weights.PACKAGE_PREFIX + "efficientnet-lite0":
            arch, _ = timm.models.split_model_name_tag(cfg.name)
            if arch not in LITE_ARCHITECTURES:
                raise ValueError(
                    f"pretrained={cfg.pretrained!r} contains EfficientNet-Lite0 weights, but name={cfg.name!r}. "
                    f"Set name to one of {LITE_ARCHITECTURES}."
                )
            # timm's efficientnet_lite0 pads symmetrically, but the packaged weights need TF "SAME" padding.
            for key, value in LITE_TIMM_KWARGS.items():
                if model_kwargs.setdefault(key, value) != value:
                    raise ValueError(
                        f"model_kwargs[{key!r}]={model_kwargs[key]!r} conflicts with the efficientnet-lite0 weights, "
                        f"which need {key}={value!r}. Remove it from model_kwargs."
                    )
            cfg_overlay.setdefault("mean", LITE_MEAN)
            cfg_overlay.setdefault("std", LITE_STD)

        elif source.startswith("timm/") and weights.is_hub_id(source) and not Path(source).exists():
            # A timm hub repo is named <arch>.<tag>: use that tag's preprocessing from timm's registry.
            repo_arch, tag = timm.models.split_model_name_tag(source.split("/", 1)[1])
            arch, _ = timm.models.split_model_name_tag(cfg.name)
            if repo_arch != arch:
                raise ValueError(
                    f"pretrained={cfg.pretrained!r} contains weights for {repo_arch!r}, but name={cfg.name!r}. "
                    f"Set name to {repo_arch!r}."
                )
            if tag and f"{arch}.{tag}" in timm.list_pretrained(f"{arch}.{tag}"):
                model_name = f"{arch}.{tag}"
        return model_name, model_kwargs, cfg_overlay

    @staticmethod
    def _read_weights(cfg: ImageEncoderConfig, model_name: str, model_kwargs: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """Load the state dict that ``cfg.pretrained`` names, or ``None`` for "off"."""
        source = normalize_pretrained(cfg.pretrained)
        if source == "off":
            return None

        if source == "hub":
            pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
            if pretrained_cfg is None or not pretrained_cfg.hf_hub_id:
                raise ValueError(
                    f"timm has no hub weights for {model_name!r}. Set pretrained to a hub id, a local file or 'off'."
                )
            filenames = [pretrained_cfg.hf_hub_filename] if pretrained_cfg.hf_hub_filename else weights.WEIGHT_FILE_NAMES
            return weights.load_state_dict_file(weights.resolve_hub_file(pretrained_cfg.hf_hub_id, filenames))

        if source.startswith(weights.PACKAGE_PREFIX):
            path = weights.resolve_package_path(source)
            if source != weights.PACKAGE_PREFIX + "efficientnet-lite0":
                raise ValueError(f"pretrained={source!r} is a text model, and image encoders accept 'package:efficientnet-lite0'.")
            layout = timm.create_model(model_name, num_classes=0, **model_kwargs)
            return convert_lite_state_dict(weights.load_state_dict_file(path), layout)

        path = Path(source).expanduser()
        if path.is_dir():
            return weights.load_state_dict_file(weights.find_weights_file(path))
        if path.is_file():
            return weights.load_state_dict_file(path)
        if weights.looks_like_path(source):
            raise FileNotFoundError(
                f"pretrained={source!r}: no such file or folder. Fix the path, or use a hub id, "
                f"'hub', 'package:efficientnet-lite0' or 'off'."
            )
        repo_id = source.removeprefix("hf-hub:")
        return weights.load_state_dict_file(weights.resolve_hub_file(repo_id))

    @staticmethod
    def _build_backbone(
        cfg: ImageEncoderConfig,
        model_name: str,
        model_kwargs: dict[str, Any],
        cfg_overlay: dict[str, Any],
        state_dict: dict[str, torch.Tensor] | None,
    ) -> tuple[nn.Module, bool, int]:
        """Create the timm backbone, load ``state_dict`` strictly, and return (backbone, is_vit, width)."""
        # Build the full classifier with the checkpoint's class count, so timm loads it with strict=True.
        num_classes = 0
        if state_dict is not None:
            pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
            classifier = pretrained_cfg.classifier if pretrained_cfg is not None else None
            if isinstance(classifier, (tuple, list)):
                classifier = classifier[0]
            if classifier and f"{classifier}.weight" in state_dict:
                num_classes = state_dict[f"{classifier}.weight"].shape[0]

        def create(**kwargs: Any) -> nn.Module:
            overlay = dict(cfg_overlay)
            if state_dict is not None:
                overlay.update(state_dict=kwargs.pop("weights"), num_classes=num_classes)
            else:
                kwargs.pop("weights")
            return timm.create_model(
                model_name, pretrained=state_dict is not None, pretrained_cfg_overlay=overlay, **model_kwargs, **kwargs
            )

        size_kwargs: dict[str, Any] = {"img_size": cfg.img_size}
        try:
            try:
                full = create(weights=state_dict, num_classes=num_classes, **size_kwargs)
            except TypeError as error:
                if "img_size" not in str(error):
                    raise
                size_kwargs = {}
                full = create(weights=state_dict, num_classes=num_classes)
        except RuntimeError as error:
            if state_dict is None:
                raise
            raise RuntimeError(
                f"The weights from pretrained={cfg.pretrained!r} do not fit timm model {model_name!r}. "
                f"Check that name matches the checkpoint. {error}"
            ) from error
        full.pretrained_cfg.pop("state_dict", None)

        if hasattr(full, "num_prefix_tokens"):
            _drop_classifier(full)
            return full, True, full.num_features

        feature_info = getattr(full, "feature_info", None)
        if not feature_info:
            raise ValueError(f"timm model {model_name!r} has no feature_info, so no stage can be picked for tokens.")
        if not -len(feature_info) <= cfg.feature_stage < len(feature_info):
            raise ValueError(
                f"feature_stage={cfg.feature_stage} is out of range for {model_name!r}, "
                f"which has {len(feature_info)} stages (use -{len(feature_info)} to {len(feature_info) - 1})."
            )
        stage = cfg.feature_stage % len(feature_info)

        # The full model has just been checked against the checkpoint, so its own state dict feeds the
        # features model, which keeps only the layers up to the chosen stage.
        with _quiet_timm_loading():
            backbone = create(
                weights=full.state_dict() if state_dict is not None else None,
                features_only=True,
                out_indices=(stage,),
                **size_kwargs,
            )
        backbone.pretrained_cfg.pop("state_dict", None)
        _drop_unused_efficientnet_blocks(backbone)
        return backbone, False, backbone.feature_info.channels()[0]

    # ------------------------------------------------------------------ freezing

    def _freeze_parts(self) -> tuple[list[nn.Parameter], list[nn.Module], list[nn.Module]]:
        root = self.backbone
        # FeatureGetterNet (features_only ViT-style models) wraps the model as ``.model``.
        if [name for name, _ in root.named_children()] == ["model"]:
            root = root.model

        stem_modules: list[nn.Module] = []
        blocks: list[nn.Module] = []
        for name, child in root.named_children():
            if name in _BLOCK_CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)):
                blocks.extend(child.children())
            elif _BLOCK_NAME.match(name):
                blocks.append(child)
            elif not blocks:
                stem_modules.append(child)
        if not blocks:
            raise ValueError(
                f"Cannot find the blocks of {self.cfg.name!r} to freeze the first {self.cfg.freeze_blocks}. "
                f"Use freeze_blocks 0 or -1."
            )
        # Parameters held directly by the model, such as the class token and position embedding of a ViT.
        stem_parameters = list(root.parameters(recurse=False))
        return stem_parameters, stem_modules, blocks

    # ------------------------------------------------------------------ forward and helpers

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images into tokens.

        Args:
            pixel_values: (B, 3, H, W), normalized as ``data_config`` says.

        Returns:
            (B, N, dim) tokens; N grows with H and W.
        """
        if self.is_vit:
            tokens = self.backbone.forward_features(pixel_values)  # (B, prefix + patches, C)
            if tokens.ndim != 3:
                raise ValueError(f"{self.cfg.name!r} returned features of shape {tuple(tokens.shape)}, expected (B, N, C).")
            if not self.cfg.keep_prefix_tokens:
                tokens = tokens[:, self.backbone.num_prefix_tokens:]
            return self.norm(self.proj(tokens))

        return self.tokens_from_features(self.backbone(pixel_values)[0])

    def tokens_from_features(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Turn a CNN feature map (B, C, h, w) into tokens (B, h*w, dim) with 2-D positions.

        ``forward`` calls it on the backbone's output; with a frozen backbone the feature maps
        can be computed once and passed here directly.
        """
        height, width = feature_map.shape[-2:]
        tokens = feature_map.flatten(2).transpose(1, 2)  # (B, h*w, C)
        tokens = self.norm(self.proj(tokens))  # (B, h*w, dim)
        position = sincos_position_embedding_2d(height, width, self.dim).to(tokens.device, tokens.dtype)
        return tokens + position

    def num_tokens(self, img_size: int | None = None) -> int:
        """Return the number of output tokens for square images of ``img_size`` (default: the configured size)."""
        size = img_size or self.cfg.img_size
        if size not in self._num_tokens_cache:
            was_training = self.training
            parameter = next(self.parameters())
            self.eval()
            with torch.no_grad():
                probe = torch.zeros(1, 3, size, size, device=parameter.device, dtype=parameter.dtype)
                self._num_tokens_cache[size] = self.forward(probe).shape[1]
            self.train(was_training)
        return self._num_tokens_cache[size]

    def build_transform(self, is_training: bool, augment: bool = True) -> transforms.Compose:
        """Build the PIL-to-tensor preprocessing from timm's data config.

        The whole image is resized to ``img_size`` x ``img_size`` (aspect ratio not kept,
        nothing cropped). Training adds only color jitter when ``augment`` is true:
        random crops and flips are left out because they change answers about positions.

        Args:
            is_training: Build the training pipeline.
            augment: With ``is_training``, add color jitter; ``False`` gives the eval pipeline.
        """
        transform = create_transform(**self.data_config, is_training=False)
        if is_training and augment:
            steps = list(transform.transforms)
            to_tensor = next(i for i, step in enumerate(steps) if "ToTensor" in type(step).__name__)
            steps.insert(to_tensor, transforms.ColorJitter(COLOR_JITTER, COLOR_JITTER, COLOR_JITTER))
            transform = transforms.Compose(steps)
        return transform


def _drop_classifier(model: nn.Module) -> None:
    """Remove a ViT's classifier and pooling layers, which ``forward_features`` never uses."""
    model.reset_classifier(0)
    if isinstance(getattr(model, "fc_norm", None), nn.Module) and not isinstance(model.fc_norm, nn.Identity):
        model.fc_norm = nn.Identity()
    if getattr(model, "attn_pool", None) is not None:
        model.attn_pool = None


def _drop_unused_efficientnet_blocks(backbone: nn.Module) -> None:
    """Cut the blocks after the last returned stage, which timm's EfficientNetFeatures still runs."""
    from timm.models.efficientnet import EfficientNetFeatures

    if isinstance(backbone, EfficientNetFeatures) and backbone.feature_hooks is None:
        # NOTE: relies on EfficientNetFeatures' private ``_stage_out_idx`` (timm 1.0.31): stage s is the output of block s - 1.
        last_stage = max(backbone._stage_out_idx)
        backbone.blocks = backbone.blocks[:last_stage]
