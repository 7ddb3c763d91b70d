"""Dynamic Bilinear Low-Rank Attention (DBA), for self- and cross-attention.

DBA (Qin et al., arXiv 2211.16368) replaces the N x M score matrix with three small attentions:
the context is packed into L latent slots, the slots attend to each other, and each query token
reads the slots back. The cost is linear in N and M. Equations, shapes and provenance are in docs/dba.md.

Notation: D model width, H heads, L latent slots, r reduced width of packing and latent scores
(split into H heads of r / H), B batch, N query tokens, M context tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqa.attention.masking import check_attention_inputs, masked_softmax
from vqa.attention.options import check_dropout, check_head_split, check_positive_int


class DBAAttention(nn.Module):
    """DBA attention with a dynamic, input-dependent compression of the context into L slots.

    With ``static_packing=True`` the packing weights are instead learned logits over positions,
    (H * L, max_len), softmaxed over the real positions of each input: the same weights for every
    input, like Linformer's projection, with the rest of DBA unchanged. It is an ablation of DBA's
    dynamic packing. The latent passed in is then not used for packing, but the packed slots C are
    still returned as the next latent.

    Self-attention (``context=None``) follows the official DBA code: pack x with the latent,
    attend among the slots, unpack with weights computed from x. Cross-attention packs the context
    with the query stream's latent and unpacks with the query tokens' own weights, so the query side
    decides what is kept from the context. Both return the packed slots C as the next latent.

    Args:
        dim: Model width D.
        num_heads: Number of heads H; must divide `dim` and `reduced_dim`.
        num_latents: Number of latent slots L.
        reduced_dim: Width r of the packing and latent-attention queries and keys.
        dropout: Dropout probability on each of the three softmax outputs.
        learned_latent: Give the module a learned (L, D) latent of its own for calls with
            ``latent=None``. A stack that always passes the latent sets False, so that no
            parameter goes without a gradient (DistributedDataParallel requires that).
            With static packing no latent is read, so no latent is created.
        static_packing: Use input-independent packing weights (see above).
        max_len: Maximum context length M that the static packing logits cover. Only
            ``static_packing`` uses it; longer inputs raise ValueError.
    """

    kind = "dba"

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_latents: int = 16,
        reduced_dim: int = 24,
        dropout: float = 0.0,
        learned_latent: bool = True,
        static_packing: bool = False,
        max_len: int = 1024,
    ) -> None:
        super().__init__()
        check_head_split(dim, num_heads)
        check_positive_int("num_latents", num_latents)
        check_positive_int("reduced_dim", reduced_dim)
        if reduced_dim % num_heads:
            raise ValueError(
                f"reduced_dim={reduced_dim} is not divisible by num_heads={num_heads}; use a "
                f"multiple of {num_heads}, such as {num_heads * max(1, round(reduced_dim / num_heads))}"
            )
        check_dropout(dropout)
        check_positive_int("max_len", max_len)
        if not isinstance(static_packing, bool):
            raise ValueError(f"static_packing must be True or False, got {static_packing!r}")

        self.dim = dim
        self.num_heads = num_heads
        self.num_latents = num_latents
        self.reduced_dim = reduced_dim
        self.dropout = dropout
        self.static_packing = static_packing
        self.max_len = max_len
        self.score_scale = (reduced_dim // num_heads) ** -0.5
        # Width of the packing keys computed from the context; static packing reads none.
        self.key_width = 0 if static_packing else reduced_dim

        self.latent: nn.Parameter | None = None
        self.pack_query: nn.Linear | None = None
        self.pack_logits: nn.Parameter | None = None
        if static_packing:
            # Unit-scale random logits, so that the slots start from different mixtures of positions.
            self.pack_logits = nn.Parameter(torch.randn(num_heads * num_latents, max_len))
        else:
            # Learned latent used when the caller passes latent=None.
            if learned_latent:
                self.latent = nn.Parameter(torch.randn(num_latents, dim) * dim**-0.5)
            # Packing queries from the latent, at width r.
            self.pack_query = nn.Linear(dim, reduced_dim)
        # One matrix for everything computed from token features: packing keys (r, or none with
        # static packing) and values (D) from the context, unpacking logits (H * L) from the query
        # tokens. Self-attention runs it as a single GEMM. Cross-attention uses row slices, which
        # are contiguous.
        self.token_proj = nn.Linear(dim, self.key_width + dim + num_heads * num_latents)
        # Latent attention queries and keys (r each) and values (D) from the packed slots C.
        self.latent_qkv = nn.Linear(dim, 2 * reduced_dim + dim)
        self.latent_norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, dim)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, num_latents={self.num_latents}, "
            f"reduced_dim={self.reduced_dim}, dropout={self.dropout}, static_packing={self.static_packing}"
        )

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        x_mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        latent: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Attend from `x` to `context` (or to itself) through L latent slots.

        Args:
            x: Query tokens, (B, N, D).
            context: Context tokens, (B, M, D), or None for self-attention.
            x_mask: (B, N) bool, True at real tokens. It is the key mask of self-attention. In
                cross-attention each query token is unpacked on its own, so it is not needed there.
            context_mask: (B, M) bool, True at real context tokens.
            latent: Packing latent, (L, D) or (B, L, D): the caller's learned latent in the first
                layer, the previous layer's C later. None uses this module's own latent. Static
                packing does not read it.

        Returns:
            ``(out, next_latent)``: out (B, N, D) and the packed slots C (B, L, D). Outputs at padded
            query positions are finite but meaningless.
        """
        keys, values, key_mask, unpack_logits = self._project_tokens(x, context, x_mask, context_mask)
        weights = self._packing_weights(keys, key_mask, latent)
        weights = F.dropout(weights, self.dropout, self.training)
        packed = self._pack(weights, values)
        slots = self._latent_attention(packed)
        out = self._unpack(unpack_logits, slots)
        return self.out_proj(out), packed

    @torch.no_grad()
    def packing_weights(
        self,
        x: Tensor,
        context: Tensor | None = None,
        x_mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        latent: Tensor | None = None,
    ) -> Tensor:
        """Compute the packing (compression) weights that `forward` uses, without dropout.

        Takes the same arguments as `forward`. Returns fp32 weights of shape (B, H, L, M): a
        softmax over the M context positions (M = N in self-attention) with zeros at padding.
        With static packing they depend only on M and the padding, never on the token values.
        """
        keys, _, key_mask, _ = self._project_tokens(x, context, x_mask, context_mask)
        weights = self._packing_weights(keys, key_mask, latent)
        return weights.unflatten(1, (self.num_heads, self.num_latents))

    def _project_tokens(
        self,
        x: Tensor,
        context: Tensor | None,
        x_mask: Tensor | None,
        context_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """Project token features into packing keys, values and unpacking logits.

        Returns:
            keys (B, M, r), values (B, M, D), the (B, M) key mask or None, and unpacking logits
            (B, N, H * L). The first three come from the context, or from `x` in self-attention.
        """
        check_attention_inputs(x, context, x_mask, context_mask, self.dim)
        r, d = self.key_width, self.dim
        split = [r, d, self.num_heads * self.num_latents]
        if context is None:
            keys, values, unpack_logits = self.token_proj(x).split(split, dim=-1)
            return keys, values, x_mask, unpack_logits

        weight, bias = self.token_proj.weight, self.token_proj.bias
        keys, values = F.linear(context, weight[: r + d], bias[: r + d]).split(split[:2], dim=-1)
        unpack_logits = F.linear(x, weight[r + d :], bias[r + d :])
        return keys, values, context_mask, unpack_logits

    def _resolve_latent(self, latent: Tensor | None, batch: int) -> Tensor:
        if latent is None:
            if self.latent is None:
                raise ValueError(
                    "latent=None needs the module's own latent, but it was built with learned_latent=False; "
                    "pass the latent, or build it with learned_latent=True"
                )
            return self.latent
        expected = (self.num_latents, self.dim)
        if tuple(latent.shape) in (expected, (batch, *expected)):
            return latent
        raise ValueError(
            f"latent must have shape {expected} or ({batch}, {expected[0]}, {expected[1]}), got "
            f"{tuple(latent.shape)}; every DBA layer of a stack needs the same num_latents and dim"
        )

    def _packing_weights(self, keys: Tensor, key_mask: Tensor | None, latent: Tensor | None) -> Tensor:
        """Return the packing softmax over context positions, fp32 (B, H * L, M)."""
        if self.pack_logits is not None:
            return self._static_packing_weights(keys.shape[0], keys.shape[1], key_mask)
        batch = keys.shape[0]
        latent = self._resolve_latent(latent, batch)
        queries = self.pack_query(latent) * self.score_scale  # (L, r) or (B, L, r)
        # Per-head scores as one GEMM against all r key features: a block-diagonal query matrix
        # (H * L, r) zeroes the other heads' features. This costs H times the per-head score FLOPs,
        # which are small because r is small, and yields (B, H * L, M) with no head permutes.
        queries = block_diagonal_heads(queries, self.num_heads)
        if queries.dim() == 2:
            queries = queries.expand(batch, -1, -1)
        scores = torch.bmm(queries, keys.transpose(1, 2))  # (B, H * L, M)
        mask = None if key_mask is None else key_mask[:, None, :]
        return masked_softmax(scores, mask, dim=-1)

    def _static_packing_weights(self, batch: int, length: int, key_mask: Tensor | None) -> Tensor:
        """Return the learned logits cut to `length` positions, softmaxed over real ones, fp32 (B, H * L, M)."""
        if length > self.max_len:
            raise ValueError(
                f"sequence of {length} keys is longer than max_len={self.max_len} of this DBA layer's "
                f"static packing; build it with max_len >= {length}"
            )
        logits = self.pack_logits[:, :length].unsqueeze(0).expand(batch, -1, -1)  # (B, H * L, M)
        mask = None if key_mask is None else key_mask[:, None, :]
        return masked_softmax(logits, mask, dim=-1)

    def _pack(self, weights: Tensor, values: Tensor) -> Tensor:
        """Return the packed slots C (B, L, D) from weights (B, H * L, M) and values (B, M, D)."""
        batch, context_length, _ = values.shape
        heads, latents = self.num_heads, self.num_latents
        # (B, M, D) -> (B * H, M, D / H). This is a copy unless B == 1.
        values = values.unflatten(-1, (heads, -1)).transpose(1, 2).reshape(batch * heads, context_length, -1)
        weights = weights.to(values.dtype).view(batch * heads, latents, context_length)
        packed = torch.bmm(weights, values)  # (B * H, L, D / H)
        return packed.view(batch, heads, latents, -1).transpose(1, 2).reshape(batch, latents, self.dim)

    def _latent_attention(self, packed: Tensor) -> Tensor:
        """Return Z (B, L, D): attention among the L slots, then LayerNorm over the merged heads."""
        r, heads = self.reduced_dim, self.num_heads
        queries, keys, values = self.latent_qkv(packed).split([r, r, self.dim], dim=-1)
        queries = queries.unflatten(-1, (heads, -1)) * self.score_scale  # (B, L, H, r / H)
        keys = keys.unflatten(-1, (heads, -1))
        values = values.unflatten(-1, (heads, -1))  # (B, L, H, D / H)
        scores = torch.einsum("blhk,bshk->bhls", queries, keys)  # (B, H, L, L)
        weights = F.dropout(masked_softmax(scores, None), self.dropout, self.training)
        slots = torch.einsum("bhls,bshd->blhd", weights.to(values.dtype), values)
        return self.latent_norm(slots.flatten(-2))

    def _unpack(self, unpack_logits: Tensor, slots: Tensor) -> Tensor:
        """Return the pre-projection output (B, N, D): each token's weighted sum of the slots Z."""
        batch, length, _ = unpack_logits.shape
        heads, latents = self.num_heads, self.num_latents
        # Softmax over the L slots, per token and head: (B, N, H, L).
        weights = masked_softmax(unpack_logits.unflatten(-1, (heads, latents)), None)
        weights = F.dropout(weights, self.dropout, self.training).to(slots.dtype)
        # (B, N, H, L) -> (B * H, N, L). This is a copy unless B == 1.
        weights = weights.transpose(1, 2).reshape(batch * heads, length, latents)
        slots = slots.unflatten(-1, (heads, -1)).transpose(1, 2).reshape(batch * heads, latents, -1)
        out = torch.bmm(weights, slots)  # (B * H, N, D / H)
        return out.view(batch, heads, length, -1).transpose(1, 2).reshape(batch, length, self.dim)


def block_diagonal_heads(queries: Tensor, num_heads: int) -> Tensor:
    """Spread per-head queries over a block-diagonal matrix.

    Args:
        queries: (..., L, r), whose last dim contains H heads of r / H features.
        num_heads: H.

    Returns:
        (..., H * L, r) where row h * L + l contains head h of query l in columns of head h and zeros
        elsewhere, so multiplying by keys (r, M) gives every head's scores stacked along dim -2.
    """
    *lead, latents, width = queries.shape
    eye = torch.eye(num_heads, dtype=queries.dtype, device=queries.device)
    heads = queries.unflatten(-1, (num_heads, width // num_heads))  # (..., L, H, r / H)
    spread = heads.unsqueeze(-4) * eye[:, None, :, None]  # (..., H, L, H, r / H)
    return spread.reshape(*lead, num_heads * latents, width)

