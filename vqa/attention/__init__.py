"""Interchangeable attention backends behind one call signature.

Every module returned by `build_attention` is called as
``out, latent = attn(x, context=None, x_mask=None, context_mask=None, latent=None)`` with
x (B, N, D), context (B, M, D) or None for self-attention, and bool padding masks (B, N) / (B, M)
in which True marks a real token (the `attention_mask` convention of Hugging Face transformers).
"""

from __future__ import annotations

import inspect

from torch import nn

from vqa.attention.dba import DBAAttention
from vqa.attention.full import FullAttention
from vqa.attention.linformer import LinformerAttention
from vqa.attention.masking import masked_softmax, to_key_padding_mask, to_sdpa_mask

ATTENTION_KINDS: dict[str, type[nn.Module]] = {
    "dba": DBAAttention,
    "full": FullAttention,
    "linformer": LinformerAttention,
}

__all__ = [
    "ATTENTION_KINDS",
    "DBAAttention",
    "FullAttention",
    "LinformerAttention",
    "attention_options",
    "build_attention",
    "masked_softmax",
    "to_key_padding_mask",
    "to_sdpa_mask",
]


def attention_options(kind: str) -> dict[str, object]:
    """Return the options `build_attention` accepts for `kind`, mapped to their defaults.

    Raises:
        ValueError: If `kind` is not a known backend.
    """
    cls = _backend_class(kind)
    parameters = inspect.signature(cls.__init__).parameters
    return {
        name: parameter.default
        for name, parameter in parameters.items()
        if name not in ("self", "dim", "num_heads")
    }


def build_attention(kind: str, dim: int, num_heads: int, **options: object) -> nn.Module:
    """Build an attention backend by name.

    Args:
        kind: "dba", "full" or "linformer".
        dim: Model width D.
        num_heads: Number of heads H.
        **options: Backend options. dba: num_latents (16), reduced_dim (24), dropout (0.0),
            learned_latent (True).
            full: dropout (0.0). linformer: max_len (1024), proj_len (64), dropout (0.0).

    Returns:
        The module. It has a `kind` attribute, and DBA and Linformer have `packing_weights`.

    Raises:
        ValueError: On an unknown kind, an unknown option or an invalid option value.
    """
    valid = attention_options(kind)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for attention kind {kind!r}; valid options: "
            f"{sorted(valid)}"
        )
    return _backend_class(kind)(dim, num_heads, **options)


def _backend_class(kind: str) -> type[nn.Module]:
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; valid kinds: {sorted(ATTENTION_KINDS)}")
    return ATTENTION_KINDS[kind]
