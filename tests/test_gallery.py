"""Chapter 06's Fig. 1-style gallery: its data (heads, images, shapes) and its figure (common
colour scales, colour bars, IA-Score and entropy in the titles), on hand-made tensors."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from iavutils.analysis import gallery  # noqa: E402
from iavutils.analysis.study import Study  # noqa: E402
from iavutils.core.scores import attention_entropy  # noqa: E402
from iavutils.core.spec import AnalysisSpec  # noqa: E402
from iavutils.publish.gallery_figure import gallery_figure  # noqa: E402

MODELS = ("tiny-sup", "tiny-dino")
N, L, H, G, S = 10, 6, 4, 8, 32  # images, layers, heads, patch grid side, image side


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_layers_and_heads_are_early_middle_last_evenly_spaced():
    assert gallery.gallery_layers(12) == [1, 6, 12]
    assert gallery.gallery_layers(6) == [1, 3, 6]
    assert gallery.gallery_layers(2) == [1, 2] and gallery.gallery_layers(1) == [1]
    assert gallery.gallery_heads(12, 12, 3) == [(l, h) for l in (1, 6, 12) for h in (0, 6, 11)]
    assert gallery.gallery_heads(4, 2, 3) == [(l, h) for l in (1, 2, 4) for h in (0, 1)]  # H < per_layer: all
    assert gallery.gallery_heads(3, 5, 1) == [(1, 0), (2, 0), (3, 0)]
    with pytest.raises(ValueError):
        gallery.gallery_heads(3, 5, 0)


def _analysis(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    attn = torch.rand(N, L, H, G * G, generator=g)
    return {"cls_attn": attn / attn.sum(-1, keepdim=True) * 0.9, "smoothgrad": torch.rand(N, S, S, generator=g),
            "iav": torch.rand(N, L, H, generator=g), "indices": torch.arange(N) * 3, "labels": torch.arange(N) % 3,
            "targets": (torch.arange(N) + 1) % 3}


@pytest.fixture
def study(monkeypatch):
    runs = {p: {4: _analysis(k)} for k, p in enumerate(MODELS)}
    monkeypatch.setattr("iavutils.analysis.iavs.analyses", lambda study, stride, desc: runs)
    images = {"x": torch.rand(N, 3, S, S), "y": torch.arange(N) % 3, "indices": torch.arange(N) * 3}
    monkeypatch.setattr("iavutils.analysis.images.load_images", lambda *a, **k: images)
    return Study(MODELS, "embedded", "", AnalysisSpec(num_images=N)), runs


def test_gallery_data_reads_the_chosen_heads_of_the_first_images(study):
    st, runs = study
    recs = gallery.gallery_data(st, num_images=3, heads_per_layer=2)
    assert [(r["sample"], r["model"]) for r in recs] == [(s, p) for s in range(3) for p in MODELS]
    heads = [(l, h) for l in (1, 3, 6) for h in (0, 3)]
    for r in recs:
        a = runs[r["model"]][4]
        s = r["sample"]
        assert r["heads"] == heads and r["index"] == 3 * s and r["target"] == (s + 1) % 3
        assert r["image"].shape == (S, S, 3) and r["smoothgrad"].shape == (S, S)
        assert r["attn"].shape == (len(heads), G, G) and r["ia_score"].shape == r["entropy"].shape == (len(heads),)
        for k, (l, h) in enumerate(heads):
            assert np.allclose(r["attn"][k].ravel(), a["cls_attn"][s, l - 1, h].numpy())
            assert r["ia_score"][k] == pytest.approx(float(a["iav"][s, l - 1, h]))
            assert r["entropy"][k] == pytest.approx(float(attention_entropy(a["cls_attn"][s, l - 1, h].double())))


def test_gallery_data_takes_given_samples_and_refuses_others(study):
    st, _ = study
    recs = gallery.gallery_data(st, samples=[7, 2])
    assert [r["sample"] for r in recs] == [7, 7, 2, 2]
    assert len(gallery.gallery_data(st, num_images=50)) == N * len(MODELS)  # at most the analysis set
    with pytest.raises(ValueError, match="outside"):
        gallery.gallery_data(st, samples=[N])


def _records(uniform_eps: float = 1e-3) -> list[dict]:
    """Two rows; head 0 of the first row is near-uniform, the others are peaked."""
    rng = np.random.default_rng(0)
    heads = [(1, 0), (1, 1), (3, 0), (3, 1), (6, 0), (6, 1)]
    recs = []
    for i in range(2):
        attn = rng.random((len(heads), G, G)) ** 8  # peaked
        if i == 0:
            attn[0] = 1.0 + uniform_eps * rng.random((G, G))  # near-uniform
        attn /= attn.reshape(len(heads), -1).sum(-1)[:, None, None]
        ent = attention_entropy(torch.from_numpy(attn.reshape(len(heads), -1))).numpy()
        recs.append({"model": MODELS[i], "sample": 0, "index": 5, "label": 1, "target": 1,
                     "image": rng.random((S, S, 3)), "smoothgrad": rng.random((S, S)) * 10 ** i, "heads": heads,
                     "attn": attn, "ia_score": rng.random(len(heads)), "entropy": ent})
    return recs


def _colorbars(fig):
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def _head_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_title().startswith("L")]


def test_gallery_figure_shares_one_scale_with_bars_and_titles():
    recs = _records()
    fig = gallery_figure(recs, classes=["a", "b"])
    heads = _head_axes(fig)
    assert len(heads) == 2 * 6
    clims = {ax.get_images()[0].get_clim() for ax in heads}
    assert len(clims) == 1  # one scale for every attention panel
    vmin, vmax = clims.pop()
    assert vmin == 0 and vmax > 1
    sg = [ax.get_images()[0].get_clim() for ax in fig.axes if ax not in _colorbars(fig) and ax.get_images()
          and ax.get_images()[0].get_cmap().name == "inferno"]
    assert len(sg) == 2 and len(set(sg)) == 1  # the SmoothGrad column shares its own scale
    bars = _colorbars(fig)
    assert len(bars) == 2  # SmoothGrad and attention
    for ax, (l, h), s, e in zip(heads[:6], recs[0]["heads"], recs[0]["ia_score"], recs[0]["entropy"]):
        assert ax.get_title() == f"L{l}h{h}\nIA {s:.2f} · H {e:.2f}"
    assert "one for the figure" in fig._suptitle.get_text()
    # the near-uniform head is flat: its pixel range is tiny against the common scale
    flat = heads[0].get_images()[0].get_array()
    assert (flat.max() - flat.min()) / (vmax - vmin) < 0.01
    assert abs(float(flat.mean()) - 1.0) < 1e-9
    peaked = heads[1].get_images()[0].get_array()
    assert (peaked.max() - peaked.min()) / (vmax - vmin) > 0.3


def test_gallery_figure_per_layer_scale():
    recs = _records()
    for r in recs:
        r["attn"][4:] = 1.0 / (G * G)  # the last layer uniform: its own scale is [0, 1]
    fig = gallery_figure(recs, scale="layer")
    clims: dict[int, set] = {}
    for ax in _head_axes(fig):
        clims.setdefault(int(ax.get_title()[1]), set()).add(ax.get_images()[0].get_clim())
    assert all(len(c) == 1 for c in clims.values()) and clims[6] == {(0.0, 1.0)}
    assert len({c for v in clims.values() for c in v}) > 1
    assert len(_colorbars(fig)) == 1 + 3
    assert "per layer position" in fig._suptitle.get_text()
    with pytest.raises(ValueError):
        gallery_figure(recs, scale="panel")
