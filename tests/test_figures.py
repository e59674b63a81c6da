"""The figures of chapters 08, 10 and 11 (iavutils.publish.figures) draw from hand-made inputs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from test_chapter_reports import _ablation_result, _explanation_results, _result  # noqa: E402

from iavutils.analysis import explanation_report as er  # noqa: E402
from iavutils.analysis import head_ablation as ha  # noqa: E402
from iavutils.analysis import pretraining_types as pt  # noqa: E402
from iavutils.analysis.explanations import explanation_table  # noqa: E402
from iavutils.publish import figures  # noqa: E402

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
    assert len(fig.axes) == 1 * len(MODELS) * (2 + len(order))


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
