"""Attention recording: exact maps, unchanged logits, nothing left behind, clear errors."""

from __future__ import annotations

import pytest
import torch
from conftest import IMG, assert_same_state, make_model, snapshot
from timm.models.beit import Beit
from timm.utils import AttentionExtract

import iavutils as iu
from iavutils.core.hooks import UnsupportedModelError


def _block_inputs(model, x):
    """Tokens entering each block, computed by walking the model by hand."""
    if isinstance(model, Beit):
        t = model.patch_embed(x)
        t = torch.cat((model.cls_token.expand(x.shape[0], -1, -1), t), dim=1)
        if model.pos_embed is not None:
            t = t + model.pos_embed
        shared = model.rel_pos_bias() if model.rel_pos_bias is not None else None
    else:
        t = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        shared = None
    inputs = []
    for blk in model.blocks:
        inputs.append(t)
        t = blk(t, shared_rel_pos_bias=shared) if isinstance(model, Beit) else blk(t)
    return inputs, shared


def _reference_attention(attn, h, shared=None):
    """softmax(q k^T / sqrt(d) + biases) from the block's own qkv weights, written out."""
    B, N, _ = h.shape
    w = attn.qkv.weight
    if getattr(attn, "q_bias", None) is not None:  # BEiT: q and v biases, no k bias
        bias = torch.cat((attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias))
    else:
        bias = attn.qkv.bias
    qkv = h @ w.T + (0 if bias is None else bias)
    H = attn.num_heads
    d = qkv.shape[-1] // (3 * H)
    qkv = qkv.reshape(B, N, 3, H, d)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)  # [B,H,N,d]
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    s = torch.einsum("bhid,bhjd->bhij", q, k) / d**0.5
    table = getattr(attn, "relative_position_bias_table", None)
    if table is not None:
        s = s + table[attn.relative_position_index.reshape(-1)].reshape(N, N, H).permute(2, 0, 1)
    if shared is not None:
        s = s + shared
    return torch.softmax(s, dim=-1)


@torch.no_grad()
def test_recorded_attention_equals_reference_from_qkv(vit_model, images):
    _, attn = iu.record_attention(vit_model, images)
    geo = iu.model_geometry(vit_model)
    assert attn.shape == (3, geo.num_layers, geo.num_heads, geo.num_tokens, geo.num_tokens)
    inputs, shared = _block_inputs(vit_model, images)
    for layer, (blk, h) in enumerate(zip(vit_model.blocks, inputs)):
        ref = _reference_attention(blk.attn, blk.norm1(h), shared)
        torch.testing.assert_close(attn[:, layer], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn.sum(-1)))


@torch.no_grad()
def test_beit_relative_position_bias_is_included():
    model = make_model("beit")
    x = torch.randn(2, 3, IMG, IMG)
    _, attn = iu.record_attention(model, x)
    for blk in model.blocks:
        blk.attn.relative_position_bias_table.zero_()
    _, attn_nobias = iu.record_attention(model, x)
    assert (attn - attn_nobias)[:, 0].abs().max() > 1e-3


@torch.no_grad()
def test_recorded_attention_equals_timm_attention_extract(vit_model, images):
    saved = {blk.attn: blk.attn.fused_attn for blk in vit_model.blocks}
    try:
        for attn in saved:
            attn.fused_attn = False
        extractor = AttentionExtract(vit_model, names=["blocks.*.attn.attn_drop"], method="hook")
        out = extractor(images)
        for handle in extractor.hooks._handles:  # AttentionExtract has no release()
            handle.remove()
    finally:
        for attn, flag in saved.items():
            attn.fused_attn = flag
    timm_attn = torch.stack(list(out.values()), dim=1)
    _, attn = iu.record_attention(vit_model, images)
    assert len(out) == len(vit_model.blocks)
    torch.testing.assert_close(attn, timm_attn, rtol=0, atol=0)


@torch.no_grad()
def test_logits_unchanged_by_recording(vit_model, images):
    eager_saved = [blk.attn.fused_attn for blk in vit_model.blocks]
    for blk in vit_model.blocks:
        blk.attn.fused_attn = True
    fused = vit_model(images)
    for blk in vit_model.blocks:
        blk.attn.fused_attn = False
    eager = vit_model(images)
    for blk, flag in zip(vit_model.blocks, eager_saved):
        blk.attn.fused_attn = flag
    logits, _ = iu.record_attention(vit_model, images)
    assert torch.equal(logits, eager)  # same path, bit for bit
    torch.testing.assert_close(logits, fused, rtol=1e-5, atol=1e-5)


def _mixed_state(model):
    # A state no default would reproduce: train mode with one block in eval, mixed fused flags,
    # frozen patch embedding.
    model.train()
    model.blocks[0].eval()
    model.blocks[0].attn.fused_attn = True
    model.blocks[1].attn.fused_attn = False
    for p in model.patch_embed.parameters():
        p.requires_grad_(False)
    return model


@pytest.mark.parametrize("grad", [False, True])
def test_nothing_left_behind_after_success(vit_model, images, grad):
    model = _mixed_state(vit_model)
    before = snapshot(model)
    logits, attn = iu.record_attention(model, images, grad=grad)
    assert attn.requires_grad == grad
    assert_same_state(before, snapshot(model))


def test_recording_runs_in_eval_mode():
    model = make_model("vit", attn_drop_rate=0.5, proj_drop_rate=0.5, drop_rate=0.5)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        ref = model.eval()(x)
        model.train()
        logits, _ = iu.record_attention(model, x)
    assert model.training
    torch.testing.assert_close(logits, ref)


def test_train_mode_recording_keeps_pre_dropout_probabilities():
    model = make_model("vit", attn_drop_rate=0.5).train()
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad(), iu.AttentionRecorder(model, eval=False) as rec:
        model(x)
        assert model.training
        attn = rec.attention
    torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn.sum(-1)))


def test_nothing_left_behind_after_exception_in_forward(vit_model, images):
    model = _mixed_state(vit_model)

    def boom(module, inputs, output):
        raise RuntimeError("boom inside forward")

    handle = model.blocks[-1].mlp.register_forward_hook(boom)
    try:
        before = snapshot(model)
        with pytest.raises(RuntimeError, match="boom inside forward"):
            iu.record_attention(model, images)
        assert_same_state(before, snapshot(model))
        with pytest.raises(RuntimeError, match="boom inside forward"):
            with iu.AttentionRecorder(model, keep_graph=True):
                model(images)
        assert_same_state(before, snapshot(model))
    finally:
        handle.remove()


def test_recorder_context_manager_api(images):
    model = make_model("vit")
    with iu.AttentionRecorder(model) as rec:
        with torch.no_grad():
            model(images)
            first = rec.attention
            model(images[:1])
        assert len(rec.maps) == 2 and rec.maps[0].shape == (1, 2, 17, 17)
    torch.testing.assert_close(first[:1], rec.attention)
    before = snapshot(model)
    rec.release()  # idempotent
    assert_same_state(before, snapshot(model))


def test_keep_graph_gives_differentiable_maps(images):
    model = make_model("vit")
    with iu.AttentionRecorder(model, keep_graph=True) as rec:
        logits = model(images)
    grads = torch.autograd.grad(logits[:, 0].sum(), rec.maps)
    assert all(g.shape == m.shape for g, m in zip(grads, rec.maps))
    assert grads[-1].abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_model_geometry_read_from_model():
    geo = iu.model_geometry(make_model("deit_distilled"))
    assert geo == iu.ModelGeometry(2, (4, 4), 2, 2, (8, 8), (32, 32))
    assert (geo.num_patches, geo.num_tokens) == (16, 18)
    assert iu.model_geometry(make_model("vit_reg")).num_prefix_tokens == 3
    geo = iu.model_geometry(make_model("vit", patch_size=4, depth=3, num_heads=4))
    assert (geo.grid, geo.num_layers, geo.num_heads, geo.num_tokens) == ((8, 8), 3, 4, 65)


@pytest.mark.parametrize("kind", ["vit_no_cls", "resnet"])
def test_unsupported_models_fail_loudly(kind, images):
    model = make_model(kind)
    before = snapshot(model)
    with pytest.raises(UnsupportedModelError, match="supported: timm VisionTransformer"):
        iu.record_attention(model, images)
    with pytest.raises(UnsupportedModelError):
        iu.model_geometry(model)
    with pytest.raises(UnsupportedModelError):
        iu.iav(model, images, n_samples=1)
    assert_same_state(before, snapshot(model))
    if kind == "vit_no_cls":
        with pytest.raises(UnsupportedModelError, match="no class token"):
            iu.AttentionRecorder(model)


def test_nothing_recorded_fails_loudly(images):
    model = make_model("vit")
    with iu.AttentionRecorder(model) as rec:
        with pytest.raises(RuntimeError, match="no attention was recorded"):
            rec.maps

    # A block whose attention never goes through attn_drop (e.g. always fused).
    attn = model.blocks[1].attn

    def fused_only(x, attn_mask=None, is_causal=False):
        B, N, C = x.shape
        q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return attn.proj(out.transpose(1, 2).reshape(B, N, C))

    attn.forward = fused_only
    try:
        with pytest.raises(RuntimeError, match=r"not recorded for blocks \[1\]"):
            iu.record_attention(model, images)
    finally:
        del attn.forward
    assert not model.blocks[1].attn._forward_hooks and not model.blocks[1].attn.attn_drop._forward_hooks


def test_bad_inputs_fail_loudly(images):
    model = make_model("vit")
    with pytest.raises(ValueError, match="wrong image size"):
        iu.record_attention(model, torch.randn(1, 3, 48, 48))
    bad = images.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        iu.record_attention(model, bad)
    with pytest.raises(ValueError, match=r"\[B,C,H,W\]"):
        iu.record_attention(model, images[0])


def test_taps_and_switches_restore_the_model_also_after_an_exception(images):
    from iavutils.core import hooks

    model = make_model("vit")
    for p in list(model.parameters())[::2]:
        p.requires_grad_(False)
    before = snapshot(model)
    keep = torch.ones(model.blocks[0].attn.proj.in_features)
    keep[:16] = 0.0
    seen: list[int] = []
    with pytest.raises(RuntimeError, match="boom"):
        with (
            hooks.frozen_params(model),
            hooks.record_output(model.blocks[-1].norm1) as store,
            hooks.tap_inputs(list(model.blocks), lambda i, x: seen.append(i)),
            hooks.head_mask(model, {0: (keep, None)}),
            hooks.ClsRowTap(model, model.num_prefix_tokens) as tap,
        ):
            with torch.no_grad():
                masked = model(images)
            assert store["output"].shape[:2] == (3, 17) and seen == [0, 1] and tap.pop().shape == (3, 2, 2, 16)
            assert all(not p.requires_grad for p in model.parameters())
            raise RuntimeError("boom")
    assert_same_state(before, snapshot(model))
    with torch.no_grad():
        assert not torch.allclose(masked, model(images))  # the mask changed the forward
