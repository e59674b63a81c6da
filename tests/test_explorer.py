"""The head explorer's pieces: numbers by chapter 05's path, small PNGs, jslink-only wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import iavutils as iu
from iavutils.analysis import head_maps
from iavutils.core.noise import image_seed
from iavutils.core.spec import AnalysisSpec
from iavutils.publish import explorer


def _maps(L: int = 3, H: int = 2, size: int = 32, grid: int = 4, preset: str = "m") -> head_maps.HeadMaps:
    rng = np.random.default_rng(0)
    scores = rng.random((L, H))
    scores[0, 1] = np.nan  # an undefined score must render, not crash
    return head_maps.HeadMaps(
        preset=preset, image_index=3, image=rng.random((size, size, 3)), label=1, prediction=2, target=1,
        smoothgrad=rng.random((size, size)), cls_attn=rng.random((L, H, grid, grid)), scores=scores,
        class_names=("a", "b", "c"), pretraining="supervised", n_samples=4, noise_level=0.15)


def test_compute_head_maps_is_the_core_ia_score() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                              num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    spec = AnalysisSpec(n_samples=3, noise_level=0.1, seed=5, progress=False)
    r = head_maps.compute_head_maps(model, x, target=1, spec=spec, index=7)
    assert r["scores"].shape == (2, 2) and r["cls_attn"].shape == (2, 2, 16)
    assert r["smoothgrad"].shape == (32, 32) and int(r["target"]) == 1

    _, attn = iu.record_attention(model, x)
    # One seeding rule: image 7's noise is seeded by image_seed(seed, 7), as in the chapters.
    sg = iu.smoothgrad(model, x, 1, n_samples=3, noise_level=0.1, seeds=torch.tensor([image_seed(5, 7)]))
    expected = iu.ia_score(iu.patch_pool(sg, (4, 4)), iu.cls_attention(attn, 1))[0]
    torch.testing.assert_close(r["scores"], expected)
    torch.testing.assert_close(r["smoothgrad"], sg[0])


def test_compute_head_maps_ignores_the_precision_mode() -> None:
    # tol is a rule over a dataset's global-IAVs; the explorer's maps are labelled with n_samples.
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                              num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    spec = AnalysisSpec(n_samples=3, noise_level=0.1, seed=5, progress=False)
    fixed = head_maps.compute_head_maps(model, x, target=1, spec=spec, index=7)
    with_tol = head_maps.compute_head_maps(model, x, target=1, spec=spec.replace(tol=0.01), index=7)
    torch.testing.assert_close(with_tol["smoothgrad"], fixed["smoothgrad"])
    torch.testing.assert_close(with_tol["scores"], fixed["scores"])


def test_composites_are_small_distinct_pngs() -> None:
    m = _maps()
    pngs = explorer.render_composites(m, panel_px=100)
    assert len(pngs) == m.num_layers and all(len(row) == m.num_heads for row in pngs)
    flat = [b for row in pngs for b in row]
    assert all(b.startswith(b"\x89PNG\r\n\x1a\n") for b in flat)
    assert max(len(b) for b in flat) < 25_000
    assert len(set(flat)) == len(flat), "every (layer, head) must show its own view"


def test_composites_leave_the_pyplot_backend_alone() -> None:
    """The notebook's inline backend must survive, or the static overview is never drawn."""
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    try:
        plt.switch_backend("svg")  # stands in for Jupyter's inline backend
        explorer.render_composites(_maps(), panel_px=40)
        assert matplotlib.get_backend() == "svg"
    finally:
        plt.switch_backend(before)


def test_widget_is_wired_with_jslink_only() -> None:
    import ipywidgets as w

    maps = [_maps(preset="a"), _maps(preset="b")]
    pngs = [explorer.render_composites(m, panel_px=60) for m in maps]
    box = explorer.explorer_widget(maps, pngs)
    links = box._iav_links
    from ipywidgets.widgets.widget_link import Link

    assert all(isinstance(link, Link) for link in links)
    layer_links = [k for k in links if k.source[0].description == "layer"]
    head_links = [k for k in links if k.source[0].description == "head"]
    # One layer link per model (its outer stack), one head link per (model, layer) inner stack.
    assert len(layer_links) == 2 and len(head_links) == 2 * 3
    assert {k.target[1] for k in links} == {"selected_index"}
    sliders = {k.source[0] for k in links}
    assert len(sliders) == 2, "models with the same L x H share one pair of sliders"
    for slider in sliders:
        # No Python callbacks: they would do nothing in the static book.
        notifiers = slider._trait_notifiers.get("value", {}).get("change", [])
        assert not [n for n in notifiers if getattr(n, "__self__", None) is not slider]
    layer = layer_links[0].source[0]
    assert (layer.min, layer.max, layer.value) == (1, 3, 1), "layers count from 1, like the book's figures"
    outer = layer_links[0].target[0]
    # Index 0 is a placeholder the slider never selects; index l is layer l.
    assert isinstance(outer, w.Stack) and len(outer.children) == 3 + 1 and outer.selected_index == 1
    assert all(isinstance(inner, w.Stack) and len(inner.children) == 2 for inner in outer.children[1:])


def test_several_images_get_a_linked_picker() -> None:
    import ipywidgets as w

    a, b = _maps(), _maps()
    b.image_index = 7
    box = explorer.explorer_widget([a, b], [explorer.render_composites(m, panel_px=50) for m in (a, b)])
    pickers = [k for k in box._iav_links if isinstance(k.source[0], w.ToggleButtons)]
    assert len(pickers) == 1 and pickers[0].source[1] == "index"


def test_top_heads_skips_undefined_scores() -> None:
    m = _maps()
    table = explorer.top_heads([m], k=10)
    assert len(table) == m.num_layers * m.num_heads - 1  # the NaN head is left out
    assert table["layer"].min() >= 1
    assert list(table["IA-Score"]) == sorted(table["IA-Score"], reverse=True)


@pytest.mark.parametrize("raw, expected", [(3, [3]), ("3", [3]), ("0, 5,5,9", [0, 5, 9]), ([2, 1], [2, 1])])
def test_parse_indices(raw: object, expected: list[int]) -> None:
    assert head_maps.parse_indices(raw) == expected


def test_explorer_smoothgrad_is_chapter_05s_for_the_same_image(tmp_path) -> None:
    """One seeding rule: the explorer's SmoothGrad of dataset image i is chapter 05's (cached
    checkpoint analysis) of image i, for two different images."""
    from fake_runs import write_fake_run

    from iavutils.analysis.iavs import checkpoint_analysis

    write_fake_run(tmp_path, "tiny-sup")
    spec = AnalysisSpec(num_images=6, n_samples=2, device="cpu", progress=False)
    chapter = checkpoint_analysis("tiny-sup", "embedded", run_dir=tmp_path, spec=spec)
    picked = chapter["indices"][[1, 4]].tolist()
    assert picked[0] != picked[1]
    maps = head_maps.load_head_maps("tiny-sup", "embedded", str(tmp_path), picked, spec)
    for row, m in zip((1, 4), maps):
        assert m.image_index == int(chapter["indices"][row])
        torch.testing.assert_close(torch.from_numpy(m.smoothgrad), chapter["smoothgrad"][row], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.from_numpy(m.scores), chapter["iav"][row], rtol=1e-4, atol=1e-5,
                                   equal_nan=True)
    # ...and the two images' noise differs (no shared generator): their maps are not the same.
    assert not np.allclose(maps[0].smoothgrad, maps[1].smoothgrad)


def test_summary_figure_shares_scales_with_bars_and_entropy() -> None:
    """SmoothGrad panels share one colour scale, best-head attention panels another, each with a
    colour bar; a near-uniform head comes out flat against the common scale."""
    import matplotlib.pyplot as plt

    from iavutils.publish.style import map_entropy

    flat, peaked = _maps(preset="flat"), _maps(preset="peaked")
    flat.cls_attn = 1.0 + 1e-3 * np.random.default_rng(1).random(flat.cls_attn.shape)
    peaked.cls_attn = np.random.default_rng(2).random(peaked.cls_attn.shape) ** 8
    peaked.smoothgrad = peaked.smoothgrad * 100  # another gradient scale: same colours per unit of mean
    fig = explorer.summary_figure([flat, peaked])
    try:
        bars = [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]
        assert sum("uniform" in ax.get_ylabel() for ax in bars) == 2
        rows = [ax for ax in fig.axes if ax not in bars]
        sg = [rows[4 * i + 1].get_images()[1] for i in range(2)]
        att = [rows[4 * i + 2].get_images()[1] for i in range(2)]
        assert len({im.get_clim() for im in sg}) == 1 and len({im.get_clim() for im in att}) == 1
        vmin, vmax = att[0].get_clim()
        assert vmin == 0 and vmax > 1
        a = att[0].get_array()
        assert (a.max() - a.min()) / (vmax - vmin) < 0.01
        b = att[1].get_array()
        assert (b.max() - b.min()) / (vmax - vmin) > 0.3
        for ax, m in zip((rows[2], rows[6]), (flat, peaked)):
            s = np.where(np.isfinite(m.scores), m.scores, -np.inf)
            bl, bh = np.unravel_index(int(np.argmax(s)), s.shape)
            assert ax.get_title().endswith(f"entropy {map_entropy(m.cls_attn[bl, bh]):.2f}")
    finally:
        plt.close(fig)
