"""SmoothGrad against captum, the noise-stream contract, invariances; GradCAM; patch pooling."""

from __future__ import annotations

import copy

import pytest
import torch
from captum.attr import NoiseTunnel, Saliency
from conftest import IMG, assert_same_state, make_model, snapshot

import iavutils as iu
from iavutils.core.noise import noise_seeds, noise_stream


pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


def test_noise_level_zero_equals_captum_saliency(vit_model, images):
    target = torch.tensor([0, 3, 4])
    ref = Saliency(vit_model).attribute(images, target=target, abs=True).mean(dim=1)
    for n in (1, 3):
        ours = iu.smoothgrad(vit_model, images, target, n_samples=n, noise_level=0.0)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)


def test_noise_level_zero_on_a_cnn_equals_captum_saliency(images):
    model = make_model("resnet")
    ref = Saliency(model).attribute(images, target=2, abs=True).mean(dim=1)
    torch.testing.assert_close(iu.smoothgrad(model, images, 2, noise_level=0.0, n_samples=2), ref)


@pytest.mark.parametrize("kind", ["vit", "beit"])
def test_smoothgrad_equals_captum_noise_tunnel_fed_the_same_noise(kind, images, monkeypatch):
    model = make_model(kind)
    n, level, seed = 4, 0.2, 7
    noisy = torch.stack([xn for _, _, xn in noise_stream(images, n, level, torch.Generator().manual_seed(seed))])

    def same_noise(inp, stdev, nt_samples_partition):
        # captum's layout is repeat_interleave: image-major, like the stream.
        assert nt_samples_partition == n and inp.shape == images.shape
        return noisy.clone()

    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(same_noise))
    target = torch.tensor([1, 0, 2])
    ref = NoiseTunnel(Saliency(model)).attribute(
        images, nt_type="smoothgrad", nt_samples=n, stdevs=1.0, target=target, abs=True
    ).mean(dim=1)
    ours = iu.smoothgrad(model, images, target, n_samples=n, noise_level=level,
                         generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    plain = iu.smoothgrad(model, images, target, noise_level=0.0, n_samples=1)
    assert (ours - plain).abs().max() > 1e-4  # the noise does something


def test_noise_stream_follows_the_written_contract(images):
    x = images * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    level, n = 0.15, 3
    out = list(noise_stream(x, n, level, torch.Generator().manual_seed(11)))
    assert [(b, k) for b, k, _ in out] == [(b, k) for b in range(3) for k in range(n)]
    # The contract, re-implemented from ARCHITECTURE.md's text.
    seeds = torch.randint(0, 2**62, (3,), generator=torch.Generator().manual_seed(11))
    for b in range(3):
        g = torch.Generator().manual_seed(int(seeds[b]))
        sigma = level * (x[b].max() - x[b].min())
        for k in range(n):
            expected = x[b] + sigma * torch.randn(3, IMG, IMG, generator=g)
            assert torch.equal(out[b * n + k][2], expected)
    torch.manual_seed(5)
    a = noise_seeds(4)
    torch.manual_seed(5)
    assert torch.equal(a, noise_seeds(4))  # generator=None: global RNG, repeatable


def test_batching_does_not_change_the_result(images):
    model = make_model("deit_distilled")
    kw = dict(n_samples=5, noise_level=0.1)
    ref = iu.smoothgrad(model, images, None, generator=torch.Generator().manual_seed(3), **kw)
    for bs in (1, 2, 4, 7, 15, 100):
        out = iu.smoothgrad(model, images, None, generator=torch.Generator().manual_seed(3), batch_size=bs, **kw)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-7)
    other = iu.smoothgrad(model, images, None, generator=torch.Generator().manual_seed(4), **kw)
    assert not torch.allclose(other, ref)


def test_smoothgrad_leaves_model_and_input_untouched(images):
    model = make_model("vit", attn_drop_rate=0.3, drop_rate=0.3)
    model.train()
    model.blocks[0].attn.fused_attn = True
    x = images.clone()
    before = snapshot(model)
    out = iu.smoothgrad(model, images, 1, n_samples=3, generator=torch.Generator().manual_seed(0), batch_size=2)
    assert_same_state(before, snapshot(model))
    assert torch.equal(images, x) and not images.requires_grad
    # Dropout was off: same result as an eval-mode run.
    ref = iu.smoothgrad(model.eval(), images, 1, n_samples=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-7)
    assert out.shape == (3, IMG, IMG) and (out >= 0).all()


def test_smoothgrad_target_forms(images):
    model = make_model("vit")
    with torch.no_grad():
        pred = model(images).argmax(1)
    a = iu.smoothgrad(model, images, None, noise_level=0.0, n_samples=1)
    b = iu.smoothgrad(model, images, pred, noise_level=0.0, n_samples=1)
    torch.testing.assert_close(a, b)
    c = iu.smoothgrad(model, images, 2, noise_level=0.0, n_samples=1)
    d = iu.smoothgrad(model, images, torch.tensor([2, 2, 2]), noise_level=0.0, n_samples=1)
    torch.testing.assert_close(c, d)
    with pytest.raises(ValueError, match="out of range"):
        iu.smoothgrad(model, images, 9, n_samples=1)
    with pytest.raises(ValueError, match="target"):
        iu.smoothgrad(model, images, torch.tensor([0, 1]), n_samples=1)


def test_smoothgrad_bad_inputs(images):
    model = make_model("vit")
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        iu.smoothgrad(model, bad, 0, n_samples=1)
    with pytest.raises(ValueError, match="wrong image size"):
        iu.smoothgrad(model, torch.randn(1, 3, 40, 40), 0, n_samples=1)
    with pytest.raises(ValueError, match="n_samples"):
        iu.smoothgrad(model, images, 0, n_samples=0)


def _reference_gradcam(model, x, target):
    """pytorch-grad-cam style: a tensor hook catches the gradient, .backward() on a copy."""
    model = copy.deepcopy(model).eval()
    store = {}

    def fwd(module, inputs, output):
        store["a"] = output
        output.register_hook(lambda g: store.__setitem__("g", g))

    model.blocks[-1].norm1.register_forward_hook(fwd)
    logits = model(x)
    logits[torch.arange(len(x)), target].sum().backward()
    T = model.num_prefix_tokens
    a, g = store["a"][:, T:].detach(), store["g"][:, T:]
    cam = torch.einsum("bd,bpd->bp", g.mean(1), a)
    return cam.clamp_min(0)


@pytest.mark.parametrize("kind", ["vit", "vit_reg", "deit_distilled", "beit"])
def test_gradcam_matches_reference(kind, images):
    model = make_model(kind)
    target = torch.tensor([4, 1, 0])
    before = snapshot(model)
    cam = iu.gradcam(model, images, target)
    assert_same_state(before, snapshot(model))
    assert cam.shape == (3, 16) and (cam >= 0).all() and (cam > 0).any()
    torch.testing.assert_close(cam, _reference_gradcam(model, images, target), rtol=1e-5, atol=1e-6)


def test_gradcam_toy_case():
    # One block, one image: the map against the hook-and-backward reference, then a sign check.
    model = make_model("vit", depth=1)
    x = torch.randn(1, 3, IMG, IMG)
    cam = iu.gradcam(model, x, 0)
    ref = _reference_gradcam(model, x, torch.tensor([0]))
    torch.testing.assert_close(cam, ref, rtol=1e-5, atol=1e-6)
    # Negating the target logit's gradient flips the pre-ReLU map: the two ReLU parts are disjoint.
    model_neg = copy.deepcopy(model)
    with torch.no_grad():
        model_neg.head.weight[0].neg_()
        model_neg.head.bias[0].neg_()
    cam_neg = iu.gradcam(model_neg, x, 0)
    assert ((cam > 0) & (cam_neg > 0)).sum() == 0


def test_patch_pool_hand_numbers():
    m = torch.arange(16.0).reshape(1, 4, 4)
    # 2x2 grid of 2x2 patches: means of [0,1,4,5], [2,3,6,7], [8,9,12,13], [10,11,14,15]
    torch.testing.assert_close(iu.patch_pool(m, (2, 2)), torch.tensor([[2.5, 4.5, 10.5, 12.5]]))
    # Non-square grid, row-major order.
    m = torch.arange(12.0).reshape(1, 2, 6)
    torch.testing.assert_close(iu.patch_pool(m, (1, 3)), torch.tensor([[3.5, 5.5, 7.5]]))
    with pytest.raises(ValueError, match="divisible"):
        iu.patch_pool(torch.zeros(1, 5, 4), (2, 2))
    with pytest.raises(ValueError, match=r"\[B,H,W\]"):
        iu.patch_pool(torch.zeros(4, 4), (2, 2))
