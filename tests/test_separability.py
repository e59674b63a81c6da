"""Separability: synthetic trends that are / are not separable."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from iavutils.analysis import separability as sep
from iavutils.analysis.study import Study
from iavutils.core.spec import AnalysisSpec


def _trends(n_models: int = 8, epochs: int = 4, separable: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    trends, labels = {}, {}
    for i in range(n_models):
        lab = i % 2
        base = torch.rand(epochs, 3, 4, generator=g) * 0.2 + 0.4
        if separable:
            # Self-supervised runs: high scores in the last layer.
            base[:, -1] += 0.3 * lab
        trends[f"m{i}"] = base
        labels[f"m{i}"] = lab
    return trends, labels


def test_summaries():
    v = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    assert sep.summarize_checkpoint(v).tolist() == [2.0, 2.0, 1.0, 0.0]
    assert sep.summarize_checkpoint(v, "layer_sorted").tolist() == [1.0, 3.0, 2.0, 2.0]
    assert sep.summarize_checkpoint(torch.tensor(0.9)).tolist() == [pytest.approx(0.9)]
    with pytest.raises(ValueError):
        sep.summarize_checkpoint(v, "nope")


def test_feature_units_and_groups():
    trends, labels = _trends(4, epochs=3)
    f = sep.trend_features(trends, labels)
    assert f.X.shape == (12, 6) and list(f.groups[:3]) == ["m0"] * 3
    r = sep.trend_features(trends, labels, unit="run")
    assert r.X.shape == (4, 18)
    seeds = sep.trend_features(trends, labels, groups={k: "A" if k in ("m0", "m2") else "B" for k in trends})
    assert set(seeds.groups) == {"A", "B"}


def test_separable_features_high_accuracy_small_p():
    trends, labels = _trends(8, separable=True)
    res = sep.separability_test(sep.trend_features(trends, labels))
    assert res.accuracy == 1.0
    assert res.exact and res.null.size == math.comb(8, 4) - 1
    # Only the true labelling and its swap reach accuracy 1.
    assert res.p_value == pytest.approx(2 / 70)
    assert res.min_p_value == pytest.approx(2 / 70)
    assert "p = 0.029" in res.summary()


def test_shuffled_features_not_separable():
    trends, labels = _trends(8, separable=False, seed=1)
    res = sep.separability_test(sep.trend_features(trends, labels))
    assert res.p_value > 0.1
    assert res.accuracy < 0.9


def test_four_models_min_p_and_determinism():
    trends, labels = _trends(4, separable=True)
    f = sep.trend_features(trends, labels)
    a = sep.separability_test(f)
    b = sep.separability_test(f)
    assert a.min_p_value == pytest.approx(1 / 3)  # 2 + 2 models: 6 labellings, swap ties
    assert a.p_value >= a.min_p_value - 1e-12
    assert a.accuracy == b.accuracy and np.array_equal(a.null, b.null)
    feats = sep.trend_features(*_trends(10, epochs=2))
    mc = sep.separability_test(feats, n_permutations=12, seed=3)
    mc2 = sep.separability_test(feats, n_permutations=12, seed=3)
    assert not mc.exact and mc.p_value == mc2.p_value and mc.min_p_value == pytest.approx(1 / 13)
    assert np.array_equal(mc.null, mc2.null)


def test_rejects_too_few_groups_or_mixed_groups():
    trends, labels = _trends(3)
    with pytest.raises(ValueError, match="2 groups"):
        sep.separability_test(sep.trend_features(trends, labels))
    trends, labels = _trends(4)
    with pytest.raises(ValueError, match="both classes"):
        sep.separability_test(sep.trend_features(trends, labels, groups={k: "same" for k in trends}))


def test_report_table_and_nan_controls_skipped():
    trends, labels = _trends(4)
    full = {k: {"global_iav": v, "entropy": v + 1.0, "accuracy": torch.full((v.shape[0],), float("nan"))}
            for k, v in trends.items()}
    table, results = sep.separability_report(full, labels)
    assert list(table["features"]) == ["global-IAV", "entropy (control)"]
    assert (table["min_p_value"] > 0.3).all() and set(results) == {"global-IAV", "entropy (control)"}


# --------------------------------------------------------------------------- book entry point


def _fake_run(root, presets, epochs=3):
    """Random-weight tiny presets with `epochs` checkpoints in the training layout."""
    import json

    from safetensors.torch import save_file

    from iavutils.world.models import build_model

    for k, preset in enumerate(presets):
        run = root / "embedded" / preset
        (run / "checkpoints").mkdir(parents=True)
        torch.manual_seed(k)
        model = build_model(preset, num_classes=10)
        metrics = []
        for e in range(epochs):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn_like(p))
            save_file({n: v.detach().clone().contiguous() for n, v in model.state_dict().items()},
                      run / "checkpoints" / f"epoch_{e:03d}.safetensors")
            metrics.append({"epoch": e, "val_acc": 0.1 + 0.05 * e + 0.01 * k})
        (run / "config.json").write_text(json.dumps({"preset": preset, "dataset": "embedded", "num_classes": 10}))
        (run / "metrics.json").write_text(json.dumps(metrics))
    return root


def test_checkpoint_trends_and_report_on_a_run(tmp_path):
    from iavutils.analysis import checkpoints as ex

    presets = ["tiny-mim", "tiny-dino", "tiny-sup", "tiny-sup21k"]
    run = _fake_run(tmp_path, presets)
    small = AnalysisSpec(num_images=4, n_samples=2, noise_level=0.15, seed=0, device="cpu", progress=False)
    trends = sep.checkpoint_trends(Study(presets, "embedded", run, small), epoch_stride=2)
    assert trends["tiny-dino"]["epochs"].tolist() == [0, 2]
    assert trends["tiny-dino"]["global_iav"].shape == (2, 6, 4)
    assert trends["tiny-sup"]["accuracy"].tolist() == pytest.approx([0.12, 0.22])
    labels = {p: int(ex.pretraining(p) == "self-supervised") for p in presets}
    table, results = sep.separability_report(trends, labels)
    assert list(table["features"]) == ["global-IAV", "entropy (control)", "accuracy (control)"]
    assert table["min_p_value"].tolist() == pytest.approx([1 / 3] * 3)
