"""Encoder-decoder stacks that fuse question and image tokens, as in MCAN.

Shape letters: I distinct images, B questions, T question tokens, N image tokens,
D fusion width, L latent slots.

``fusion.decoder`` selects which stream cross-attends to the other:

- ``image`` (MCAN's encoder-decoder, Yu et al., "Deep Modular Co-Attention Networks for
  Visual Question Answering", CVPR 2019): the question runs ``depth`` layers of
  self-attention and FFN; the image runs ``depth`` layers of self-attention,
  cross-attention to the final question stream, and FFN. Each image layer cross-attends
  to the question, so the image stream runs once per question.
- ``text``: the image runs ``depth`` layers of self-attention and FFN; the question runs
  ``depth`` layers of self-attention, cross-attention to the final image stream, and FFN.
  The image stream does not depend on the question, so it runs once per distinct image
  and is shared by all questions about that image. The cross-attention then attends over
  N image tokens, which is where DBA's packing pays off.

The attention backend comes from ``vqa.attention.build_attention``. With DBA, each stream
owns a learned initial latent (L, D). Every attention call returns the packed sequence C,
which becomes the latent of the next call in the same stream.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from vqa.attention import build_attention
from vqa.config import DECODERS, FUSION_ATTENTIONS, NORM_PLACEMENTS, FusionConfig

__all__ = ["FusionStack", "FeedForward"]

ATTENTION_KINDS = FUSION_ATTENTIONS


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class Residual(nn.Module):
    """Residual wrapper around one sublayer with pre- or post-LayerNorm.

    Pre-norm computes ``x + f(norm(x))``; post-norm computes ``norm(x + f(x))``.
    The sublayer may return ``(output, latent)``; the latent is passed through.
    """

    def __init__(self, dim: int, sublayer: nn.Module, dropout: float, norm: str):
        super().__init__()
        self.sublayer = sublayer
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.pre_norm = norm == "pre"

    def forward(self, x: torch.Tensor, **kwargs):
        inputs = self.norm(x) if self.pre_norm else x
        result = self.sublayer(inputs, **kwargs)
        out, latent = result if isinstance(result, tuple) else (result, None)
        x = x + self.drop(out)
        if not self.pre_norm:
            x = self.norm(x)
        return x, latent


class FusionLayer(nn.Module):
    """Self-attention, then cross-attention to the other stream when ``cross_options`` is given, then FFN."""

    def __init__(self, cfg: FusionConfig, self_options: dict, cross_options: Optional[dict]):
        super().__init__()
        self_attn = build_attention(cfg.attention, cfg.dim, cfg.num_heads, **self_options)
        ffn = FeedForward(cfg.dim, int(cfg.dim * cfg.ffn_ratio), cfg.dropout)
        self.self_attn = Residual(cfg.dim, self_attn, cfg.dropout, cfg.norm)
        self.cross_attn: Optional[Residual] = None
        if cross_options is not None:
            cross_attn = build_attention(cfg.attention, cfg.dim, cfg.num_heads, **cross_options)
            self.cross_attn = Residual(cfg.dim, cross_attn, cfg.dropout, cfg.norm)
        self.ffn = Residual(cfg.dim, ffn, cfg.dropout, cfg.norm)

    def forward(self, x, mask, latent, context=None, context_mask=None):
        x, latent = self.self_attn(x, x_mask=mask, latent=latent)
        if self.cross_attn is not None:
            x, latent = self.cross_attn(x, context=context, x_mask=mask, context_mask=context_mask, latent=latent)
        x, _ = self.ffn(x)
        return x, latent


def _stream_options(cfg: FusionConfig, context_len: int) -> dict:
    """Attention options for one stream; Linformer and static DBA packing need the key length they compress."""
    options = dict(cfg.attention_options)
    if cfg.attention == "linformer":
        options.setdefault("max_len", context_len)
    if cfg.attention == "dba":
        # The stack owns the initial latents and passes them to every call.
        options["learned_latent"] = False
        if options.get("static_packing"):
            options.setdefault("max_len", context_len)
    return options


class FusionStack(nn.Module):
    """Fuse question tokens (B, T, D) and image tokens (I, N, D).

    Args:
        cfg: stack width, depth, heads, norm placement, dropout, attention backend and
            which stream is the decoder.
        max_text_len: longest question in tokens (sizes Linformer's projections).
        max_image_tokens: image tokens per image (sizes Linformer's projections).
    """

    def __init__(self, cfg: FusionConfig, max_text_len: int, max_image_tokens: int):
        super().__init__()
        if cfg.attention not in ATTENTION_KINDS:
            raise ValueError(f"model.fusion.attention={cfg.attention!r} is not supported; choose one of {ATTENTION_KINDS}")
        if cfg.norm not in NORM_PLACEMENTS:
            raise ValueError(f"model.fusion.norm={cfg.norm!r} is not supported; choose one of {NORM_PLACEMENTS}")
        if cfg.depth < 1:
            raise ValueError(f"fusion.depth={cfg.depth} must be at least 1")
        if cfg.decoder not in DECODERS:
            raise ValueError(f"model.fusion.decoder={cfg.decoder!r} is not supported; choose one of {DECODERS}")

        # Options are sized by the sequence each call compresses: its own for self-attention,
        # the other stream for cross-attention.
        text_options = _stream_options(cfg, max_text_len)
        image_options = _stream_options(cfg, max_image_tokens)
        self.decoder = cfg.decoder
        text_cross = image_options if cfg.decoder == "text" else None
        image_cross = text_options if cfg.decoder == "image" else None
        self.text_layers = nn.ModuleList(FusionLayer(cfg, text_options, text_cross) for _ in range(cfg.depth))
        self.image_layers = nn.ModuleList(FusionLayer(cfg, image_options, image_cross) for _ in range(cfg.depth))
        self.pre_norm = cfg.norm == "pre"
        self.text_norm = nn.LayerNorm(cfg.dim) if self.pre_norm else nn.Identity()
        self.image_norm = nn.LayerNorm(cfg.dim) if self.pre_norm else nn.Identity()

        # Learned initial latents, one per stream; only DBA reads them.
        self.text_latent: Optional[nn.Parameter] = None
        self.image_latent: Optional[nn.Parameter] = None
        # Static packing reads no latent, so the stack keeps none.
        if cfg.attention == "dba" and not cfg.attention_options.get("static_packing", False):
            num_latents = int(cfg.attention_options.get("num_latents", 16))
            self.text_latent = nn.Parameter(torch.randn(num_latents, cfg.dim) * cfg.dim**-0.5)
            self.image_latent = nn.Parameter(torch.randn(num_latents, cfg.dim) * cfg.dim**-0.5)

    def forward(
        self,
        text: torch.Tensor,
        text_mask: Optional[torch.Tensor],
        image: torch.Tensor,
        image_mask: Optional[torch.Tensor] = None,
        image_index: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the fused text (B, T, D) and image (B, N, D) streams.

        Masks are boolean with True marking a real token; None means no padding.
        ``image_index`` (B,) gives the row of ``image`` for each question; None means
        question i belongs to image i. With ``decoder="text"`` the image layers run on the
        I distinct images before the rows are picked.
        """
        if self.decoder == "text":
            image, image_mask = self._run_image(image, image_mask)
            image, image_mask = _select(image, image_mask, image_index)
            text = self._run_text(text, text_mask, image, image_mask)
        else:
            image, image_mask = _select(image, image_mask, image_index)
            text = self._run_text(text, text_mask)
            image, image_mask = self._run_image(image, image_mask, text, text_mask)
        return text, image

    def _run_text(self, text, text_mask, context=None, context_mask=None) -> torch.Tensor:
        latent = self.text_latent
        for layer in self.text_layers:
            text, latent = layer(text, text_mask, latent, context, context_mask)
        return self.text_norm(text)

    def _run_image(self, image, image_mask, context=None, context_mask=None):
        latent = self.image_latent
        for layer in self.image_layers:
            image, latent = layer(image, image_mask, latent, context, context_mask)
        return self.image_norm(image), image_mask


def _select(image: torch.Tensor, image_mask: Optional[torch.Tensor], image_index: Optional[torch.Tensor]):
    """Pick the image row of every question; no index keeps the rows as they are."""
    if image_index is None:
        return image, image_mask
    image_index = image_index.to(image.device)
    image = image.index_select(0, image_index)
    if image_mask is not None:
        image_mask = image_mask.index_select(0, image_index)
    return image, image_mask
