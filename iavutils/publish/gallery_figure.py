"""The Fig. 1-style gallery of chapter 06: per image and model a row, the image, its SmoothGrad and
a few heads of an early, a middle and the last layer, on common colour scales.

The data are :func:`iavutils.analysis.gallery.gallery_data`. Maps are in "× uniform" units
(:func:`~iavutils.publish.style.relative_to_uniform`: 1 = uniform attention), so a near-uniform
head is a flat panel of the colour of 1, whatever its own small range. The attention panels share
one colour scale for the figure (``scale="figure"``) or one per layer position (early / middle /
last, ``scale="layer"``, for when the layers' ranges differ a lot); the SmoothGrad panels share
their own. Each head's title holds its IA-Score and entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..analysis.gallery import gallery_layers
from .style import SCALE_LABEL, common_scale, model_color, relative_to_uniform

__all__ = ["gallery_figure"]

_POSITION = ("early", "middle", "last")


def _position(layer: int, num_layers: int) -> str:
    """``"early"``, ``"middle"`` or ``"last"`` for a gallery layer (fewer names for shallow models)."""
    layers = gallery_layers(num_layers)
    names = _POSITION if len(layers) == 3 else ("early", "last")[: len(layers)] if len(layers) == 2 else ("last",)
    return names[layers.index(layer)]


def _bar(fig: Figure, image: Any, axes: Sequence[Any], label: str) -> None:
    """A horizontal colour bar under the columns of ``axes`` (the figure's bottom margin)."""
    boxes = [ax.get_position() for ax in axes]
    x0, x1 = min(b.x0 for b in boxes), max(b.x1 for b in boxes)
    cb = fig.colorbar(image, cax=fig.add_axes([x0, 0.035, x1 - x0, 0.012]), orientation="horizontal")
    cb.set_label(label, fontsize="xx-small")
    cb.ax.tick_params(labelsize=6)


def gallery_figure(records: Sequence[dict[str, Any]], scale: str = "figure",
                   classes: Sequence[str] | None = None) -> Figure:
    """The gallery: rows = (image, model) records, columns = image | SmoothGrad | heads.

    Args:
        records: :func:`~iavutils.analysis.gallery.gallery_data`.
        scale: ``"figure"``: one colour scale for every attention panel; ``"layer"``: one per
            layer position (early / middle / last), each with its colour bar.
        classes: Class names for the row labels.

    Returns:
        The figure; the scale used is said in its title.
    """
    if scale not in ("figure", "layer"):
        raise ValueError(f"scale must be 'figure' or 'layer', got {scale!r}")
    if not records:
        raise ValueError("no records to show")
    K = max(len(r["heads"]) for r in records)
    ncol = 2 + K
    groups: list[list[str]] = []  # each record's per-panel scale group
    attn = []
    for r in records:
        L = max(l for l, _ in r["heads"])  # the last layer is always in the gallery
        groups.append([_position(l, L) if scale == "layer" else "all" for l, _ in r["heads"]])
        attn.append([relative_to_uniform(a) for a in r["attn"]])
    sgs = [relative_to_uniform(r["smoothgrad"]) for r in records]
    scales = {g: common_scale([a for rg, ra in zip(groups, attn) for gg, a in zip(rg, ra) if gg == g])
              for g in dict.fromkeys(g for rg in groups for g in rg)}
    s_lo, s_hi = common_scale(sgs)
    fig, axes = plt.subplots(len(records), ncol, figsize=(1.2 * ncol, 1.3 * len(records) + 1.0), squeeze=False)
    images: dict[str, tuple[Any, list[Any]]] = {}
    sg_im = None
    for i, r in enumerate(records):
        row = axes[i]
        row[0].imshow(r["image"])
        name = classes[r["label"]] if classes and r["label"] < len(classes) else r["label"]
        row[0].set_ylabel(f"{r['model']}\nimage {r['index']} ({name})", color=model_color(r["model"]), fontsize=6)
        row[0].set_title("image" if i == 0 else "", fontsize="xx-small")
        sg_im = row[1].imshow(sgs[i], cmap="inferno", vmin=s_lo, vmax=s_hi)
        row[1].set_title("SmoothGrad" if i == 0 else "", fontsize="xx-small")
        for j, ((l, h), a, g) in enumerate(zip(r["heads"], attn[i], groups[i])):
            ax = row[2 + j]
            im = ax.imshow(a, cmap="viridis", interpolation="nearest", vmin=scales[g][0], vmax=scales[g][1])
            images.setdefault(g, (im, []))[1].append(ax)
            ax.set_title(f"L{l}h{h}\nIA {r['ia_score'][j]:.2f} · H {r['entropy'][j]:.2f}", fontsize=6)
        for ax in row[2 + len(r["heads"]):]:
            ax.set_visible(False)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    P = int(np.prod(records[0]["attn"].shape[1:]))
    which = "one per layer position (early / middle / last)" if scale == "layer" else "one for the figure"
    fig.suptitle(f"Attention colour scale: {which}; SmoothGrad: one for its column; maps in {SCALE_LABEL}.\n"
                 f"IA = IA-Score, H = attention entropy in nats (uniform over P={P} patches: {np.log(P):.2f})",
                 fontsize="x-small")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _bar(fig, sg_im, list(axes[:, 1]), "SmoothGrad")
    for g, (im, axs) in images.items():
        _bar(fig, im, axs, f"attention ({g})" if scale == "layer" else "attention")
    return fig
