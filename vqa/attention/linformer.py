"""Linformer attention: a learned, input-independent projection of keys and values along the sequence.

Linformer (Wang et al., "Linformer: Self-Attention with Linear Complexity", arXiv 2006.04768)
multiplies the M keys and values by fixed learned matrices E, F of shape (k, N_max). The
compression is static: the same weights for every input, which is what DBA's input-dependent
packing is compared against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqa.attention.full import sdpa_with_padding
from vqa.attention.masking import check_attention_inputs
from vqa.attention.options import check_dropout, check_head_split, check_positive_int


class LinformerAttention(nn.Module):
    """Multi-head attention over k projected key/value slots.

    One pair of projections (E for keys, F for values) is shared by all heads. Padded context
    positions are zeroed before the projection, so they contribute nothing and appending padding
    leaves the result unchanged.

    Args:
        dim: Model width D.
        num_heads: Number of heads H; must divide `dim`.
        max_len: Longest context N_max the projections cover. Longer inputs raise ValueError.
        proj_len: Number k of projected key/value slots.
        dropout: Dropout probability on the attention weights (training only).
    """

    kind = "linformer"

    def __init__(
        self,
        dim: int,
        num_heads: int,
        max_len: int = 1024,
        proj_len: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_head_split(dim, num_heads)
        check_positive_int("max_len", max_len)
        check_positive_int("proj_len", proj_len)
        check_dropout(dropout)
        self.dim = dim
        self.num_heads = num_heads
        self.max_len = max_len
        self.proj_len = proj_len
        self.dropout = dropout
        self.in_proj = nn.Linear(dim, 3 * dim)
        # E and F of the Linformer paper, (k, N_max). The scale keeps a projected slot at the
        # magnitude of one key when N_max keys of similar size are summed.
        self.key_proj = nn.Parameter(torch.randn(proj_len, max_len) * max_len**-0.5)
        self.value_proj = nn.Parameter(torch.randn(proj_len, max_len) * max_len**-0.5)
        self.out_proj = nn.Linear(dim, dim)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, max_len={self.max_len}, "
            f"proj_len={self.proj_len}, dropout={self.dropout}"
        )

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        x_mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        latent: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from `x` to the k projected slots of `context` (or of `x` itself).

        Args:
            x: Query tokens, (B, N, D).
            context: Context tokens, (B, M, D) with M <= max_len, or None for self-attention.
            x_mask: (B, N) bool, True at real tokens; the key mask in self-attention.
            context_mask: (B, M) bool, True at real context tokens.
            latent: Passed through unchanged, so the backends are interchangeable in a DBA stack.

        Returns:
            ``(out, latent)`` with out of shape (B, N, D). Outputs at padded query positions are
            finite but meaningless.

        Raises:
            ValueError: If the key sequence is longer than `max_len`.
        """
        check_attention_inputs(x, context, x_mask, context_mask, self.dim)
        d = self.dim
        if context is None:
            queries, keys, values = self.in_proj(x).chunk(3, dim=-1)
            key_mask = x_mask
        else:
            weight, bias = self.in_proj.weight, self.in_proj.bias
            queries = F.linear(x, weight[:d], bias[:d])
            keys, values = F.linear(context, weight[d:], bias[d:]).chunk(2, dim=-1)
            key_mask = context_mask

        key_weights, value_weights = self._projections(keys.shape[1], key_mask)
        keys = torch.matmul(key_weights.to(keys.dtype), keys)  # (B or 1, k, D)
        values = torch.matmul(value_weights.to(values.dtype), values)

        # (B, N, D) -> (B, H, N, D/H); the projected keys and values become (B, H, k, D/H).
        queries = queries.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        keys, values = (
            t.expand(x.shape[0], -1, -1).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
            for t in (keys, values)
        )
        dropout = self.dropout if self.training else 0.0
        attended = sdpa_with_padding(queries, keys, values, None, dropout)
        out = attended.transpose(1, 2).flatten(-2)  # (B, N, D)
        return self.out_proj(out), latent

    @torch.no_grad()
    def packing_weights(
        self,
        x: Tensor,
        context: Tensor | None = None,
        x_mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        latent: Tensor | None = None,
    ) -> Tensor:
        """Return the key projection E applied to the context, as (B, H, k, M) fp32 weights.

        Takes the same arguments as `forward`. Columns of padded positions are zero. The weights
        depend only on the context length and padding, never on the token values.
        """
        check_attention_inputs(x, context, x_mask, context_mask, self.dim)
        source, key_mask = (x, x_mask) if context is None else (context, context_mask)
        key_weights, _ = self._projections(source.shape[1], key_mask)
        batch, heads = x.shape[0], self.num_heads
        return key_weights.float().unsqueeze(1).expand(batch, heads, -1, -1)

    def _projections(self, length: int, key_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Return E and F cut to `length` columns, (1, k, M), or (B, k, M) with padded columns zeroed."""
        if length > self.max_len:
            raise ValueError(
                f"sequence of {length} keys is longer than max_len={self.max_len} of this Linformer "
                f"layer; build it with max_len >= {length}"
            )
        key_weights = self.key_proj[:, :length].unsqueeze(0)
        value_weights = self.value_proj[:, :length].unsqueeze(0)
        if key_mask is not None:
            keep = key_mask[:, None, :].to(key_weights.dtype)  # (B, 1, M)
            key_weights = key_weights * keep
            value_weights = value_weights * keep
        return key_weights, value_weights
