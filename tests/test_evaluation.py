"""Evaluation metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from iavutils.analysis import explanations as ev
from iavutils.analysis.study import Study
from iavutils.core import metrics
from iavutils.core.spec import AnalysisSpec

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


def _normalize(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


class ObjectFraction(nn.Module):
    """Predicts class 1 iff more than half of the object region is still intact (not black)."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x01 = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        intact = (x01.mean(1) > 0.5).float()
        frac = (intact * self.region).sum((1, 2)) / self.region.sum()
        s = frac - 0.5
        return torch.stack([-s, s], dim=1)


class OnePixel(nn.Module):
    """Predicts class 1 iff pixel (0, 0) is intact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x01 = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        s = x01[:, :, 0, 0].mean(1) - 0.5
        return torch.stack([-s, s], dim=1)


def _object_world(B: int = 3):
    region = torch.zeros(16, 16)
    region[:, :8] = 1.0  # the object is the left half: 128 of 256 pixels
    x = _normalize(torch.ones(B, 3, 16, 16))
    y = torch.ones(B, dtype=torch.long)
    return ObjectFraction(region), x, y, region


def test_object_first_map_gets_best_positive_auc_hand_computed():
    model, x, y, region = _object_world()
    good = region.expand(3, 16, 16)
    bad = 1.0 - good
    kw = dict(mean=MEAN, std=STD)
    c_good = metrics.perturbation_curve(model, x, good, y, mode="positive", **kw)
    c_bad = metrics.perturbation_curve(model, x, bad, y, mode="positive", **kw)
    # round(f*256) pixels removed. Object first: intact > 1/2 only while f < 0.25 (f = 0, .1, .2).
    assert c_good.accuracy.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    # Background first: the object loses pixels only after f = 0.5; intact > 1/2 up to f = 0.7.
    assert c_bad.accuracy.tolist() == [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert c_good.auc == pytest.approx(25.0)
    assert c_bad.auc == pytest.approx(75.0)
    # Negative on the good map removes background first: the same as positive on the reverse.
    c_neg = metrics.perturbation_curve(model, x, good, y, mode="negative", **kw)
    assert c_neg.auc == pytest.approx(75.0)
    assert c_good.per_image_auc().mean().item() == pytest.approx(c_good.auc)


def test_patch_unit_and_patch_maps():
    model, x, y, region = _object_world()
    # 4x4 grid of 4x4 patches; the object occupies grid columns 0-1 (8 of 16 patches).
    patch_map = region.reshape(4, 4, 4, 4).mean((1, 3)).reshape(1, 16).expand(3, 16)
    c = metrics.perturbation_curve(model, x, patch_map, y, mean=MEAN, std=STD, unit="patch", grid=(4, 4))
    # round(f*16) patches: 2, 3, 5 ... object intact fraction 6/8, 5/8, 3/8 -> correct up to f=0.2.
    assert c.accuracy.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    # The same patch map through bilinear upsampling ranks the object first as well.
    c_pix = metrics.perturbation_curve(model, x, patch_map, y, mean=MEAN, std=STD, grid=(4, 4), upsample="nearest")
    assert c_pix.auc == pytest.approx(25.0)


def test_all_equal_map_gets_random_expectation():
    B, S = 2000, 8
    x = _normalize(torch.ones(B, 3, S, S))
    y = torch.ones(B, dtype=torch.long)
    flat = torch.zeros(B, S, S)
    c = metrics.perturbation_curve(OnePixel(), x, flat, y, mean=MEAN, std=STD, batch_size=1000)
    n = S * S
    expected = [1.0 - math.floor(f * n + 0.5) / n for f in c.fractions.tolist()]
    exp_auc = float(metrics.perturbation_auc(c.fractions, torch.tensor(expected)))
    assert c.auc == pytest.approx(exp_auc, abs=2.5)
    assert (c.accuracy - torch.tensor(expected)).abs().max() < 0.07
    # A random map is the same thing in expectation.
    rnd = torch.rand(B, S, S, generator=torch.Generator().manual_seed(3))
    c_r = metrics.perturbation_curve(OnePixel(), x, rnd, y, mean=MEAN, std=STD, batch_size=1000)
    assert c_r.auc == pytest.approx(exp_auc, abs=2.5)


def test_perturbation_deterministic_chunk_invariant_and_input_untouched():
    B, S = 20, 8
    x = _normalize(torch.ones(B, 3, S, S))
    x0 = x.clone()
    y = torch.ones(B, dtype=torch.long)
    flat = torch.zeros(B, S, S)
    a = metrics.perturbation_curve(OnePixel(), x, flat, y, mean=MEAN, std=STD, seed=5, batch_size=7)
    b = metrics.perturbation_curve(OnePixel(), x, flat, y, mean=MEAN, std=STD, seed=5, batch_size=20)
    c = metrics.perturbation_curve(OnePixel(), x, flat, y, mean=MEAN, std=STD, seed=6, batch_size=20)
    assert torch.equal(a.correct, b.correct)
    assert not torch.equal(a.correct, c.correct)
    assert torch.equal(x, x0)


def test_perturbation_restores_training_flag_and_validates():
    model, x, y, region = _object_world()
    model.train()
    metrics.perturbation_curve(model, x, region.expand(3, 16, 16), y, mean=MEAN, std=STD)
    assert model.training
    with pytest.raises(ValueError):
        metrics.perturbation_curve(model, x, region.expand(3, 16, 16), y, mean=MEAN, std=STD, mode="sideways")
    with pytest.raises(ValueError):
        metrics.perturbation_curve(model, x, region.expand(3, 16, 16), y)  # no normalisation given


def test_auc_trapezoid():
    assert float(metrics.perturbation_auc([0.0, 0.5, 1.0], [1.0, 1.0, 0.0])) == pytest.approx(75.0)


def test_localization_known_iou():
    mask = torch.zeros(1, 4, 4)
    mask[:, :, :2] = 1.0  # object: left half
    m = torch.zeros(1, 4, 4)
    m[:, :, :3] = 1.0  # prediction: three left columns
    out = metrics.localization_metrics(m, mask)
    # object IoU 8/12, background IoU 4/8, mIoU 7/12, pixel accuracy 12/16.
    assert out["iou_object"].item() == pytest.approx(2 / 3)
    assert out["miou"].item() == pytest.approx(7 / 12)
    assert out["pixel_accuracy"].item() == pytest.approx(0.75)
    # Soft scores: 8 positives among 12 tied top scores -> AP = precision 8/12 at recall 1.
    assert out["ap"].item() == pytest.approx(8 / 12)
    assert out["pointing"].item() == 1.0


def test_localization_perfect_and_constant_maps():
    mask = torch.zeros(2, 8, 8)
    mask[:, 2:5, 3:6] = 1.0
    perfect = metrics.localization_metrics(mask.clone(), mask)
    for k in ("pixel_accuracy", "miou", "ap", "pointing"):
        assert torch.allclose(perfect[k], torch.ones(2)), k
    const = metrics.localization_metrics(torch.ones(2, 8, 8), mask)
    # A constant map predicts no object pixel: background IoU 55/64, object IoU 0.
    assert const["miou"][0].item() == pytest.approx(0.5 * 55 / 64)


def test_patch_map_localization_uses_grid():
    mask = torch.zeros(1, 8, 8)
    mask[:, :4, :4] = 1.0
    patch = torch.tensor([[1.0, 0.0, 0.0, 0.0]])  # 2x2 grid, top-left patch
    out = metrics.localization_metrics(patch, mask, grid=(2, 2), upsample="nearest")
    assert out["miou"].item() == pytest.approx(1.0)
    assert out["pointing"].item() == 1.0


def test_pointing_game_toy():
    mask = torch.zeros(2, 4, 4)
    mask[:, 0, 0] = 1.0
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = 5.0  # hit
    maps[1, 3, 3] = 5.0  # miss
    assert metrics.localization_metrics(maps, mask)["pointing"].tolist() == [1.0, 0.0]


def test_average_precision_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (4, 50), generator=g).float()  # many ties
    targets = torch.rand(4, 50, generator=g) > 0.6
    ours = metrics.average_precision(scores, targets)
    for b in range(4):
        ref = sk.average_precision_score(targets[b].numpy(), scores[b].numpy())
        assert ours[b].item() == pytest.approx(ref)
    assert math.isnan(metrics.average_precision(scores[:1], torch.zeros(1, 50, dtype=torch.bool)).item())


def test_to_pixel_maps_shapes():
    m = torch.arange(6.0).reshape(1, 6)
    up = metrics.to_pixel_maps(m, (4, 6), grid=(2, 3), mode="nearest")
    assert up.shape == (1, 4, 6)
    assert up[0, 0, 0] == 0 and up[0, 3, 5] == 5
    with pytest.raises(ValueError):
        metrics.to_pixel_maps(m, (4, 6), grid=(2, 2))


# --------------------------------------------------------------------------- on a toy ViT


def _toy_vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=3).eval()


def test_explanation_maps_agree_with_core_and_are_deterministic():
    import iavutils as iu

    model = _toy_vit()
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = ev.explanation_maps(model, x, None, n_samples=3, seed=1)
    again = ev.explanation_maps(model, x, None, n_samples=3, seed=1, batch_size=2)
    assert set(maps) == set(ev.EXPLANATION_METHODS)
    for m, v in maps.items():
        assert v.shape == ((5, 16, 16) if m == "smoothgrad" else (5, 16)), m
        assert torch.allclose(v, again[m], atol=1e-5), m
    t = model(x).argmax(1)
    assert torch.allclose(maps["gmar_l1"], iu.gmar(model, x, t, norm="l1"), atol=1e-6)
    assert torch.allclose(maps["gmar_l2"], iu.gmar(model, x, t, norm="l2"), atol=1e-6)
    assert torch.allclose(maps["gradient_rollout"], iu.gradient_rollout(model, x, t), atol=1e-6)
    _, attn = iu.record_attention(model, x)
    assert torch.allclose(maps["rollout"], iu.attention_rollout(attn, 1), atol=1e-6)
    assert torch.allclose(maps["attention"], attn[:, -1, :, 0, 1:].mean(1), atol=1e-6)


def test_evaluate_explanations_and_table():
    model = _toy_vit()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, 16, 16, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    masks = torch.zeros(6, 16, 16)
    masks[:, 4:12, 4:12] = 1.0
    methods = ("rollout", "gmar_l1", "smoothgrad", "random", "attention_mean")
    res = ev.evaluate_explanations(model, x, y, masks, mean=MEAN, std=STD, methods=methods, n_samples=2,
                                   progress=False)
    assert res["positive.rollout"].shape == (10, 6)
    assert "patch_positive.smoothgrad" not in res and "patch_positive.random" in res and "patch_positive.rollout" not in res
    assert res["aav_mask"].shape == (6, 2, 2)
    table = ev.explanation_table({"toy": res})
    assert list(table["method"]) == list(methods)
    head = table.iloc[:4]
    assert head[["auc_positive", "auc_negative", "miou", "ap", "pointing"]].notna().all().all()
    # attention_mean gets only the patch-masking curve (Fig. 5), not the pixel curves.
    assert table.iloc[4][["auc_positive"]].isna().all() and table.iloc[4]["auc_patch_positive"] >= 0
    d = metrics.paired_difference(res, "gmar_l1", "rollout")
    assert d["low"] <= d["diff"] <= d["high"]


def test_precomputed_maps_are_used():
    model = _toy_vit()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    sg = torch.rand(3, 16, 16)
    maps = ev.explanation_maps(model, x, 0, ("smoothgrad", "smoothgrad_patch", "rollout"), precomputed={"smoothgrad": sg})
    assert torch.equal(maps["smoothgrad"], sg)
    assert torch.allclose(maps["smoothgrad_patch"], sg.reshape(3, 4, 4, 4, 4).mean((2, 4)).reshape(3, 16))


def test_run_explanation_eval_is_cached(tmp_path, monkeypatch):
    from fake_runs import write_fake_run

    write_fake_run(tmp_path, "tiny-dino")
    study = Study(("tiny-dino",), "embedded", tmp_path, AnalysisSpec(num_images=4, n_samples=2, device="cpu", progress=False))
    kw = dict(methods=("rollout", "gmar_l1", "smoothgrad", "random"))
    res = ev.run_explanation_eval(study, "tiny-dino", **kw)
    assert res["positive.gmar_l1"].shape == (10, 4) and res["loc.miou.rollout"].shape == (4,)
    calls = []
    monkeypatch.setattr(ev, "evaluate_explanations", lambda *a, **k: calls.append(1))
    again = ev.run_explanation_eval(study, "tiny-dino", **kw)
    assert not calls and torch.equal(again["positive.gmar_l1"], res["positive.gmar_l1"])
    cmp = ev.gmar_vs_rollout({"tiny-dino": res})
    assert set(cmp["mode"]) == {"positive", "negative"} and len(cmp) == 2


def test_gmar_vs_rollout_verdicts():
    fr = torch.tensor([0.0, 0.5, 1.0])
    ones, zeros = torch.ones(3, 20), torch.zeros(3, 20)
    zeros[0] = 1.0  # clean accuracy 1, then 0
    # GMAR's accuracy collapses at once (positive: better), rollout's stays.
    res = {"fractions": fr, "positive.gmar_l1": zeros, "positive.rollout": ones,
           "negative.gmar_l1": zeros, "negative.rollout": ones}
    out = ev.gmar_vs_rollout({"m": res}, pairs=(("gmar_l1", "rollout"),))
    verdict = dict(zip(out["mode"], out["better"]))
    assert verdict == {"positive": True, "negative": False}


def test_perturbation_reuses_given_clean_predictions():
    model, x, y, region = _object_world(B=4)
    good = region.expand(4, 16, 16)
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        plain = metrics.perturbation_curve(model, x, good, y, mean=MEAN, std=STD, fractions=[0.001, 0.5])
        n_plain = sum(calls)
        calls.clear()
        clean = model(x).argmax(1)
        calls.clear()
        reused = metrics.perturbation_curve(model, x, good, y, mean=MEAN, std=STD, fractions=[0.001, 0.5], clean=clean)
    finally:
        handle.remove()
    assert torch.equal(plain.correct, reused.correct)
    # fractions 0 and 0.001 (round(0.256) = 0 pixels) remove nothing: only 0.5 is forwarded
    assert n_plain == 3 * 4 and sum(calls) == 4
    # a wrong clean prediction is taken as given (so it must come from the same model and images)
    wrong = metrics.perturbation_curve(model, x, good, y, mean=MEAN, std=STD, fractions=[0.5], clean=1 - clean)
    assert wrong.correct[0].sum() == 0
    with pytest.raises(ValueError, match=r"clean must hold B=4 predicted classes, got shape \(3,\)"):
        metrics.perturbation_curve(model, x, good, y, mean=MEAN, std=STD, clean=clean[:3])
