"""Head ablation: hand-checkable toy ViTs."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from iavutils.analysis import ablation as ab
from iavutils.analysis import head_ablation as ha
from iavutils.analysis.study import Study
from iavutils.core.spec import AnalysisSpec


def _vit(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    m = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    return m.eval()


def _data(n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g)


def _no_hooks(model) -> bool:
    return all(len(m._forward_pre_hooks) == 0 and len(m._forward_hooks) == 0 for m in model.modules())


def test_dead_head_changes_nothing_live_head_does():
    model = _vit()
    d = 16 // 2
    with torch.no_grad():
        model.blocks[0].attn.proj.weight[:, :d] = 0.0  # head 0 of layer 0 writes nothing
    x, _ = _data()
    with torch.no_grad():
        ref = model(x)
        with ab.ablate_heads(model, [(0, 0)]):
            dead = model(x)
        means = ab.proj_input_means(model, (x, torch.zeros(6)))
        with ab.ablate_heads(model, [(0, 0)], mode="mean", means=means):
            dead_mean = model(x)
        with ab.ablate_heads(model, [(0, 1)]):
            live = model(x)
    assert torch.allclose(dead, ref, atol=1e-6)
    assert torch.allclose(dead_mean, ref, atol=1e-6)
    assert not torch.allclose(live, ref, atol=1e-3)
    assert _no_hooks(model)


def test_mean_ablation_with_own_mean_is_identity():
    model = _vit()
    x, y = _data(1)
    means = ab.proj_input_means(model, (x, y))  # [L,N,C]; the mean of one image is that image
    assert means.shape == (2, 17, 16)
    with torch.no_grad():
        ref = model(x)
        with ab.ablate_heads(model, torch.ones(2, 2, dtype=torch.bool), mode="mean", means=means):
            out = model(x)
    assert torch.allclose(out, ref, atol=1e-5)


def test_no_hooks_left_after_exception():
    model = _vit()
    with pytest.raises(RuntimeError, match="boom"):
        with ab.ablate_heads(model, [(1, 1)]):
            assert not _no_hooks(model)
            raise RuntimeError("boom")
    assert _no_hooks(model)
    with pytest.raises(ValueError):
        with ab.ablate_heads(model, [(5, 0)]):
            pass
    assert _no_hooks(model)


def test_head_ablation_shapes_dead_head_zero_drop_and_determinism():
    model = _vit()
    with torch.no_grad():
        model.blocks[1].attn.proj.weight[:, 8:] = 0.0  # layer 1, head 1 is dead
    data = _data(8)
    model.train()
    r1 = ab.head_ablation(model, data, progress=False)
    assert model.training  # flag restored
    r2 = ab.head_ablation(model, [data], progress=False, batch_size=3)
    assert r1["accuracy_drop"].shape == (2, 2)
    assert r1["logit_drop"][1, 1].abs().item() < 1e-5
    assert r1["accuracy_drop"][1, 1].item() == 0.0
    assert torch.allclose(r1["logit_drop"], r2["logit_drop"], atol=1e-5)
    assert _no_hooks(model)


def test_group_ablation_groups_and_controls():
    model = _vit()
    data = _data(8)
    high = torch.tensor([[True, False], [True, True]])
    g = ab.group_ablation(model, data, high, progress=False)
    assert g["n_high"].tolist() == [1.0, 2.0] and g["n_low"].tolist() == [1.0, 0.0]
    assert torch.isnan(g["low_logit_drop"][1])  # layer 1 has no Low-IA head
    # Ablating all heads of layer 1 is the High-IA group there.
    assert g["all_logit_drop"][1].item() == pytest.approx(g["high_logit_drop"][1].item())
    single = ab.head_ablation(model, data, progress=False)
    # Size-1 control of layer 0 = mean of the two single-head drops.
    assert g["low_control_logit_drop"][0].item() == pytest.approx(single["logit_drop"][0].mean().item(), abs=1e-5)
    assert _no_hooks(model)


def test_rank_correlation_and_group_comparison():
    a = torch.tensor([[0.1, 0.2], [0.3, float("nan")]])
    b = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    r = ha.rank_correlation(a, b)
    assert r["rho"] == pytest.approx(1.0) and r["n"] == 3
    c = ha.head_group_comparison(torch.tensor([[0.0, 1.0], [0.0, 2.0]]), torch.tensor([[False, True], [False, True]]))
    assert c["mean_low"] == 0.0 and c["mean_high"] == 1.5


def test_mean_gmar_weights_sum_to_one():
    model = _vit()
    x, y = _data(4)
    w = ab.mean_gmar_weights(model, x, y, batch_size=3)
    assert w.shape == (2, 2)
    assert torch.allclose(w.sum(1), torch.ones(2), atol=1e-5)
    assert _no_hooks(model)


def test_run_head_ablation_on_a_run(tmp_path):
    from fake_runs import write_fake_run

    write_fake_run(tmp_path, "tiny-sup")
    study = Study(("tiny-sup",), "embedded", tmp_path, AnalysisSpec(num_images=4, n_samples=2, device="cpu", progress=False))
    r = ha.run_head_ablation(study, "tiny-sup", ablation_images=8)
    assert r["ia"].shape == (6, 4) and r["single.logit_drop"].shape == (6, 4)
    assert torch.allclose(r["gmar_weight"].sum(1), torch.ones(6), atol=1e-5)
    assert (r["rgroup.n_high"] + r["rgroup.n_low"]).tolist() == [4.0] * 6
    df = ha.ablation_frame({"tiny-sup": r})
    assert len(df) == 24 and set(df.columns) >= {"ia", "high_ia", "high_rel", "gmar_weight", "logit_drop"}


def test_group_ablation_shared_cache_and_max_subsets():
    # Two head splits on the same model and data share their measured drops: same numbers,
    # fewer forwards; max_subsets bounds the forwards of each control.
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=4, num_classes=3).eval()
    data = _data(8)
    high = torch.tensor([[True, True, True, False], [True, True, True, True]])
    rel = torch.tensor([[False, True, True, False], [True, False, False, True]])
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        alone = ab.group_ablation(model, data, rel, progress=False)
        n_alone = len(calls)
        drops: dict = {}
        ab.group_ablation(model, data, high, progress=False, cache=drops)
        calls.clear()
        shared = ab.group_ablation(model, data, rel, progress=False, cache=drops)
        assert len(calls) < n_alone
        for k in alone:
            assert torch.allclose(alone[k], shared[k], equal_nan=True), k
        calls.clear()
        few = ab.group_ablation(model, data, rel, progress=False, max_subsets=1)
        assert len(calls) < n_alone and few["low_control_logit_drop"].isfinite().all()
    finally:
        handle.remove()


def test_run_head_ablation_max_subsets_is_part_of_the_key(tmp_path):
    from fake_runs import write_fake_run

    write_fake_run(tmp_path, "tiny-sup")
    study = Study(("tiny-sup",), "embedded", tmp_path, AnalysisSpec(num_images=4, n_samples=2, device="cpu", progress=False))
    kw = dict(ablation_images=4)
    full = ha.run_head_ablation(study, "tiny-sup", **kw)
    one = ha.run_head_ablation(study, "tiny-sup", max_subsets=1, **kw)
    assert torch.equal(full["single.logit_drop"], one["single.logit_drop"])  # single heads: unaffected
    assert torch.equal(full["rgroup.all_logit_drop"], one["rgroup.all_logit_drop"])
    # one control subset instead of all six 2-subsets of a layer's 4 heads: its own cache entry
    assert torch.isfinite(one["rgroup.low_control_logit_drop"]).all()
    again = ha.run_head_ablation(study, "tiny-sup", **kw)
    assert torch.equal(again["rgroup.low_control_logit_drop"], full["rgroup.low_control_logit_drop"])


@pytest.mark.parametrize("kind", ["vit", "beit"])
def test_ablated_forwards_start_at_the_ablated_layer(kind):
    # Blocks before the ablated layer are not run again (their output is the clean forward's),
    # and the drops are those of full forwards, for timm's Sequential and ModuleList blocks.
    from timm.models.beit import Beit

    torch.manual_seed(0)
    kw = dict(img_size=16, patch_size=4, embed_dim=16, depth=3, num_heads=2, num_classes=3)
    model = (VisionTransformer(**kw) if kind == "vit" else Beit(**kw, use_rel_pos_bias=True)).eval()
    data = _data(5)
    full_drop = torch.zeros(3, 2)
    with torch.no_grad():
        out0 = model(data[0])
        z0 = out0.gather(1, data[1][:, None]).squeeze(1)
        for l in range(3):
            for h in range(2):
                with ab.ablate_heads(model, [(l, h)]):
                    z = model(data[0]).gather(1, data[1][:, None]).squeeze(1)
                full_drop[l, h] = (z0 - z).mean()
    runs = []
    handle = model.blocks[0].register_forward_pre_hook(lambda m, a: runs.append(1))
    blocks_before = list(model.blocks)
    try:
        r = ab.head_ablation(model, data, progress=False)
    finally:
        handle.remove()
    assert torch.allclose(r["logit_drop"], full_drop, atol=1e-5)
    # block 0 runs for the clean forward and the two heads of layer 0 only
    assert len(runs) == 1 + 2
    assert list(model.blocks) == blocks_before and _no_hooks(model)
