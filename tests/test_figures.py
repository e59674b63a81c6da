"""The figures of chapters 08, 10 and 11 (iavutils.publish.figures) draw from hand-made inputs; every
figure with attention or explanation maps (also chapter 05's example_maps, iavutils.publish.plots)
puts them on a common colour scale with a colour bar and the maps' entropies in the titles."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from test_chapter_reports import _ablation_result, _explanation_results, _result  # noqa: E402

from iavutils.analysis import explanation_report as er  # noqa: E402
from iavutils.analysis import head_ablation as ha  # noqa: E402
from iavutils.analysis import pretraining_types as pt  # noqa: E402
from iavutils.analysis.explanations import explanation_table  # noqa: E402
from iavutils.core.scores import attention_entropy  # noqa: E402
from iavutils.publish import figures, plots, style  # noqa: E402

MODELS = ["tiny-sup", "tiny-dino"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_chapter_08_figures(monkeypatch):
    results = {p: _explanation_results() for p in MODELS}
    table = explanation_table(results)
    order = er.method_order(table)
    assert isinstance(figures.perturbation_curves(er.perturbation_frame(results), MODELS, order), Figure)
    assert isinstance(figures.auc_bars(table, MODELS, order), Figure)
    assert isinstance(figures.localization_bars(table, MODELS, order), Figure)
    fig, means = figures.mask_aav_lines(er.mask_aav_frame(results), MODELS)
    assert isinstance(fig, Figure) and list(means.index) == MODELS and list(means.columns) == [1, 2]
    images = {"x": torch.zeros(2, 3, 32, 32), "mask": torch.ones(2, 32, 32)}
    monkeypatch.setattr("iavutils.analysis.images.load_images", lambda *a, **k: images)
    fig = figures.explanation_grid(results, "embedded", MODELS, order, n_examples=1)
    # the panels as before; the common scale's colour bar is one more axes
    assert len(_panels(fig)) == 1 * len(MODELS) * (2 + len(order)) and len(_colorbars(fig)) == 1


def _colorbars(fig):
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def _panels(fig):
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is None]


def test_explanation_grid_one_scale_and_entropies(monkeypatch):
    results = {p: _explanation_results() for p in MODELS}
    order = sorted(k.split(".", 1)[1] for k in results[MODELS[0]] if k.startswith("map."))
    near_uniform = 1.0 + 1e-3 * torch.rand(64)
    results[MODELS[0]][f"map.{order[0]}"][0] = near_uniform
    results[MODELS[1]][f"map.{order[0]}"][0] = torch.rand(64) ** 8  # peaked
    images = {"x": torch.zeros(2, 3, 32, 32), "mask": torch.ones(2, 32, 32)}
    monkeypatch.setattr("iavutils.analysis.images.load_images", lambda *a, **k: images)
    fig = figures.explanation_grid(results, "embedded", MODELS, order, n_examples=1)
    maps = [ax for ax in _panels(fig) if ax.get_images() and ax.get_images()[0].get_cmap().name == "inferno"]
    assert len(maps) == len(MODELS) * len(order)
    clims = {ax.get_images()[0].get_clim() for ax in maps}
    assert len(clims) == 1
    vmin, vmax = clims.pop()
    assert vmin == 0 and vmax > 1
    for ax, (p, m) in zip(maps, [(p, m) for p in MODELS for m in order]):
        assert ax.get_title().endswith(f"H={style.map_entropy(results[p][f'map.{m}'][0]):.2f}")
    flat = maps[0].get_images()[0].get_array()
    assert (flat.max() - flat.min()) / (vmax - vmin) < 0.01
    peaked = maps[len(order)].get_images()[0].get_array()
    assert (peaked.max() - peaked.min()) / (vmax - vmin) > 0.3


def _example(preset: str, peaked: bool) -> dict:
    g = torch.Generator().manual_seed(int(peaked))
    attn = torch.rand(3, 2, 4, 4, generator=g) ** 8 if peaked else 1.0 + 1e-3 * torch.rand(3, 2, 4, 4, generator=g)
    attn = attn / attn.sum((-2, -1), keepdim=True) * 0.8  # CLS rows do not sum to 1 over the patches
    return {"preset": preset, "label": 0, "image": np.random.default_rng(0).random((16, 16, 3)),
            "smoothgrad": torch.rand(16, 16, generator=g).numpy(), "cls_attn": attn.numpy(),
            "iav": torch.rand(3, 2, generator=g).numpy()}


def test_example_maps_one_scale_bars_and_entropies():
    exs = [_example("tiny-sup", False), _example("tiny-dino", True)]
    fig = plots.example_maps(exs, classes=["a"])
    heads = [ax for ax in fig.axes if ax.get_title().startswith("L")]
    assert len(heads) == 2 * 3 * 2  # rows × layers (1, 2, 3) × heads
    clims = {ax.get_images()[0].get_clim() for ax in heads}
    assert len(clims) == 1
    vmin, vmax = clims.pop()
    sg = {ax.get_images()[0].get_clim() for ax in fig.axes if ax.get_title().startswith("SmoothGrad")}
    assert len(sg) == 1
    assert len([ax for ax in _colorbars(fig) if "uniform" in ax.get_ylabel()]) == 2  # attention and SmoothGrad
    for ax, (l, h) in zip(heads[:6], [(l, h) for l in (1, 2, 3) for h in (0, 1)]):
        e = attention_entropy(torch.from_numpy(exs[0]["cls_attn"][l - 1, h]).reshape(-1))
        assert ax.get_title() == f"L{l}h{h}\ns={exs[0]['iav'][l - 1, h]:.2f} H={float(e):.2f}"
        flat = ax.get_images()[0].get_array()
        assert (flat.max() - flat.min()) / (vmax - vmin) < 0.01  # near-uniform heads look flat
    assert max(float(np.ptp(ax.get_images()[0].get_array())) for ax in heads[6:]) / (vmax - vmin) > 0.5


def test_chapter_10_figures():
    results = {p: _ablation_result(0.1, 1.0) for p in MODELS}
    assert isinstance(figures.ablation_scatter(ha.head_frame(results, MODELS), MODELS), Figure)
    fig, means = figures.group_bars(ha.group_frame(results, MODELS, "rgroup"), "relative split")
    assert isinstance(fig, Figure) and ("logit drop", "low-IA heads") in means.columns


def test_chapter_11_figures():
    trends = {p: {"epochs": torch.tensor([0, 1]), "global_iav": torch.rand(2, 3, 4)} for p in MODELS}
    assert isinstance(figures.trend_lines(pt.trend_frame(trends), MODELS), Figure)
    fig = figures.permutation_nulls({"global-IAV": _result(0.5, 0.5, 0.3), "entropy (control)": _result(0.2, 1, 0.3)})
    assert len(fig.axes) == 2
