"""IA-Score, IAV/AAV, global-IAV, head types and entropy against hand-written numbers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import IMG, assert_same_state, make_model, snapshot

import iavutils as iu

NAN = float("nan")


def test_cls_attention_reads_row_zero_after_the_prefix():
    attn = torch.arange(2 * 1 * 1 * 5 * 5, dtype=torch.float).reshape(2, 1, 1, 5, 5)
    out = iu.cls_attention(attn, num_prefix_tokens=2)
    assert out.shape == (2, 1, 1, 3)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([2.0, 3.0, 4.0]))
    torch.testing.assert_close(out[1, 0, 0], torch.tensor([27.0, 28.0, 29.0]))
    with pytest.raises(ValueError):
        iu.cls_attention(attn, num_prefix_tokens=0)
    with pytest.raises(ValueError):
        iu.cls_attention(attn[..., :4], num_prefix_tokens=1)


def test_ia_score_hand_numbers():
    phi = torch.tensor([[1.0, 2.0, 2.0, 0.0], [3.0, 0.0, 4.0, 0.0]])
    cls = torch.tensor(
        [
            [[[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]],  # image 0: layer 0, heads 0 and 1
            [[[0.6, 0.0, 0.8, 0.0], [0.25, 0.25, 0.25, 0.25]]],  # image 1
        ]
    )
    # 1.5/(3*sqrt(.5)) = 1/sqrt(2);  0;  5/(5*1) = 1;  1.75/(5*0.5) = 0.7
    expected = torch.tensor([[[1 / math.sqrt(2), 0.0]], [[1.0, 0.7]]])
    torch.testing.assert_close(iu.ia_score(phi, cls), expected)
    # Cosine: the scale of either side does not matter.
    torch.testing.assert_close(iu.ia_score(7 * phi, cls / 3), expected)


def test_ia_score_zero_attribution_is_nan_with_a_counting_warning():
    phi = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    cls = torch.full((3, 2, 1, 3), 1 / 3)
    with pytest.warns(RuntimeWarning, match="2 of 3 attribution maps are all zero"):
        s = iu.ia_score(phi, cls)
    assert torch.isnan(s[0]).all() and torch.isnan(s[2]).all()
    torch.testing.assert_close(s[1], torch.full((2, 1), 1 / math.sqrt(3)))


def test_ia_score_shape_errors():
    with pytest.raises(ValueError, match="mismatch"):
        iu.ia_score(torch.ones(2, 4), torch.ones(2, 1, 1, 5))
    with pytest.raises(ValueError, match=r"\[B,P\]"):
        iu.ia_score(torch.ones(4), torch.ones(2, 1, 1, 4))


def test_global_iav_is_a_nan_aware_mean():
    iavs = torch.tensor([[[0.2, NAN, NAN]], [[0.4, 0.6, NAN]]])  # [N=2, L=1, H=3]
    out = iu.global_iav(iavs)
    torch.testing.assert_close(out[0, :2], torch.tensor([0.3, 0.6]))
    assert torch.isnan(out[0, 2])


def test_head_types_use_the_median():
    iavs = torch.tensor(
        [
            [[0.45, 0.9, 0.9, 0.5]],
            [[0.60, NAN, 0.1, 0.5]],
            [[0.70, 0.9, 0.1, 0.5]],
            [[0.20, 0.1, 0.1, 0.5]],
        ]
    )
    # medians: (0.45+0.6)/2 = 0.525 > .5; NaN ignored -> 0.9; 0.1 (mean would be 0.3); exactly 0.5 is not > 0.5
    torch.testing.assert_close(iu.head_types(iavs), torch.tensor([[True, True, False, False]]))
    torch.testing.assert_close(iu.head_types(iavs, threshold=0.6), torch.tensor([[False, True, False, False]]))


def test_attention_entropy_hand_numbers():
    P = 16
    cls = torch.stack(
        [
            torch.full((P,), 0.01),  # uniform but not normalised: renormalised -> log P
            torch.nn.functional.one_hot(torch.tensor(3), P).float() * 0.2,  # one patch: 0 (0 log 0 = 0)
            torch.cat([torch.full((2,), 0.3), torch.zeros(P - 2)]),  # two equal patches: log 2
            torch.cat([torch.tensor([0.1, 0.3]), torch.zeros(P - 2)]),  # 1/4, 3/4
        ]
    ).reshape(1, 2, 2, P)
    h = iu.attention_entropy(cls)
    expected = torch.tensor(
        [[[math.log(P), 0.0], [math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]]]
    )
    torch.testing.assert_close(h, expected)


def test_iav_composes_recording_smoothgrad_pooling_and_cosine(images):
    model = make_model("vit_reg")
    before = snapshot(model)
    kw = dict(n_samples=3, noise_level=0.1)
    v = iu.iav(model, images, target=None, generator=torch.Generator().manual_seed(0), **kw)
    assert_same_state(before, snapshot(model))
    geo = iu.model_geometry(model)
    assert v.shape == (3, geo.num_layers, geo.num_heads)
    assert ((v >= 0) & (v <= 1 + 1e-6)).all()
    logits, attn = iu.record_attention(model, images)
    phi = iu.smoothgrad(model, images, logits.argmax(1), generator=torch.Generator().manual_seed(0), **kw)
    expected = iu.ia_score(iu.patch_pool(phi, geo.grid), iu.cls_attention(attn, geo.num_prefix_tokens))
    torch.testing.assert_close(v, expected)


def test_iav_other_attributions(images):
    model = make_model("deit_distilled")
    geo = iu.model_geometry(model)
    cls = iu.cls_attention(iu.record_attention(model, images)[1], geo.num_prefix_tokens)
    sal = iu.iav(model, images, target=1, attribution="saliency")
    phi = iu.patch_pool(iu.smoothgrad(model, images, 1, n_samples=1, noise_level=0.0), geo.grid)
    torch.testing.assert_close(sal, iu.ia_score(phi, cls))
    cam = iu.iav(model, images, target=torch.tensor([0, 1, 2]), attribution="gradcam")
    torch.testing.assert_close(cam, iu.ia_score(iu.gradcam(model, images, torch.tensor([0, 1, 2])), cls))
    with pytest.raises(ValueError, match="attribution must be one of"):
        iu.iav(model, images, attribution="lime")
    with pytest.raises(TypeError):
        iu.iav(model, images, attribution="gradcam", n_samples=3)


def test_aav_with_hand_masks(images):
    model = make_model("beit")
    geo = iu.model_geometry(model)
    cls = iu.cls_attention(iu.record_attention(model, images)[1], geo.num_prefix_tokens)
    # A constant map: cos(1, a) = sum(a) / (sqrt(P) |a|).
    ones = torch.ones(3, IMG, IMG)
    expected = cls.sum(-1) / (math.sqrt(geo.num_patches) * cls.norm(dim=-1))
    torch.testing.assert_close(iu.aav(model, images, ones), expected)
    # A mask covering exactly patch 5: the score is that patch's share of the attention norm.
    mask = torch.zeros(3, IMG, IMG)
    mask[:, 8:16, 8:16] = 1.0
    torch.testing.assert_close(iu.aav(model, images, mask), cls[..., 5] / cls.norm(dim=-1))
    with pytest.raises(ValueError, match="maps must be"):
        iu.aav(model, images, torch.ones(3, 16, 16))


def test_model_level_functions_work_under_no_grad(images):
    model = make_model("vit")
    ref = (iu.iav(model, images, attribution="saliency"), iu.gmar(model, images), iu.gradient_rollout(model, images))
    with torch.no_grad():
        out = (iu.iav(model, images, attribution="saliency"), iu.gmar(model, images), iu.gradient_rollout(model, images))
        cam = iu.gradcam(model, images)
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(cam, iu.gradcam(model, images))
