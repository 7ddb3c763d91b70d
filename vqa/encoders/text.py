"""Text encoder: a Hugging Face ``AutoModel`` and its tokenizer, projected to the fusion width."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BatchEncoding, PretrainedConfig

from vqa.config import TextEncoderConfig
from vqa.encoders import pretrained as weights
from vqa.encoders.image import FreezableEncoder

__all__ = ["TextEncoder", "resolve_text_source"]

# Attribute paths of the transformer layer list in common encoder families
# (BERT/RoBERTa/MiniLM, DistilBERT, models with a flat ``layers`` list).
_LAYER_PATHS = ("encoder.layer", "encoder.layers", "transformer.layer", "layers", "layer")


def resolve_text_source(name: str) -> str:
    """Turn ``TextEncoderConfig.name`` into something ``from_pretrained`` can open.

    Args:
        name: A local model folder, ``"package:all-minilm-l6-v2"`` or a hub id.

    Returns:
        A local folder, or, when online, the hub id itself (transformers then
        downloads into the cache). Offline, a hub id becomes its cached snapshot folder.

    Raises:
        FileNotFoundError: ``name`` looks like a path and does not exist.
        WeightsNotCachedError: Offline, and the hub id is not in the cache.
    """
    if name.startswith(weights.PACKAGE_PREFIX):
        path = weights.resolve_package_path(name)
        if not path.is_dir():
            raise ValueError(f"{name!r} is not a text model folder, and text encoders accept 'package:all-minilm-l6-v2'.")
        return str(path)

    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if weights.looks_like_path(name):
        raise FileNotFoundError(
            f"Text model folder {name!r} not found. Fix the path, or use a hub id such as "
            f"'sentence-transformers/all-MiniLM-L6-v2' or 'package:all-minilm-l6-v2'."
        )
    if weights.is_offline():
        return str(weights.resolve_hub_snapshot(name))
    return name


def _model_class_accepts(config: PretrainedConfig, argument: str) -> bool:
    """Return whether the AutoModel class for ``config`` takes ``argument`` in its constructor."""
    model_class = AutoModel._model_mapping.get(type(config), None)
    return model_class is not None and argument in inspect.signature(model_class.__init__).parameters


class TextEncoder(FreezableEncoder):
    """Question tokens from a Hugging Face encoder, projected to the fusion width.

    The output keeps one vector per input token (``last_hidden_state``); padded
    positions hold values that the caller must mask with ``attention_mask``.

    Args:
        cfg: Model name, ``pretrained``, maximum question length, freezing, config overrides.
        dim: Fusion width D of the output tokens.
        load_weights: ``False`` builds the architecture with random weights whatever
            ``cfg.pretrained`` says, to load a checkpoint on top.
        local_dir: A folder written by ``save_support_files``; when given, the model
            config and tokenizer come from it instead of ``cfg.name``.

    Attributes:
        backbone: The ``transformers`` model (``lr_mult`` applies to it in ``param_groups``).
        tokenizer: The matching tokenizer.
    """

    def __init__(
        self, cfg: TextEncoderConfig, dim: int, load_weights: bool = True, local_dir: str | os.PathLike | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.dim = dim
        self.lr_mult = cfg.lr_mult

        if local_dir is not None:
            source = str(local_dir)
            if not Path(source, "config.json").is_file():
                raise FileNotFoundError(
                    f"{Path(source, 'config.json')} not found. local_dir must be a folder written by "
                    f"TextEncoder.save_support_files."
                )
            config = AutoConfig.from_pretrained(source)
        else:
            source = resolve_text_source(cfg.name)
            config = AutoConfig.from_pretrained(source, **dict(cfg.config_overrides))

        # The pooler output is never used, so models that can skip the pooler do.
        model_kwargs: dict[str, Any] = {}
        if _model_class_accepts(config, "add_pooling_layer"):
            model_kwargs["add_pooling_layer"] = False

        if load_weights and cfg.pretrained and local_dir is None:
            self.backbone, loading_info = AutoModel.from_pretrained(
                source, config=config, output_loading_info=True, **model_kwargs
            )
            missing = list(loading_info.get("missing_keys", [])) + list(loading_info.get("mismatched_keys", []))
            if missing:
                raise RuntimeError(
                    f"The weights in {source} do not fit the model built from its config: missing or mismatched "
                    f"{missing[:10]}. Remove shape-changing config_overrides, or set pretrained: false."
                )
        else:
            self.backbone = AutoModel.from_config(config, **model_kwargs)
        self.tokenizer = AutoTokenizer.from_pretrained(source)

        self.proj = nn.Linear(config.hidden_size, dim)
        self.norm = nn.LayerNorm(dim)
        # Backbone outputs keyed by the real token ids; filled only while the whole backbone is frozen.
        self._output_cache: dict[tuple[int, ...], torch.Tensor] | None = (
            {} if cfg.frozen_output_cache_size > 0 else None
        )
        self.freeze(cfg.freeze_blocks)

    def freeze(self, num_blocks: int) -> None:
        super().freeze(num_blocks)
        if self._output_cache is not None:
            self._output_cache.clear()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        # New backbone weights make stored outputs stale.
        if self._output_cache is not None:
            self._output_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _freeze_parts(self) -> tuple[list[nn.Parameter], list[nn.Module], list[nn.Module]]:
        embeddings = getattr(self.backbone, "embeddings", None)
        if embeddings is None:
            embeddings = self.backbone.get_input_embeddings()
        for path in _LAYER_PATHS:
            layers: Any = self.backbone
            for attribute in path.split("."):
                layers = getattr(layers, attribute, None)
            if isinstance(layers, (nn.ModuleList, nn.Sequential)):
                return [], [embeddings], list(layers)
        raise ValueError(
            f"Cannot find the layer list of {type(self.backbone).__name__} (tried {', '.join(_LAYER_PATHS)}) to "
            f"freeze the first {self.cfg.freeze_blocks} layers. Use freeze_blocks 0 or -1."
        )

    def tokenize(self, questions: list[str]) -> BatchEncoding:
        """Tokenize questions, truncated to ``cfg.max_length`` tokens and padded to the longest.

        Returns:
            A ``BatchEncoding`` with only ``input_ids`` and ``attention_mask``, each (B, T),
            so ``encoder(**batch)`` works. Questions are single segments, so token type ids are left out.
        """
        return self.tokenizer(
            list(questions),
            padding="longest",
            truncation=True,
            max_length=self.cfg.max_length,
            return_token_type_ids=False,
            return_tensors="pt",
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encode token ids.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T), 1 for real tokens and 0 for padding.

        Returns:
            (B, T, dim) token features.
        """
        if self._output_cache is not None and self._frozen_modules == [self.backbone]:
            hidden = self._cached_backbone_output(input_ids, attention_mask)
        else:
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        return self.norm(self.proj(hidden))  # (B, T, dim)

    def _cached_backbone_output(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the frozen backbone only on questions it has not seen; reuse the stored outputs otherwise.

        A fully frozen backbone stays in eval mode, so its output depends only on the real
        tokens of a question (padding is masked). Outputs at padded positions are zeros here.
        """
        mask = attention_mask.bool()
        keys = [tuple(ids[row_mask].tolist()) for ids, row_mask in zip(input_ids, mask)]
        missing = list(dict.fromkeys(key for key in keys if key not in self._output_cache))
        if missing:
            longest = max(len(key) for key in missing)
            ids = input_ids.new_full((len(missing), longest), self.tokenizer.pad_token_id or 0)
            new_mask = torch.zeros_like(ids)
            for row, key in enumerate(missing):
                ids[row, : len(key)] = torch.tensor(key, dtype=ids.dtype)
                new_mask[row, : len(key)] = 1
            with torch.no_grad():
                hidden = self.backbone(input_ids=ids, attention_mask=new_mask).last_hidden_state
            for row, key in enumerate(missing):
                if len(self._output_cache) >= self.cfg.frozen_output_cache_size:
                    self._output_cache.pop(next(iter(self._output_cache)))
                self._output_cache[key] = hidden[row, : len(key)].detach()

        batch, length = input_ids.shape
        first = self._output_cache[keys[0]]
        out = first.new_zeros(batch, length, first.shape[-1])
        for row, key in enumerate(keys):
            # Real tokens may sit anywhere (left or right padding); fill them in order.
            out[row, mask[row]] = self._output_cache[key]
        return out

    def save_support_files(self, directory: str | os.PathLike) -> None:
        """Write the tokenizer and the model config (``config.json``) into ``directory``.

        ``TextEncoder(cfg, dim, load_weights=False, local_dir=directory)`` then rebuilds
        the same architecture and tokenizer with no network and no original folder.
        Use a folder of its own, because the Hugging Face config is named ``config.json``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        self.backbone.config.save_pretrained(directory)
