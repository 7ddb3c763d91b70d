"""Padding masks, input checks and an fp32 masked softmax shared by the attention backends.

Convention used everywhere in this package: a padding mask is a bool tensor of shape (B, N) in
which True marks a real token and False marks padding, the same meaning as the `attention_mask`
of Hugging Face transformers. PyTorch's own attention calls read bool masks differently, so the
helpers below convert at each call:

* `F.scaled_dot_product_attention(attn_mask=...)`: True means "takes part in attention", so the
  key mask only needs broadcasting to (B, 1, 1, M) (`to_sdpa_mask`).
* `nn.MultiheadAttention(key_padding_mask=...)`: True means "ignore this key", so the mask is
  inverted (`to_key_padding_mask`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_padding_mask(mask: Tensor | None, batch: int, length: int, name: str) -> Tensor | None:
    """Validate a (B, N) bool padding mask and return it unchanged.

    Args:
        mask: Bool tensor with True at real tokens, or None for no padding.
        batch: Expected batch size B.
        length: Expected sequence length N.
        name: Argument name used in error messages.

    Raises:
        TypeError: If the mask is not a bool tensor.
        ValueError: If its shape is not (batch, length).
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(
            f"{name} must be a bool tensor with True at real tokens, got {got}; "
            f"convert an integer attention_mask with `{name}.bool()`"
        )
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"{name} must have shape ({batch}, {length}), got {tuple(mask.shape)}")
    return mask


def check_attention_inputs(
    x: Tensor,
    context: Tensor | None,
    x_mask: Tensor | None,
    context_mask: Tensor | None,
    dim: int,
) -> None:
    """Validate the shapes of the arguments shared by every attention backend.

    Args:
        x: Query stream, (B, N, D).
        context: Key/value stream, (B, M, D), or None for self-attention.
        x_mask: (B, N) bool padding mask of `x`, or None.
        context_mask: (B, M) bool padding mask of `context`, or None.
        dim: Model width D that the module was built with.

    Raises:
        ValueError: On a shape mismatch, or a context mask given without a context.
    """
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"x must have shape (batch, length, {dim}), got {tuple(x.shape)}")
    batch, length, _ = x.shape
    check_padding_mask(x_mask, batch, length, "x_mask")
    if context is None:
        if context_mask is not None:
            raise ValueError(
                "context_mask was given without a context; for self-attention pass the padding "
                "mask as x_mask"
            )
        return
    if context.dim() != 3 or context.shape[0] != batch or context.shape[-1] != dim:
        raise ValueError(
            f"context must have shape ({batch}, context_length, {dim}), got {tuple(context.shape)}"
        )
    check_padding_mask(context_mask, batch, context.shape[1], "context_mask")


def masked_softmax(logits: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax in fp32 that gives masked entries exactly zero weight.

    The logits are cast to fp32 before masking, so a bf16 or fp16 input under autocast cannot
    overflow to -inf and turn a row into NaN. A row whose entries are all masked returns all zeros
    (finite values and gradients), so a fully padded sequence contributes nothing.

    Args:
        logits: Scores of any shape and floating dtype.
        mask: Bool tensor broadcastable to `logits`, True where an entry may receive weight, or
            None to skip masking.
        dim: Dimension to normalize over.

    Returns:
        fp32 weights with the shape of `logits`.
    """
    logits = logits.float()
    if mask is None:
        return torch.softmax(logits, dim=dim)
    # A finite fill keeps fully masked rows free of NaN (they become uniform) and exp() of the
    # fill relative to any real logit underflows to exactly 0. Multiplying by the mask then zeroes
    # the fully masked rows as well.
    filled = logits.masked_fill(~mask, torch.finfo(torch.float32).min)
    return torch.softmax(filled, dim=dim) * mask


def to_sdpa_mask(key_mask: Tensor | None) -> Tensor | None:
    """Convert a (B, M) key mask to the (B, 1, 1, M) bool `attn_mask` of scaled_dot_product_attention.

    Both use True for keys that take part in attention, so only the shape changes.
    """
    if key_mask is None:
        return None
    return key_mask[:, None, None, :]


def to_key_padding_mask(key_mask: Tensor | None) -> Tensor | None:
    """Convert a (B, M) key mask to `nn.MultiheadAttention`'s `key_padding_mask` (True = ignore)."""
    if key_mask is None:
        return None
    return ~key_mask
