"""The layer × head explorer widget: browse one image's attention maps, SmoothGrad and IAV head by head.

For each model and image the explorer pre-renders one small composite PNG per (layer, head):

* that head's class-token attention over the image,
* the image's SmoothGrad map (the attribution every IA-Score compares against),
* the image's IAV heat-map (``L × H`` IA-Scores) with the selected head outlined,

with the head's IA-Score in the title. Two ``IntSlider``\\ s (layer, head) select the image to
show through nested ``widgets.Stack``\\ s (outer over layers, inner over heads) wired with
``jslink`` only: the links live in the browser, so the explorer is as interactive in the static
book (papermill saves the widget state, the offline widget manager replays it) as in
JupyterLab. Python callbacks (``observe``/``interact``) would do nothing in the book.

Numbering follows the rest of the book: layers from 1 (as in the paper), heads from 0.

The numbers are analysis (:mod:`iavutils.analysis.head_maps`: :class:`HeadMaps`, computed and
cached by chapter 05's path, so image ``i``'s SmoothGrad equals chapter 05's); this module is
the publishing side, each piece usable alone:

* :func:`render_composites` / :func:`summary_figure` / :func:`top_heads` — pure rendering to
  PNG bytes / a figure / a table,
* :func:`explorer_widget` — the widget wiring,

and :func:`build_explorer`, what the notebook calls: load the finetuned checkpoints, compute
(cached in the run directory), render, wire.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..analysis.head_maps import HeadMaps, load_head_maps, parse_indices
from ..core.spec import AnalysisSpec

__all__ = [
    "render_composites",
    "png_bytes",
    "summary_figure",
    "top_heads",
    "explorer_widget",
    "build_explorer",
]


# ----------------------------------------------------------------------------- rendering


def png_bytes(fig: Any, colors: int = 256, dpi: float | None = None) -> bytes:
    """Render a matplotlib figure to a small palette PNG.

    An octree palette of 256 colours keeps small, saturated regions (a thin object on a
    background) true to colour, where median cut merged them away, and the PNG still shrinks
    about threefold, which is what keeps a page with hundreds of pre-rendered heads small.

    Args:
        fig: the figure.
        colors: palette size (``0``: keep full RGB).
        dpi: render resolution (default: the figure's).

    Returns:
        PNG file contents.
    """
    from PIL import Image

    if dpi is None and hasattr(fig.canvas, "buffer_rgba"):
        # Straight from the Agg buffer: no PNG encode/decode round trip before quantising.
        fig.canvas.draw()
        img = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    else:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi or fig.dpi, facecolor="white")
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return _quantized_png(np.asarray(img), colors)


def _quantized_png(rgb: np.ndarray, colors: int) -> bytes:
    """``[H,W,3]`` uint8 -> PNG bytes, palette-quantised unless ``colors`` is 0."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgb))
    if colors:
        img = img.quantize(colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _upsample(patch_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a ``[gh,gw]`` patch map to the image size, for overlays."""
    t = torch.as_tensor(patch_map, dtype=torch.float32)[None, None]
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    return np.zeros_like(a) if not hi > lo else (a - lo) / (hi - lo)


def _score_text(s: float) -> str:
    return "n/a (zero attribution)" if not np.isfinite(s) else f"{s:.3f}"


def render_composites(maps: HeadMaps, panel_px: int = 130, colors: int = 256) -> list[list[bytes]]:
    """One composite PNG per (layer, head): image | attention | SmoothGrad | IAV, head marked.

    The figure is drawn once and only the changing artists are updated per head, which is
    several times faster than a figure per head.

    Args:
        maps: the image's maps.
        panel_px: height of each panel in pixels.
        colors: PNG palette size (see :func:`png_bytes`).

    Returns:
        ``pngs[layer][head]``.
    """
    # An explicit Figure on its own Agg canvas: pyplot's backend is left alone (switching it to
    # agg made every later plt.show() of the notebook, the static overview included, draw nothing).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    L, H = maps.num_layers, maps.num_heads
    size = maps.image.shape[:2]
    dpi = 100
    fig = Figure(figsize=(4.55 * panel_px / dpi, 1.4 * panel_px / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1, max(1.0, H / L) * 1.25]})
    fig.subplots_adjust(left=0.015, right=0.97, top=0.76, bottom=0.17, wspace=0.3)
    gray = maps.image.mean(axis=-1)
    small = dict(fontsize=7)

    ax_img, ax_att, ax_sg, ax_iav = axes
    for ax in axes:
        ax.grid(False)  # the book's seaborn style draws grids over images otherwise
    # "antialiased": crisp pixels when a 32-pixel image is enlarged, smooth (and smaller to
    # store) when a 224-pixel photo is reduced.
    ax_img.imshow(maps.image, interpolation="antialiased")
    ax_img.set_title(f"image ({maps.class_name(maps.label)})", **small)
    ax_att.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="antialiased")
    att = ax_att.imshow(np.zeros(size), cmap="inferno", vmin=0, vmax=1, alpha=0.6,
                        interpolation="antialiased")
    ax_att.set_title("attention of this head", **small)

    ax_sg.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="antialiased")
    ax_sg.imshow(_normalise(maps.smoothgrad), cmap="inferno", vmin=0, vmax=1, alpha=0.6,
                 interpolation="antialiased")
    ax_sg.set_title(f"SmoothGrad ({maps.class_name(maps.target)})", **small)
    for ax in (ax_img, ax_att, ax_sg):
        ax.set_xticks([])
        ax.set_yticks([])

    scores = np.ma.masked_invalid(maps.scores)
    im = ax_iav.imshow(scores, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax_iav.set_title("IAV: IA-Score per head", **small)
    ax_iav.set_xlabel("head", labelpad=1, **small)
    ax_iav.set_ylabel("layer", labelpad=1, **small)
    step_h, step_l = max(1, H // 6), max(1, L // 6)
    ax_iav.set_xticks(range(0, H, step_h))
    ax_iav.set_yticks(range(0, L, step_l), [str(l + 1) for l in range(0, L, step_l)])
    ax_iav.tick_params(labelsize=6, length=2, pad=1)
    cbar = fig.colorbar(im, ax=ax_iav, fraction=0.08, pad=0.04)
    cbar.ax.tick_params(labelsize=6, length=2, pad=1)
    box = Rectangle((-0.5, -0.5), 1, 1, fill=False, edgecolor="#ff2d2d", lw=1.8)
    ax_iav.add_patch(box)
    title = fig.suptitle("", fontsize=8, y=0.97)

    # Blitting: draw everything that never changes once, then per head restore that
    # background and draw only the three changing artists (tick labels and colour bars are
    # most of the drawing time).
    for artist in (att, box, title):
        artist.set_animated(True)
    canvas = fig.canvas
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    out: list[list[bytes]] = []
    for layer in range(L):
        row = []
        for head in range(H):
            canvas.restore_region(background)
            att.set_data(_normalise(_upsample(maps.cls_attn[layer, head], size)))
            box.set_xy((head - 0.5, layer - 0.5))
            title.set_text(f"{maps.preset} · layer {layer + 1} · head {head} · "
                           f"IA-Score {_score_text(float(maps.scores[layer, head]))}")
            ax_att.draw_artist(att)
            ax_iav.draw_artist(box)
            fig.draw_artist(title)
            row.append(_quantized_png(np.asarray(canvas.buffer_rgba())[..., :3], colors))
        out.append(row)
    return out


def summary_figure(all_maps: Sequence[HeadMaps]) -> Any:
    """A static overview (for print and for readers without JavaScript): per model and image,
    the image, its SmoothGrad, its IAV and the attention of its highest-scoring head.

    The attention panels share one colour scale and the SmoothGrad panels another (maps in
    "× uniform" units, :func:`~iavutils.publish.style.relative_to_uniform`), each with a colour
    bar, so that a near-uniform head looks flat; the head's title carries its entropy.

    Args:
        all_maps: the maps to show, one row each.

    Returns:
        A matplotlib figure.
    """
    import matplotlib.pyplot as plt

    from .style import SCALE_LABEL, common_scale, map_entropy, relative_to_uniform, scale_colorbar

    n = len(all_maps)
    best = []
    for m in all_maps:
        finite = np.where(np.isfinite(m.scores), m.scores, -np.inf)
        best.append(np.unravel_index(int(np.argmax(finite)), finite.shape))
    sgs = [relative_to_uniform(m.smoothgrad) for m in all_maps]
    atts = [_upsample(relative_to_uniform(m.cls_attn[bl, bh]), m.image.shape[:2]) for m, (bl, bh) in zip(all_maps, best)]
    s_lo, s_hi = common_scale(sgs)
    a_lo, a_hi = common_scale(atts)
    fig, axes = plt.subplots(n, 4, figsize=(10.4, 2.1 * n + 0.3), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1, 1.3]})
    for row, m, sg, att, (bl, bh) in zip(axes, all_maps, sgs, atts, best):
        for ax in row:
            ax.grid(False)
        gray = m.image.mean(axis=-1)
        row[0].imshow(m.image, interpolation="nearest")
        row[0].set_title(f"{m.preset} · image {m.image_index}\nlabel {m.class_name(m.label)}, "
                         f"predicted {m.class_name(m.prediction)}", fontsize=8)
        row[1].imshow(gray, cmap="gray", vmin=0, vmax=1)
        sg_im = row[1].imshow(sg, cmap="inferno", alpha=0.6, vmin=s_lo, vmax=s_hi)
        row[1].set_title(f"SmoothGrad ({m.class_name(m.target)})", fontsize=8)
        row[2].imshow(gray, cmap="gray", vmin=0, vmax=1)
        att_im = row[2].imshow(att, cmap="inferno", alpha=0.6, vmin=a_lo, vmax=a_hi)
        row[2].set_title(f"best head: layer {bl + 1}, head {bh}\nIA-Score {_score_text(m.scores[bl, bh])}, "
                         f"entropy {map_entropy(m.cls_attn[bl, bh]):.2f}", fontsize=8)
        for ax in row[:3]:
            ax.set_xticks([])
            ax.set_yticks([])
        im = row[3].imshow(np.ma.masked_invalid(m.scores), cmap="viridis", vmin=0, vmax=1,
                           aspect="auto")
        row[3].set_yticks(range(m.num_layers), [str(l + 1) for l in range(m.num_layers)])
        row[3].set_xlabel("head", fontsize=8)
        row[3].set_ylabel("layer", fontsize=8)
        row[3].set_title("IAV (IA-Score per head)", fontsize=8)
        row[3].tick_params(labelsize=7)
        fig.colorbar(im, ax=row[3], fraction=0.08)
    fig.suptitle(f"SmoothGrad panels share one colour scale, attention panels another (per figure), in {SCALE_LABEL}; "
                 "entropy in nats (uniform = log P)", fontsize=8)
    fig.tight_layout()
    fig.subplots_adjust(right=0.8)
    scale_colorbar(fig, sg_im, "SmoothGrad, × uniform", rect=(0.84, 0.15, 0.01, 0.7))
    scale_colorbar(fig, att_im, "attention, × uniform", rect=(0.92, 0.15, 0.01, 0.7))
    return fig


def top_heads(all_maps: Sequence[HeadMaps], k: int = 3) -> Any:
    """The ``k`` heads with the highest IA-Score per model and image, as a table.

    Args:
        all_maps: the maps.
        k: heads per (model, image).

    Returns:
        A ``pandas.DataFrame`` indexed by ``model, image, rank`` with ``layer, head, IA-Score``.
    """
    import pandas as pd

    rows = []
    for m in all_maps:
        flat = np.where(np.isfinite(m.scores), m.scores, -np.inf).ravel()
        for rank, j in enumerate(np.argsort(-flat, kind="stable")[:k], 1):
            if not np.isfinite(flat[j]):
                break
            layer, head = divmod(int(j), m.num_heads)
            rows.append({"model": m.preset, "image": m.image_index, "rank": rank, "layer": layer + 1,
                         "head": head, "IA-Score": round(float(flat[j]), 3)})
    return pd.DataFrame(rows).set_index(["model", "image", "rank"])


# ----------------------------------------------------------------------------- widgets


def _caption(m: HeadMaps) -> str:
    kind = f" ({m.pretraining} pretraining)" if m.pretraining else ""
    return (f"<b>{m.preset}</b>{kind} · image {m.image_index}: label <i>{m.class_name(m.label)}</i>, "
            f"predicted <i>{m.class_name(m.prediction)}</i>; SmoothGrad of class "
            f"<i>{m.class_name(m.target)}</i> (n={m.n_samples}, noise {m.noise_level:g})")


def explorer_widget(all_maps: Sequence[HeadMaps], pngs: Sequence[Sequence[Sequence[bytes]]],
                    image_width: str = "") -> Any:
    """Wire pre-rendered composites to layer/head sliders with ``jslink`` only.

    Models with the same ``L × H`` share one pair of sliders, so that moving them compares the
    same head across models (the paper's Fig. 1); all their rows are shown together. With
    several images, toggle buttons choose the image (also ``jslink``-ed).

    Args:
        all_maps: maps per (model, image), in display order.
        pngs: ``pngs[i][layer][head]`` for ``all_maps[i]`` (from :func:`render_composites`).
        image_width: CSS width of the composites (``""``: natural size).

    Returns:
        The widget (display it; in a notebook it is the cell's value).
    """
    import ipywidgets as w

    if len(all_maps) != len(pngs):
        raise ValueError("one set of composites per HeadMaps is needed")
    links: list[Any] = []
    groups: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(all_maps):
        groups.setdefault((m.num_layers, m.num_heads), []).append(i)

    sections = []
    for (L, H), members in groups.items():
        # Layers count from 1 like every figure of the book; jslink copies the value verbatim,
        # so each outer stack gets a never-selected placeholder at index 0.
        layer = w.IntSlider(value=1, min=1, max=L, description="layer",
                            continuous_update=True, layout=w.Layout(width="320px"))
        head = w.IntSlider(value=0, min=0, max=H - 1, description="head",
                           continuous_update=True, layout=w.Layout(width="320px"))
        layer.add_class("iav-layer-slider")
        head.add_class("iav-head-slider")
        images = list(dict.fromkeys(all_maps[i].image_index for i in members))
        per_image = []
        for idx in images:
            rows = []
            for i in (j for j in members if all_maps[j].image_index == idx):
                outer_children = []
                for li in range(L):
                    inner = w.Stack(
                        [w.Image(value=pngs[i][li][hi], format="png",
                                 layout=w.Layout(width=image_width) if image_width else w.Layout())
                         for hi in range(H)],
                        selected_index=0)
                    links.append(w.jslink((head, "value"), (inner, "selected_index")))
                    outer_children.append(inner)
                outer = w.Stack([w.Box(), *outer_children], selected_index=1)
                outer.add_class("iav-layer-stack")
                links.append(w.jslink((layer, "value"), (outer, "selected_index")))
                rows.append(w.VBox([w.HTML(_caption(all_maps[i])), outer]))
            per_image.append(w.VBox(rows))
        if len(images) > 1:
            picker = w.ToggleButtons(options=[f"image {k}" for k in images], description="image")
            body = w.Stack(per_image, selected_index=0)
            links.append(w.jslink((picker, "index"), (body, "selected_index")))
            controls = w.VBox([picker, w.HBox([layer, head])])
        else:
            body = per_image[0]
            controls = w.HBox([layer, head])
        sections.append(w.VBox([controls, body]))
    box = w.VBox(sections)
    box.add_class("iav-explorer")
    # The links must outlive this function in a live kernel (in the saved state they are
    # ordinary widget models); keep them on the container.
    box._iav_links = links
    return box


def build_explorer(
    model: str,
    run_dir: str,
    dataset: str,
    image_index: int | str | Sequence[int] = 0,
    spec: AnalysisSpec | None = None,
    *,
    n_samples: int | None = None,
    noise_level: float | None = None,
    device: str | None = None,
    seed: int | None = None,
    target: str | None = None,
    panel_px: int | None = None,
    include_run_models: bool = True,
) -> tuple[Any, list[HeadMaps]]:
    """Everything the explorer notebook does: load, compute (cached), render, wire.

    Args:
        model: a preset or comma-separated presets (``"tiny"``/``"real"`` expand).
        run_dir: the run directory (``""``: the default, see
            :func:`iavutils.analysis.runs.resolve_run_dir`).
        dataset: ``"embedded"``, ``"cifar10"`` or ``"auto"`` (embedded for tiny presets).
        image_index: image(s) of the held-out split: an int or ``"0,5,9"``.
        spec: the analysis specification (``None``: the defaults of
            :class:`~iavutils.core.spec.AnalysisSpec`); the keywords below override its fields.
        n_samples: SmoothGrad samples (``None``: the spec's).
        noise_level: SmoothGrad noise level (``None``: the spec's).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... (``None``: the spec's).
        seed: seeds the SmoothGrad noise of image ``i`` as ``image_seed(seed, i)``, as chapter
            05 does (``None``: the spec's).
        target: ``"label"`` or ``"predicted"``, the class SmoothGrad explains (``None``: the spec's).
        panel_px: panel height of the composites in pixels; ``None``/0: smaller for bigger
            ``L × H`` so that the page stays a few MB.
        include_run_models: also show every other model finetuned on ``dataset`` in the run
            directory (as the comparison figures do).

    Returns:
        ``(widget, maps)``.
    """
    from ..analysis.checkpoints import models_in_run
    from ..analysis.run_dirs import parse_models, resolve_dataset
    from ..core.progress import tqdm  # one progress helper: widgets, terminal, or the book runner

    overrides = {"n_samples": n_samples, "noise_level": noise_level, "device": device, "seed": seed,
                 "target": target}
    spec = (AnalysisSpec() if spec is None else spec).replace(
        **{k: v for k, v in overrides.items() if v is not None})
    presets = parse_models(model)
    dataset = resolve_dataset(dataset, presets)
    if include_run_models:
        presets = models_in_run(presets, dataset, run_dir)
    indices = parse_indices(image_index)
    all_maps: list[HeadMaps] = []
    for preset in tqdm(presets, desc="explorer: models"):
        all_maps.extend(load_head_maps(preset, dataset, run_dir, indices, spec))
    total_heads = sum(m.num_layers * m.num_heads for m in all_maps)
    if not panel_px:
        # ~8 KB per composite at 130 px: the tiny run (96 heads) stays near 1 MB, the real one
        # (4 x 144 heads) near 4 MB.
        panel_px = 130 if total_heads <= 200 else 100 if total_heads <= 600 else 80
    pngs = [render_composites(m, panel_px=panel_px)
            for m in tqdm(all_maps, desc="explorer: rendering")]
    return explorer_widget(all_maps, pngs), all_maps
