"""Standard multi-head attention through `F.scaled_dot_product_attention`.

This is the exact O(N * M) baseline. PyTorch dispatches it to fused (flash or memory-efficient)
kernels on CPU and GPU when the inputs allow it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vqa.attention.masking import check_attention_inputs, to_sdpa_mask
from vqa.attention.options import check_dropout, check_head_split


class FullAttention(nn.Module):
    """Multi-head softmax attention over every context token.

    Args:
        dim: Model width D.
        num_heads: Number of heads H; must divide `dim`.
        dropout: Dropout probability on the attention weights (training only).
    """

    kind = "full"

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        check_head_split(dim, num_heads)
        check_dropout(dropout)
        self.dim = dim
        self.num_heads = num_heads
        self.dropout = dropout
        # Rows [0, D) are the query projection, rows [D, 3D) the key and value projections.
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, dropout={self.dropout}"

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        x_mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        latent: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from `x` to `context`, or to `x` itself when `context` is None.

        Args:
            x: Query tokens, (B, N, D).
            context: Context tokens, (B, M, D), or None for self-attention.
            x_mask: (B, N) bool, True at real tokens; the key mask in self-attention.
            context_mask: (B, M) bool, True at real context tokens.
            latent: Passed through unchanged, so the backends are interchangeable in a DBA stack.

        Returns:
            ``(out, latent)`` with out of shape (B, N, D). Outputs at padded query positions are
            finite but meaningless.
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

        # (B, N, D) -> (B, H, N, D/H)
        queries, keys, values = (
            t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in (queries, keys, values)
        )
        attended = sdpa_with_padding(queries, keys, values, key_mask, self.dropout if self.training else 0.0)
        out = attended.transpose(1, 2).flatten(-2)  # (B, N, D)
        return self.out_proj(out), latent


def sdpa_with_padding(
    queries: Tensor, keys: Tensor, values: Tensor, key_mask: Tensor | None, dropout: float
) -> Tensor:
    """Run scaled_dot_product_attention with a (B, M) key mask (True = real key).

    A batch item whose keys are all padding gets a zero result. The mask of such a row is opened
    before the call and the row is zeroed afterwards, so the output does not depend on how a given
    PyTorch backend treats fully masked rows (some return NaN).

    Args:
        queries: (B, H, N, K).
        keys: (B, H, M, K).
        values: (B, H, M, V).
        key_mask: (B, M) bool or None.
        dropout: Dropout probability on the attention weights.

    Returns:
        (B, H, N, V).
    """
    if key_mask is None:
        return F.scaled_dot_product_attention(queries, keys, values, dropout_p=dropout)
    has_keys = key_mask.any(dim=-1)  # (B,)
    safe_mask = key_mask | ~has_keys[:, None]
    attended = F.scaled_dot_product_attention(
        queries, keys, values, attn_mask=to_sdpa_mask(safe_mask), dropout_p=dropout
    )
    return attended * has_keys[:, None, None, None].to(attended.dtype)

