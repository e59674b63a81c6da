"""Rollout, GMAR and gradient rollout on hand-made 2-layer tensors, and on models vs a reference."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_same_state, make_model, snapshot
from timm.utils import AttentionExtract

import iavutils as iu

# Two layers, two heads, N = 3 tokens (T = 1 class token, P = 2 patches), one image.
A1 = torch.tensor(
    [
        [[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]],
        [[0.1, 0.7, 0.2], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4]],
    ]
)
A2 = torch.tensor(
    [
        [[0.2, 0.2, 0.6], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4]],
        [[0.6, 0.2, 0.2], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]],
    ]
)
ATTN = torch.stack([A1, A2]).unsqueeze(0)  # [B=1, L=2, H=2, 3, 3]


def test_rollout_mean_hand_matrices():
    # mean_h A1 = [[.3,.475,.225],[.3,.5,.2],[.2,.2,.6]] -> Â1 = ½·that + ½·I (rows already sum to 1)
    # mean_h A2 = [[.4,.2,.4],[.3,.2,.5],[.25,.45,.3]]   -> Â2 row 0 = [.7, .1, .2]
    # (Â2 Â1)[0] = .7·[.65,.2375,.1125] + .1·[.15,.75,.1] + .2·[.1,.1,.8] = [.49, .26125, .24875]
    out = iu.attention_rollout(ATTN, num_prefix_tokens=1)
    torch.testing.assert_close(out, torch.tensor([[0.26125, 0.24875]]))


def test_rollout_max_fusion_needs_row_renormalisation():
    # max_h A1 = [[.5,.7,.25],[.4,.6,.2],[.3,.3,.8]]: ½·max + ½·I has row sums 1.225, 1.1, 1.2
    #   Â1 = [[30/49, 14/49, 5/49], [2/11, 8/11, 1/11], [1/8, 1/8, 3/4]]
    # max_h A2 row 0 = [.6,.2,.6] -> ½·that + ½·e0 = [.8,.1,.3] / 1.2 = [2/3, 1/12, 1/4]
    expected = torch.tensor(
        [[2 / 3 * 14 / 49 + 1 / 12 * 8 / 11 + 1 / 4 * 1 / 8, 2 / 3 * 5 / 49 + 1 / 12 * 1 / 11 + 1 / 4 * 3 / 4]]
    )
    torch.testing.assert_close(iu.attention_rollout(ATTN, 1, head_fusion="max"), expected)


def test_rollout_min_fusion_and_start_layer():
    # min_h A2 row 0 = [.2,.2,.2] -> [.6,.1,.1] / .8 = [.75, .125, .125]; start_layer=1 keeps Â2 only
    torch.testing.assert_close(
        iu.attention_rollout(ATTN, 1, head_fusion="min", start_layer=1), torch.tensor([[0.125, 0.125]])
    )
    # mean, start_layer=1: Â2 row 0 = [.7, .1, .2]
    torch.testing.assert_close(iu.attention_rollout(ATTN, 1, start_layer=1), torch.tensor([[0.1, 0.2]]))


def test_rollout_discard_ratio_per_image_keeps_cls_self_attention():
    # k = int(9 · 0.3) = 2 lowest entries zeroed per image, never a[0, 0].
    a = torch.tensor(
        [
            # image 0: a[0,0] = .1 is among the two lowest but kept; .05 and .15 go.
            [[0.1, 0.05, 0.85], [0.3, 0.45, 0.25], [0.15, 0.35, 0.5]],
            # image 1: .05 and .1 go.
            [[0.6, 0.3, 0.1], [0.2, 0.25, 0.55], [0.05, 0.45, 0.5]],
        ]
    ).reshape(2, 1, 1, 3, 3)
    keep = a.clone()
    out = iu.attention_rollout(a, 1, discard_ratio=0.3)
    # image 0: row 0 -> [.1, 0, .85] -> ½·+½·e0 = [.55, 0, .425] / .975
    # image 1: row 0 -> [.6, .3, 0]  -> [.8, .15, 0] / .95
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.425 / 0.975], [0.15 / 0.95, 0.0]]))
    assert torch.equal(a, keep)  # input untouched


def test_rollout_is_batch_aware_and_uses_the_prefix_count():
    other = ATTN.flip(2)  # heads swapped: same mean, different max
    batch = torch.cat([ATTN, other])
    torch.testing.assert_close(iu.attention_rollout(batch, 1, "max")[1], iu.attention_rollout(other, 1, "max")[0])
    # With T = 2 prefix tokens the patch row starts at column 2: (Â2 Â1)[0, 2:] = [.24875]
    torch.testing.assert_close(iu.attention_rollout(ATTN, 2), torch.tensor([[0.24875]]))


def test_rollout_bad_arguments():
    with pytest.raises(ValueError, match="head_fusion"):
        iu.attention_rollout(ATTN, 1, head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        iu.attention_rollout(ATTN, 1, discard_ratio=1.0)
    with pytest.raises(ValueError, match="start_layer"):
        iu.attention_rollout(ATTN, 1, start_layer=2)
    with pytest.raises(ValueError, match=r"\[B,L,H,N,N\]"):
        iu.attention_rollout(ATTN[0], 1)


# Gradients of y_c with respect to each map, hand-made.
G1 = torch.zeros(2, 3, 3)
G1[0, 0, 0], G1[0, 1, 1], G1[0, 2, 2] = 1.0, -1.0, 1.0  # head 0: L1 = 3, L2 = sqrt(3)
G1[1, 1, 2] = -1.0  # head 1: L1 = 1, L2 = 1
G2 = torch.zeros(2, 3, 3)
G2[0, 0, 1] = 2.0  # head 0: L1 = 2, L2 = 2
G2[1, 1, 0], G2[1, 2, 2] = 1.0, -1.0  # head 1: L1 = 2, L2 = sqrt(2)
GRADS = torch.stack([G1, G2]).unsqueeze(0)


def test_gmar_head_weights_hand_numbers():
    w1 = iu.gmar_head_weights(ATTN, GRADS, "l1")
    torch.testing.assert_close(w1, torch.tensor([[[0.75, 0.25], [0.5, 0.5]]]))
    r3, r2 = math.sqrt(3), math.sqrt(2)
    w2 = iu.gmar_head_weights(ATTN, GRADS, "l2")
    torch.testing.assert_close(w2, torch.tensor([[[r3 / (r3 + 1), 1 / (r3 + 1)], [2 / (2 + r2), r2 / (2 + r2)]]]))
    # A layer without gradient carries no preference: uniform.
    zero = GRADS.clone()
    zero[:, 1] = 0
    torch.testing.assert_close(iu.gmar_head_weights(ATTN, zero)[0, 1], torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="norm"):
        iu.gmar_head_weights(ATTN, GRADS, "linf")
    with pytest.raises(ValueError, match="must both be"):
        iu.gmar_head_weights(ATTN, GRADS[:, :1])


def test_gmar_hand_matrices():
    # L1 weights [.75,.25] and [.5,.5]:
    #   Ā1 = .75·A1h0 + .25·A1h1 = [[.4,.3625,.2375],[.25,.55,.2],[.15,.15,.7]]
    #   Â1 = ½Ā1 + ½I = [[.7,.18125,.11875],[.125,.775,.1],[.075,.075,.85]]
    #   Â2 row 0 = [.7,.1,.2] (equal weights = the mean)
    #   (Â2 Â1)[0, 1:] = [.7·.18125 + .1·.775 + .2·.075, .7·.11875 + .1·.1 + .2·.85] = [.219375, .263125]
    out = iu.gmar_from_grads(ATTN, GRADS, 1, "l1")
    torch.testing.assert_close(out, torch.tensor([[0.219375, 0.263125]]))
    assert not torch.allclose(iu.gmar_from_grads(ATTN, GRADS, 1, "l2"), out)


def test_gradient_rollout_hand_matrices():
    g1 = torch.zeros(2, 3, 3)
    g1[0, 0, 1] = 2.0  # (∇A⊙A) = 2·.25 = .5
    g1[1, 0, 2], g1[1, 2, 0] = -1.0, 1.0  # -.2 (clamped away), .3
    g2 = torch.zeros(2, 3, 3)
    g2[0, 0, 0] = 1.0  # .2
    g2[1, 0, 2] = 1.0  # .2
    grads = torch.stack([g1, g2]).unsqueeze(0)
    # cam1 = mean_h = [[0,.25,0],[0,0,0],[.15,0,0]];  R1 = I + cam1 = [[1,.25,0],[0,1,0],[.15,0,1]]
    # cam2 = [[.1,0,.1],0,0];  R2[0] = R1[0] + .1·R1[0] + .1·R1[2] = [1.115, .275, .1]
    out = iu.gradient_rollout_from_grads(ATTN, grads, 1)
    torch.testing.assert_close(out, torch.tensor([[0.275, 0.1]]))


def _reference_attention_and_grads(model, x, target):
    """Maps from timm's AttentionExtract (fused attention off) and autograd.grad of the logit."""
    saved = {blk.attn: blk.attn.fused_attn for blk in model.blocks}
    try:
        for attn in saved:
            attn.fused_attn = False
        extractor = AttentionExtract(model, names=["blocks.*.attn.attn_drop"], method="hook")
        with torch.enable_grad():
            xin = x.clone().requires_grad_(True)
            logits = model(xin)
            maps = list(extractor.hooks.get_output(x.device).values())
        for handle in extractor.hooks._handles:
            handle.remove()
    finally:
        for attn, flag in saved.items():
            attn.fused_attn = flag
    y = logits[torch.arange(len(x)), target].sum()
    grads = torch.autograd.grad(y, maps)
    return torch.stack([m.detach() for m in maps], 1), torch.stack(grads, 1)


@pytest.mark.parametrize("kind", ["vit", "deit_distilled", "beit", "vit_reg"])
def test_gmar_and_gradient_rollout_on_models_match_reference(kind, images):
    model = make_model(kind)
    geo = iu.model_geometry(model)
    target = torch.tensor([1, 4, 0])
    attn, grads = _reference_attention_and_grads(model, images, target)
    before = snapshot(model)
    for norm in ("l1", "l2"):
        out = iu.gmar(model, images, target, norm=norm)
        assert out.shape == (3, geo.num_patches)
        torch.testing.assert_close(out, iu.gmar_from_grads(attn, grads, geo.num_prefix_tokens, norm))
    ours_attn, ours_grads = iu.attention_and_grads(model, images, target)
    torch.testing.assert_close(ours_attn, attn)
    torch.testing.assert_close(ours_grads, grads)
    gr = iu.gradient_rollout(model, images, target)
    torch.testing.assert_close(gr, iu.gradient_rollout_from_grads(attn, grads, geo.num_prefix_tokens))
    assert_same_state(before, snapshot(model))
    # Per image: image 1 alone gives its row of the batch result.
    torch.testing.assert_close(iu.gmar(model, images[1:2], target[1:2]), iu.gmar(model, images, target)[1:2])


def test_gmar_on_a_frozen_model_in_train_mode(images):
    model = make_model("vit", attn_drop_rate=0.5)
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    before = snapshot(model)
    out = iu.gmar(model, images)  # predicted class; dropout off, gradients still flow via the input
    assert_same_state(before, snapshot(model))
    torch.testing.assert_close(out, iu.gmar(model.eval(), images))
    assert torch.isfinite(out).all() and (out > 0).all()


def test_model_level_bad_arguments(images):
    with pytest.raises(ValueError, match="norm"):
        iu.gmar(make_model("vit"), images, norm="l3")
    with pytest.raises(iu.UnsupportedModelError):
        iu.gradient_rollout(make_model("vit_no_cls"), images)
    with pytest.raises(ValueError, match="NaN"):
        iu.gmar(make_model("vit"), images * float("nan"))
