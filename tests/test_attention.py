"""Tests of the attention backends in vqa.attention (tiny sizes, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqa.attention import (
    DBAAttention,
    FullAttention,
    LinformerAttention,
    build_attention,
    masked_softmax,
    to_key_padding_mask,
    to_sdpa_mask,
)

KINDS = ["dba", "full", "linformer"]
DIM, HEADS = 16, 2
OPTIONS = {
    "dba": {"num_latents": 4, "reduced_dim": 8},
    "full": {},
    "linformer": {"max_len": 32, "proj_len": 6},
}


def make(kind: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    module = build_attention(kind, DIM, HEADS, **{**OPTIONS[kind], **overrides})
    return module.eval()


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, DIM, generator=generator)


def pad(x: torch.Tensor, extra: int, seed: int = 7) -> torch.Tensor:
    """Append `extra` random (not zero) padding tokens, so a leak would show."""
    return torch.cat([x, tokens(x.shape[0], extra, seed=seed) * 3.0], dim=1)


def real_mask(batch: int, real: int, total: int) -> torch.Tensor:
    mask = torch.zeros(batch, total, dtype=torch.bool)
    mask[:, :real] = True
    return mask


# --- shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_self_attention_shapes(kind):
    attn = make(kind)
    x = tokens(3, 5)
    out, latent = attn(x)
    assert attn.kind == kind
    assert out.shape == x.shape
    if kind == "dba":
        assert latent.shape == (3, 4, DIM)
    else:
        assert latent is None


@pytest.mark.parametrize("kind", KINDS)
def test_cross_attention_shapes(kind):
    attn = make(kind)
    x, context = tokens(3, 5), tokens(3, 9, seed=2)
    out, latent = attn(x, context)
    assert out.shape == x.shape
    if kind == "dba":
        assert latent.shape == (3, 4, DIM)
    else:
        assert latent is None


@pytest.mark.parametrize("kind", ["full", "linformer"])
def test_baselines_pass_latent_through(kind):
    attn = make(kind)
    given = torch.randn(3, 4, DIM)
    _, latent = attn(tokens(3, 5), latent=given)
    assert latent is given


# --- padding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_self_attention_padding_invariance(kind):
    attn = make(kind)
    x = tokens(2, 6)
    reference, reference_latent = attn(x)

    padded = pad(x, 5)
    out, latent = attn(padded, x_mask=real_mask(2, 6, 11))
    torch.testing.assert_close(out[:, :6], reference, atol=1e-5, rtol=0)
    if kind == "dba":
        torch.testing.assert_close(latent, reference_latent, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_cross_attention_padding_invariance(kind):
    attn = make(kind)
    x, context = tokens(2, 4), tokens(2, 7, seed=2)
    reference, reference_latent = attn(x, context)

    out, latent = attn(
        pad(x, 3, seed=8),
        pad(context, 6),
        x_mask=real_mask(2, 4, 7),
        context_mask=real_mask(2, 7, 13),
    )
    torch.testing.assert_close(out[:, :4], reference, atol=1e-5, rtol=0)
    if kind == "dba":
        torch.testing.assert_close(latent, reference_latent, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_padded_keys_get_zero_gradient(kind):
    attn = make(kind)
    x = tokens(2, 3)
    context = tokens(2, 8, seed=2).requires_grad_()
    context_mask = torch.tensor([[True] * 5 + [False] * 3, [True] * 2 + [False] * 6])

    out, latent = attn(x, context, context_mask=context_mask)
    loss = out.square().sum() + (0 if latent is None else latent.square().sum())
    loss.backward()

    padded_grad = context.grad[~context_mask]
    real_grad = context.grad[context_mask]
    assert torch.count_nonzero(padded_grad) == 0
    assert real_grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_all_padding_row_is_finite(kind):
    attn = make(kind)
    x = tokens(2, 3).requires_grad_()
    context = tokens(2, 5, seed=2).requires_grad_()
    context_mask = torch.ones(2, 5, dtype=torch.bool)
    context_mask[1] = False

    out, latent = attn(x, context, context_mask=context_mask)
    loss = out.sum() + (0 if latent is None else latent.sum())
    loss.backward()

    assert torch.isfinite(out).all()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(context.grad).all()
    assert torch.count_nonzero(context.grad[1]) == 0
    for name, parameter in attn.named_parameters():
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), name

    # The empty row's output must not depend on what its padding holds.
    changed = context.detach().clone()
    changed[1] = 100.0
    out_changed, _ = attn(x.detach(), changed, context_mask=context_mask)
    torch.testing.assert_close(out_changed[1], out[1].detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_all_padding_self_attention_row(kind):
    attn = make(kind)
    x = tokens(2, 4)
    x_mask = torch.tensor([[True, True, False, False], [False] * 4])
    out, _ = attn(x, x_mask=x_mask)
    assert torch.isfinite(out).all()


def test_dba_packing_weights_zero_at_padding():
    attn = make("dba")
    x, context = tokens(2, 3), tokens(2, 6, seed=2)
    context_mask = real_mask(2, 4, 6)
    weights = attn.packing_weights(x, context, context_mask=context_mask)
    assert weights.shape == (2, HEADS, 4, 6)
    assert torch.equal(weights[..., 4:], torch.zeros_like(weights[..., 4:]))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, HEADS, 4))


# --- mask conventions and fp32 softmax -----------------------------------------------------------


def test_masked_softmax_zero_weight_and_empty_row():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    weights = masked_softmax(logits, mask)
    weights.sum().backward()

    assert weights[0, 1] == 0
    torch.testing.assert_close(weights[0].sum(), torch.tensor(1.0))
    assert torch.equal(weights[1], torch.zeros(3))
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_masked_softmax_half_precision_logits(dtype):
    # Logits near the dtype's maximum: adding its minimum as a mask would overflow.
    big = torch.finfo(dtype).max
    logits = torch.tensor([[big, -big, big / 2], [-big, -big, -big]], dtype=dtype)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    weights = masked_softmax(logits, mask)
    assert weights.dtype == torch.float32
    assert torch.isfinite(weights).all()
    assert weights[0, 1] == 0
    assert weights[1, 2] == 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))


def test_mask_conversions_match_pytorch_conventions():
    torch.manual_seed(0)
    keep = torch.tensor([[True, True, False, True]])
    query, key = torch.randn(1, 2, 8), torch.randn(1, 4, 8)

    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    _, mha_weights = mha(query, key, key, key_padding_mask=to_key_padding_mask(keep))
    assert torch.equal(mha_weights[..., 2], torch.zeros(1, 2))
    assert (mha_weights[..., [0, 1, 3]] > 0).all()

    value = torch.eye(4).unsqueeze(0)  # output row = attention weights
    sdpa = F.scaled_dot_product_attention(
        query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1), attn_mask=to_sdpa_mask(keep)
    )
    assert torch.equal(sdpa[..., 2], torch.zeros(1, 1, 2))
    assert (sdpa[..., [0, 1, 3]] > 0).all()


# --- numerics against references -----------------------------------------------------------------


def reference_dba(attn: DBAAttention, x, context, context_mask, latent):
    """DBA written head by head from its equations, without the fused kernels."""
    d, r, heads, latents = attn.dim, attn.reduced_dim, attn.num_heads, attn.num_latents
    weight, bias = attn.token_proj.weight, attn.token_proj.bias
    source = x if context is None else context
    keys = source @ weight[:r].T + bias[:r]
    values = source @ weight[r : r + d].T + bias[r : r + d]
    unpack_logits = x @ weight[r + d :].T + bias[r + d :]
    queries = attn.pack_query(latent)
    qkv_weight, qkv_bias = attn.latent_qkv.weight, attn.latent_qkv.bias
    rh, dh = r // heads, d // heads
    outputs, packs = [], []
    for b in range(x.shape[0]):
        packed_heads = []
        for h in range(heads):
            scores = queries[:, h * rh : (h + 1) * rh] @ keys[b, :, h * rh : (h + 1) * rh].T
            scores = scores / math.sqrt(rh)
            if context_mask is not None:
                scores = scores.masked_fill(~context_mask[b], float("-inf"))
            packed_heads.append(scores.softmax(-1) @ values[b, :, h * dh : (h + 1) * dh])
        packed = torch.cat(packed_heads, dim=-1)  # (L, D)
        lq = packed @ qkv_weight[:r].T + qkv_bias[:r]
        lk = packed @ qkv_weight[r : 2 * r].T + qkv_bias[r : 2 * r]
        lv = packed @ qkv_weight[2 * r :].T + qkv_bias[2 * r :]
        slot_heads = []
        for h in range(heads):
            scores = lq[:, h * rh : (h + 1) * rh] @ lk[:, h * rh : (h + 1) * rh].T / math.sqrt(rh)
            slot_heads.append(scores.softmax(-1) @ lv[:, h * dh : (h + 1) * dh])
        slots = attn.latent_norm(torch.cat(slot_heads, dim=-1))
        out_heads = []
        for h in range(heads):
            unpack = unpack_logits[b, :, h * latents : (h + 1) * latents].softmax(-1)  # (N, L)
            out_heads.append(unpack @ slots[:, h * dh : (h + 1) * dh])
        outputs.append(attn.out_proj(torch.cat(out_heads, dim=-1)))
        packs.append(packed)
    return torch.stack(outputs), torch.stack(packs)


@pytest.mark.parametrize("cross", [False, True])
def test_dba_matches_per_head_reference(cross):
    attn = make("dba")
    x = tokens(2, 5)
    context = tokens(2, 7, seed=2) if cross else None
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])[:, : 7 if cross else 5]
    kwargs = {"context_mask": mask} if cross else {"x_mask": mask}
    out, packed = attn(x, context, **kwargs)
    expected_out, expected_packed = reference_dba(attn, x, context, mask, attn.latent)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed, expected_packed, atol=1e-5, rtol=1e-5)


def test_full_matches_naive_softmax_attention():
    attn = make("full")
    x, context = tokens(2, 3), tokens(2, 5, seed=2)
    mask = torch.tensor([[True] * 5, [True, False, True, False, False]])
    out, _ = attn(x, context, context_mask=mask)

    d, dh = DIM, DIM // HEADS
    weight, bias = attn.in_proj.weight, attn.in_proj.bias
    q = (x @ weight[:d].T + bias[:d]).unflatten(-1, (HEADS, dh)).transpose(1, 2)
    k = (context @ weight[d : 2 * d].T + bias[d : 2 * d]).unflatten(-1, (HEADS, dh)).transpose(1, 2)
    v = (context @ weight[2 * d :].T + bias[2 * d :]).unflatten(-1, (HEADS, dh)).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(dh)).masked_fill(~mask[:, None, None], float("-inf"))
    expected = attn.out_proj((scores.softmax(-1) @ v).transpose(1, 2).flatten(-2))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# --- gradients, autocast, dropout ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cross", [False, True])
def test_gradients_reach_every_parameter(kind, cross):
    attn = make(kind).train()
    x = tokens(2, 5)
    context = tokens(2, 6, seed=2) if cross else None
    out, latent = attn(x, context)
    loss = out.square().sum() + (0 if latent is None else latent.square().sum())
    loss.backward()
    for name, parameter in attn.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_outputs_finite(kind, dtype):
    attn = make(kind)
    x = tokens(2, 5) * 50.0
    context = tokens(2, 6, seed=2) * 50.0
    context_mask = torch.tensor([[True] * 4 + [False] * 2, [False] * 6])
    with torch.autocast("cpu", dtype=dtype):
        out, latent = attn(x, context, context_mask=context_mask)
        self_out, _ = attn(x, x_mask=context_mask[:, :5])
    assert torch.isfinite(out.float()).all()
    assert torch.isfinite(self_out.float()).all()
    if kind == "dba":
        assert torch.isfinite(latent.float()).all()
        weights = attn.packing_weights(x, context, context_mask=context_mask)
        assert torch.count_nonzero(weights[0, ..., 4:]) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_dropout_only_in_training(kind):
    attn = make(kind, dropout=0.5)
    x = tokens(2, 6)
    first, _ = attn(x)
    second, _ = attn(x)
    torch.testing.assert_close(first, second, atol=0, rtol=0)

    attn.train()
    torch.manual_seed(1)
    third, _ = attn(x)
    assert not torch.allclose(first, third)


# --- dynamic vs static compression, latent chaining ---------------------------------------------


def test_dba_packing_weights_depend_on_input():
    attn = make("dba")
    x = tokens(2, 6)
    weights = attn.packing_weights(x)
    other = attn.packing_weights(tokens(2, 6, seed=3))
    assert weights.shape == (2, HEADS, 4, 6)
    assert (weights - other).abs().max() > 1e-3


def test_linformer_packing_weights_ignore_input():
    attn = make("linformer")
    weights = attn.packing_weights(tokens(2, 6))
    other = attn.packing_weights(tokens(2, 6, seed=3))
    assert weights.shape == (2, HEADS, 6, 6)
    assert torch.equal(weights, other)


def test_dba_static_packing_ignores_input():
    attn = make("dba", static_packing=True, max_len=8)
    weights = attn.packing_weights(tokens(2, 6))
    other = attn.packing_weights(tokens(2, 6, seed=3), latent=torch.randn(4, DIM))
    assert weights.shape == (2, HEADS, 4, 6)
    assert torch.equal(weights, other)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, HEADS, 4))
    # Different slots pack different mixtures of positions.
    assert (weights[0, 0, 0] - weights[0, 0, 1]).abs().max() > 1e-3


def test_dba_static_packing_masks_padding():
    attn = make("dba", static_packing=True, max_len=8)
    x, context = tokens(2, 5), tokens(2, 4, seed=2)
    context_mask = torch.tensor([[True, True, True, False], [True] * 4])
    weights = attn.packing_weights(x, pad(context, 2), context_mask=torch.cat(
        [context_mask, torch.zeros(2, 2, dtype=torch.bool)], dim=1))
    assert torch.count_nonzero(weights[0, ..., 3:]) == 0
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, HEADS, 4))

    out, _ = attn(x, context, context_mask=context_mask)
    padded_out, _ = attn(x, pad(context, 2), context_mask=torch.cat(
        [context_mask, torch.zeros(2, 2, dtype=torch.bool)], dim=1))
    torch.testing.assert_close(out, padded_out)


def test_dba_static_packing_has_no_packing_queries():
    dynamic = make("dba")
    static = make("dba", static_packing=True, max_len=8)
    assert static.pack_query is None
    assert static.latent is None
    assert static.pack_logits.shape == (HEADS * 4, 8)
    assert static.token_proj.out_features == dynamic.token_proj.out_features - 8  # no r = 8 keys

    x = tokens(2, 6)
    out, latent = static(x)
    (out.square().sum() + latent.square().sum()).backward()
    assert static.pack_logits.grad is not None
    assert static.pack_logits.grad[:, :6].abs().sum() > 0
    assert torch.count_nonzero(static.pack_logits.grad[:, 6:]) == 0


def test_dba_static_packing_rejects_long_context():
    attn = make("dba", static_packing=True, max_len=4)
    with pytest.raises(ValueError, match="max_len=4"):
        attn(tokens(2, 6))


def test_fusion_stack_static_packing_sizes_logits():
    from vqa.config import FusionConfig
    from vqa.fusion import FusionStack

    cfg = FusionConfig(
        attention="dba", dim=DIM, num_heads=HEADS, depth=1, dropout=0.0,
        attention_options={"num_latents": 4, "reduced_dim": 8, "static_packing": True},
    )
    stack = FusionStack(cfg, max_text_len=5, max_image_tokens=9)
    assert stack.text_latent is None
    assert stack.image_layers[0].self_attn.sublayer.pack_logits.shape == (HEADS * 4, 9)
    assert stack.image_layers[0].cross_attn.sublayer.pack_logits.shape == (HEADS * 4, 5)
    text, image = stack(tokens(2, 5), None, tokens(2, 9, seed=2))
    assert image.shape == (2, 9, DIM)
    assert torch.isfinite(text).all()


def test_dba_latent_chaining_across_layers():
    torch.manual_seed(0)
    first = DBAAttention(DIM, HEADS, num_latents=4, reduced_dim=8)
    second = DBAAttention(DIM, HEADS, num_latents=4, reduced_dim=8)
    stack_latent = nn.Parameter(torch.randn(4, DIM))  # owned by the caller, (L, D)
    x = tokens(2, 5) * 4.0

    hidden, latent = first(x, latent=stack_latent)
    out, next_latent = second(hidden, latent=latent)
    assert latent.shape == (2, 4, DIM)
    assert next_latent.shape == (2, 4, DIM)

    # The second layer really packs with the chained latent, not its own.
    chained_weights = second.packing_weights(hidden, latent=latent)
    own_weights = second.packing_weights(hidden)
    assert (chained_weights - own_weights).abs().max() > 1e-3

    # Gradients flow back through the chained latent into the caller's latent.
    (out.square().sum() + next_latent.square().sum()).backward()
    assert stack_latent.grad is not None
    assert stack_latent.grad.abs().sum() > 0
    assert first.latent.grad is None
    assert second.latent.grad is None


def test_dba_batched_latent_matches_shared_latent():
    attn = make("dba")
    x = tokens(3, 5)
    shared = torch.randn(4, DIM)
    out_shared, _ = attn(x, latent=shared)
    out_batched, _ = attn(x, latent=shared.expand(3, -1, -1).clone())
    torch.testing.assert_close(out_shared, out_batched, atol=1e-6, rtol=1e-6)


# --- error messages -----------------------------------------------------------------------------


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ValueError, match=r"unknown attention kind 'flash'.*'dba', 'full', 'linformer'"):
        build_attention("flash", DIM, HEADS)


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("dba", {"num_latent": 8}, r"unknown option\(s\) \['num_latent'\].*num_latents"),
        ("full", {"num_latents": 8}, r"unknown option\(s\) \['num_latents'\] for attention kind 'full'"),
        ("dba", {"reduced_dim": 9}, r"reduced_dim=9 is not divisible by num_heads=2"),
        ("dba", {"num_latents": 0}, r"num_latents must be a positive int, got 0"),
        ("dba", {"dropout": 1.5}, r"dropout must be a float in \[0, 1\), got 1.5"),
        ("linformer", {"proj_len": -1}, r"proj_len must be a positive int, got -1"),
        ("full", {"dropout": "0.1"}, r"dropout must be a float in \[0, 1\), got '0.1'"),
    ],
)
def test_bad_options_raise_clear_errors(kind, options, message):
    with pytest.raises(ValueError, match=message):
        build_attention(kind, DIM, HEADS, **options)


@pytest.mark.parametrize("kind", KINDS)
def test_dim_not_divisible_by_heads(kind):
    with pytest.raises(ValueError, match=r"dim=10 is not divisible by num_heads=4"):
        build_attention(kind, 10, 4)


def test_linformer_rejects_long_input():
    attn = make("linformer")
    with pytest.raises(ValueError, match=r"40 keys is longer than max_len=32.*max_len >= 40"):
        attn(tokens(1, 40))


def test_dba_rejects_wrong_latent_shape():
    attn = make("dba")
    with pytest.raises(ValueError, match=r"latent must have shape \(4, 16\) or \(2, 4, 16\), got \(8, 16\)"):
        attn(tokens(2, 5), latent=torch.randn(8, DIM))


@pytest.mark.parametrize("kind", KINDS)
def test_bad_masks_raise(kind):
    attn = make(kind)
    x = tokens(2, 5)
    with pytest.raises(TypeError, match=r"x_mask must be a bool tensor.*torch.int64"):
        attn(x, x_mask=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"context_mask must have shape \(2, 6\), got \(2, 5\)"):
        attn(x, tokens(2, 6), context_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"context_mask was given without a context"):
        attn(x, context_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, length, 16\)"):
        attn(torch.randn(2, 5, 8))


def test_linformer_class_is_exported():
    assert isinstance(make("linformer"), LinformerAttention)
    assert isinstance(make("full"), FullAttention)


# --- benchmark helpers --------------------------------------------------------------------------


def test_benchmark_records_and_report():
    from vqa.attention.benchmark import BenchConfig, attention_flops, run_benchmark
    from vqa.attention.report import format_report

    config = BenchConfig(
        lengths=[16, 32], batch_tokens=32, dim=16, heads=2, latents=4, reduced_dim=8,
        repeats=1, warmup=0, max_full_length=16, matmul_size=32,
    )
    results = run_benchmark(config, log=lambda line: None)
    points = {(m.backend, m.batch, m.length) for m in results}
    assert ("full", 1, 32) not in points  # above max_full_length
    assert ("dba", 2, 16) in points
    assert ("dba", 1, 32) in points

    record = results[0].record()
    for key in ("backend", "length", "batch", "device", "dtype", "ms_median", "peak_mem_mb"):
        assert key in record
    assert record["dtype"] == "float32"
    assert all(m.peak_mem_mb > 0 for m in results)

    # Full attention's score FLOPs grow with N^2, DBA's total only with N.
    assert attention_flops("full", 1, 64, config) > 2 * attention_flops("full", 1, 32, config)
    assert attention_flops("dba", 1, 64, config) <= 2 * attention_flops("dba", 1, 32, config)

    report = format_report(results, config)
    assert "full/dba" in report
    assert "not measured  batch 1, N=8192" in report


def test_dba_without_own_latent_needs_one_passed():
    attn = build_attention("dba", 16, 2, num_latents=4, reduced_dim=8, learned_latent=False)
    assert attn.latent is None
    x = torch.randn(2, 5, 16)
    out, latent = attn(x, latent=torch.randn(4, 16))
    assert out.shape == x.shape
    assert latent.shape == (2, 4, 16)
    with pytest.raises(ValueError, match="learned_latent=False"):
        attn(x)
