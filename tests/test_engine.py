"""The engine behind iu.iav / iu.smoothgrad equals the reference oracles, and leaves the model as it found it."""

from __future__ import annotations

import pytest
import torch
from timm.models.beit import Beit
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

import oracles
from conftest import make_model

import iavutils as iu
from iavutils.core import chunking, forward, noise
from iavutils.core.attribution import patch_pool, smoothgrad_passes
from iavutils.core.noise import NoiseStream, image_seed, noise_seeds
from iavutils.core.scores import clean_cls_attention, cls_attention, ia_score
from iavutils.core.sweep import BF16_TOLERANCE, autocast_deviation, iav_dataset

SMALL = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5)


def _perturb_biases(model: torch.nn.Module) -> torch.nn.Module:
    # timm zero-initialises biases / relative position tables; make them matter for the test
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or "table" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "vit": VisionTransformer(**SMALL),
        "vit-registers-qknorm": VisionTransformer(**SMALL, reg_tokens=2, qk_norm=True),
        "deit-distilled": VisionTransformerDistilled(**SMALL),
        "beit-relpos": Beit(**SMALL, use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1),
        "beit-shared": Beit(**SMALL, use_shared_rel_pos_bias=True, use_abs_pos_emb=True),
        "vit-nonsquare-grid": VisionTransformer(**{**SMALL, "img_size": (16, 12)}),
    }


MODELS = {k: _perturb_biases(v) for k, v in _models().items()}


def _x(model: torch.nn.Module, b: int = 3, seed: int = 1) -> torch.Tensor:
    h, w = iu.model_geometry(model).img_size
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(MODELS))
def test_engine_equals_reference_iav(name: str) -> None:
    model = MODELS[name]
    x = _x(model)
    ref = oracles.iav(model, x, None, n_samples=4, noise_level=0.15, generator=torch.Generator().manual_seed(3))
    ours = iu.iav(model, x, None, 4, 0.15, torch.Generator().manual_seed(3), chunk_size=5)
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["vit", "beit-relpos"])
def test_smoothgrad_passes_equal_reference_smoothgrad(name: str) -> None:
    model = MODELS[name]
    x = _x(model)
    t = torch.tensor([0, 3, 1])
    ref = oracles.smoothgrad(model, x, t, n_samples=5, generator=torch.Generator().manual_seed(0))
    ours = smoothgrad_passes(model, x, t, 5, generator=torch.Generator().manual_seed(0), chunk_size=4, return_pixels=True)
    torch.testing.assert_close(ours["pixels"], ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours["patches"], patch_pool(ref, iu.model_geometry(model).grid), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_cls_rows_equal_recorded_attention(name: str) -> None:
    model = MODELS[name]
    x = _x(model)
    assert all(getattr(b.attn, "fused_attn", True) for b in model.blocks)  # the model stays fused
    logits_ref, attn = iu.record_attention(model, x)
    logits, rows = clean_cls_attention(model, x)
    torch.testing.assert_close(rows, cls_attention(attn, model.num_prefix_tokens), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits, logits_ref, atol=1e-5, rtol=1e-5)


def test_chunk_size_invariance() -> None:
    model = MODELS["vit"]
    x = _x(model, b=3)
    outs = [
        iu.iav(model, x, None, 6, 0.15, torch.Generator().manual_seed(5), chunk_size=c)
        for c in (1, 4, 7, "auto", 18, 1000)
    ]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-6, rtol=1e-6)


def test_seeds_override_matches_generator_and_target_forms() -> None:
    model = MODELS["vit"]
    x = _x(model, b=2)
    seeds = noise_seeds(2, torch.Generator().manual_seed(11))
    a = iu.iav(model, x, 2, 3, 0.15, torch.Generator().manual_seed(11))
    b = iu.iav(model, x, torch.tensor([2, 2]), 3, 0.15, seeds=seeds)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    ref = oracles.iav(model, x, 2, n_samples=3, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(a, ref, atol=2e-6, rtol=1e-5)


def test_noise_level_zero_is_saliency() -> None:
    model = MODELS["deit-distilled"]
    x = _x(model)
    ours = iu.iav(model, x, None, 3, 0.0, torch.Generator().manual_seed(0))
    ref = oracles.iav(model, x, None, attribution="saliency")
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=1e-5)


def _hook_state(model: torch.nn.Module) -> list:
    return [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), m.training, m.__dict__.get("fused_attn"))
        for m in model.modules()
    ]


def _prepare_state(model: torch.nn.Module) -> list[bool]:
    model.train()
    flags = []
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 2 == 0)  # a mixed state, to check it comes back exactly
        flags.append(p.requires_grad)
    return flags


@pytest.mark.parametrize("name", ["vit", "beit-relpos"])
def test_no_hooks_flags_or_requires_grad_left_behind(name: str) -> None:
    model = _perturb_biases(_models()[name])
    flags = _prepare_state(model)
    before = _hook_state(model)
    x = _x(model, b=2)
    iu.iav(model, x, None, 2, 0.15, torch.Generator().manual_seed(0), chunk_size=3)
    assert _hook_state(model) == before
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())

    # an exception in the clean pass (inside the CLS tap) and one in a gradient pass
    calls = {"n": 0}
    orig = model.head.forward

    def boom_on(k: int):
        def f(t: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            if calls["n"] == k:
                raise RuntimeError("boom")
            return orig(t)

        return f

    for k in (1, 2):
        calls["n"] = 0
        model.head.forward = boom_on(k)
        try:
            with pytest.raises(RuntimeError, match="boom"):
                iu.iav(model, x, None, 2, 0.15, torch.Generator().manual_seed(0), chunk_size=3)
        finally:
            model.head.forward = orig
        assert _hook_state(model) == before
        assert [p.requires_grad for p in model.parameters()] == flags


def test_input_not_mutated_and_details() -> None:
    model = MODELS["vit"]
    x = _x(model)
    x0 = x.clone()
    d = iu.iav(model, x, None, 2, 0.15, torch.Generator().manual_seed(0), return_details=True)
    assert torch.equal(x, x0)
    B, L, H, P = 3, 2, 4, 16
    assert d["iav"].shape == (B, L, H) and d["cls_attention"].shape == (B, L, H, P)
    assert d["attribution"].shape == (B, P) and d["target"].shape == (B,)
    torch.testing.assert_close(d["iav"], ia_score(d["attribution"], d["cls_attention"]))


@pytest.mark.parametrize("mode", ["antithetic", "quasi"])
def test_variance_reduced_modes_agree_with_plain_at_large_n(mode: str) -> None:
    model = MODELS["vit"]
    x = _x(model, b=2)
    t = torch.tensor([0, 1])
    plain = smoothgrad_passes(model, x, t, 256, generator=torch.Generator().manual_seed(1))["patches"]
    other = smoothgrad_passes(model, x, t, 128, generator=torch.Generator().manual_seed(2), noise=mode)["patches"]
    rel = (other - plain).abs().max() / plain.abs().max()
    assert rel < 0.1, rel
    d = smoothgrad_passes(model, x, t, 6, generator=torch.Generator().manual_seed(2), noise=mode, checkpoints=[2, 4, 6])
    torch.testing.assert_close(d["checkpoints"][6], d["patches"])
    # a prefix of the stream is the estimate with fewer samples
    d4 = smoothgrad_passes(model, x, t, 4, generator=torch.Generator().manual_seed(2), noise=mode)
    if mode == "antithetic":
        torch.testing.assert_close(d["checkpoints"][4], d4["patches"], atol=1e-6, rtol=1e-5)


def test_antithetic_pairs_and_sobol_normals() -> None:
    s = NoiseStream(torch.tensor([3]), (2, 3), 4, "antithetic")
    e = [s.take(0, k) for k in range(4)]
    assert torch.equal(e[1], -e[0]) and torch.equal(e[3], -e[2]) and not torch.equal(e[0], e[2])
    z = noise._sobol_normals(5, 32, (3, 90, 80))  # 21 600 values > SobolEngine.MAXDIM: blocks
    assert z.shape == (32, 3, 90, 80) and torch.isfinite(z).all()
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.02
    with pytest.raises(ValueError):
        NoiseStream(torch.tensor([1]), (1,), 1, "uniform")


def test_auto_chunk_respects_memory_budget() -> None:
    model = MODELS["vit"]
    per = chunking.saved_bytes_per_sample(model, (3, 16, 16))
    assert per > 3 * 3 * 16 * 16 * 4
    plan = chunking.auto_chunk_size(model, (3, 16, 16), total=100, memory_budget=5 * per)
    assert plan.chunk_size == 5 and sum(plan.sizes) == 100 and max(plan.sizes) <= 5
    assert plan.peak_bytes_bound <= 5 * per
    assert chunking.auto_chunk_size(model, (3, 16, 16), total=100, memory_budget=1).chunk_size == 1


def test_bf16_autocast_within_stated_tolerance() -> None:
    model = MODELS["vit"]
    dev = autocast_deviation(model, _x(model), torch.bfloat16, n_samples=3)
    assert dev <= BF16_TOLERANCE, dev


def test_compile_option_plumbing() -> None:
    # the "eager" dynamo backend exercises the compiled-forward path without inductor's
    # minutes-long CPU compilation
    model = MODELS["vit"]
    x = _x(model, b=2)
    a = iu.iav(model, x, None, 2, 0.15, torch.Generator().manual_seed(0), compile="eager")
    b = iu.iav(model, x, None, 2, 0.15, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


class _DS(torch.utils.data.Dataset):
    def __init__(self, n: int, shape: tuple[int, int]) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, *shape, generator=g)
        self.y = torch.randint(0, 5, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i]), torch.zeros(1)


def test_iav_dataset_per_image_noise_and_grouping() -> None:
    model = MODELS["vit"]
    ds = _DS(7, (16, 16))
    a = iav_dataset(model, ds, n_samples=3, seed=4, images_per_call=3, progress=False)
    b = iav_dataset(model, ds, n_samples=3, seed=4, images_per_call=7, chunk_size=2, progress=False)
    torch.testing.assert_close(a["iav"], b["iav"], atol=1e-6, rtol=1e-6)
    assert a["iav"].shape == (7, 2, 4) and torch.equal(a["indices"], torch.arange(7))
    sub = iav_dataset(model, ds, indices=[5, 2], n_samples=3, seed=4, progress=False)
    torch.testing.assert_close(sub["iav"], a["iav"][[5, 2]], atol=1e-6, rtol=1e-6)
    one = iu.iav(model, ds.x[[5]], None, 3, seeds=torch.tensor([image_seed(4, 5)]))
    torch.testing.assert_close(one[0], a["iav"][5], atol=1e-6, rtol=1e-6)
    lab = iav_dataset(model, ds, num_images=3, target="label", n_samples=2, progress=False)
    assert torch.equal(lab["targets"], ds.y[:3]) and torch.equal(lab["labels"], ds.y[:3])
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    c = iav_dataset(model, loader, n_samples=3, seed=4, progress=False)
    torch.testing.assert_close(c["iav"], a["iav"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["vit", "vit-registers-qknorm", "deit-distilled", "beit-relpos"])
def test_prefix_only_last_block_forward_equals_model(name: str) -> None:
    model = MODELS[name]
    x = _x(model)
    trims = forward.can_trim_last_block(model)
    assert trims == (not name.startswith("beit"))  # BEiT mean-pools the patches: nothing to trim
    if trims:
        with torch.no_grad():
            torch.testing.assert_close(forward.prefix_only_forward(model, x), model(x), atol=1e-5, rtol=1e-5)


def test_public_smoothgrad_equals_reference_on_a_vit_and_a_cnn() -> None:
    cnn = make_model("resnet")  # any classifier: pixels only, no patch grid
    for model, x in ((MODELS["vit"], _x(MODELS["vit"])), (cnn, torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2)))):
        ref = oracles.smoothgrad(model, x, None, n_samples=4, generator=torch.Generator().manual_seed(6))
        ours = iu.smoothgrad(model, x, None, n_samples=4, generator=torch.Generator().manual_seed(6), batch_size=5)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
