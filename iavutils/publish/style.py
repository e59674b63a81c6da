"""The book's colours and labels: one colour per model, shades per epoch, the seaborn style.

One colour per model, the same in every chapter (:func:`model_color`): self-supervised models in
cool colours (MIM/BEiT blue, DINO green), supervised ones in warm colours (small labelled
source/DeiT vermillion, large labelled source/ImageNet-21k orange); an embedded preset and the
real model it stands for share a colour. Epochs are shades of the model's colour, darker =
later, as in the paper's Figs. 6a and 7.

Maps (attention, SmoothGrad, explanations) are never min-max scaled per panel, which makes
near-uniform attention look as structured as a peaked one. Each map is divided by its own mean
(:func:`relative_to_uniform`: 1 = uniform, unit "× uniform"), the panels of a figure share one
colour scale (:func:`common_scale`) drawn as a colour bar (:func:`scale_colorbar`), and each
panel's title carries the map's entropy (:func:`map_entropy`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import seaborn as sns

__all__ = [
    "MODEL_COLORS",
    "MODEL_LABELS",
    "METHOD_COLORS",
    "HIGH_COLOR",
    "LOW_COLOR",
    "setup",
    "model_color",
    "model_label",
    "model_palette",
    "epoch_shades",
    "relative_to_uniform",
    "map_entropy",
    "common_scale",
    "scale_colorbar",
    "SCALE_LABEL",
]

_BLUE, _GREEN, _VERMILLION, _ORANGE, _PINK, _GREY = "#0173b2", "#029e73", "#d55e00", "#de8f05", "#cc78bc", "#7f7f7f"

#: A fixed colour per preset (an embedded preset shares the colour of the model it mirrors).
MODEL_COLORS: dict[str, str] = {
    "tiny-mim": _BLUE, "beit": _BLUE,
    "tiny-dino": _GREEN, "dino": _GREEN,
    "tiny-sup": _VERMILLION, "deit": _VERMILLION,
    "tiny-sup21k": _ORANGE, "in21k": _ORANGE,
    "beit-in22k-ft": _PINK,
}

#: Legend labels: the preset and the paper's model it stands for.
MODEL_LABELS: dict[str, str] = {
    "tiny-mim": "tiny-mim (MIM ≈ BEiT)",
    "tiny-dino": "tiny-dino (≈ DINO)",
    "tiny-sup": "tiny-sup (≈ DeiT)",
    "tiny-sup21k": "tiny-sup21k (≈ IN-21k)",
    "beit": "BEiT", "dino": "DINO", "deit": "DeiT", "in21k": "ViT-IN21k",
    "beit-in22k-ft": "BEiT (IN-22k ft)",
}

#: Patch orderings of the masking test (Fig. 5).
METHOD_COLORS: dict[str, str] = {
    "attention": "#0173b2", "attention-mean": "#56b4e9", "smoothgrad": "#d55e00", "random": _GREY,
}

#: High-/Low-IA-Head marks (the paper's Fig. 8: blue above 0.5, red below).
HIGH_COLOR, LOW_COLOR = "#1f5fbf", "#d62728"

_FALLBACK = sns.color_palette("colorblind", 10).as_hex()


def setup() -> None:
    """Seaborn style for every figure of the book (call once per notebook)."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)
    matplotlib.rcParams.update({"figure.dpi": 90, "savefig.dpi": 120, "axes.titlesize": "medium"})


def model_color(preset: str) -> str:
    """The model's colour; an unknown preset gets a stable colour from its name."""
    if preset in MODEL_COLORS:
        return MODEL_COLORS[preset]
    return _FALLBACK[int(hashlib.sha1(preset.encode()).hexdigest(), 16) % len(_FALLBACK)]


def model_label(preset: str) -> str:
    """Legend label of a preset."""
    return MODEL_LABELS.get(preset, preset)


def model_palette(presets: Sequence[str]) -> dict[str, str]:
    """``{preset: colour}`` for seaborn's ``palette=``."""
    return {p: model_color(p) for p in presets}


def epoch_shades(preset: str, epochs: Sequence[int]) -> dict[int, Any]:
    """Shades of the model's colour for the epochs, light (early) to dark (late)."""
    epochs = sorted(epochs)
    base = np.array(matplotlib.colors.to_rgb(model_color(preset)))
    out = {}
    for i, e in enumerate(epochs):
        t = i / max(1, len(epochs) - 1)  # 0 = first epoch, 1 = last
        # Mix with white for early epochs, with black for the last ones.
        col = (1 - t) * (0.25 * base + 0.75) + t * (0.65 * base)
        out[e] = tuple(np.clip(col, 0, 1))
    return out


#: Colour-bar label of maps shown by :func:`relative_to_uniform`.
SCALE_LABEL = "× uniform (map / its mean)"


def relative_to_uniform(a: Any) -> np.ndarray:
    """A non-negative map divided by its mean: a uniform map is 1 everywhere.

    The unit does not depend on the map's total (attention rows sum below 1, SmoothGrad has the
    gradient's scale) nor on its resolution, so maps of different heads, models and methods can
    share one colour scale. Negative values (signed explanation maps) are clipped to 0 first; an
    all-zero map stays 0.

    Args:
        a: A map of any shape (``[gh,gw]``, ``[H,W]``, ``[P]``).

    Returns:
        ``float64`` array of the same shape.
    """
    a = np.clip(np.nan_to_num(np.asarray(a, dtype=np.float64)), 0, None)
    m = a.mean()
    return a / m if m > 0 else np.zeros_like(a)


def map_entropy(a: Any) -> float:
    """Entropy (nats) of a map normalised to sum 1 over its cells (0 log 0 = 0), as
    :func:`iavutils.core.scores.attention_entropy` defines it; uniform over ``n`` cells gives
    ``log n``. Negative values are clipped to 0; an all-zero map gives NaN."""
    import torch

    from ..core.scores import attention_entropy

    a = np.clip(np.nan_to_num(np.asarray(a, dtype=np.float64)), 0, None).ravel()
    if not a.sum() > 0:
        return float("nan")
    return float(attention_entropy(torch.from_numpy(a))[()])


def common_scale(maps: Sequence[Any], quantile: float = 100.0) -> tuple[float, float]:
    """``(vmin, vmax)`` shared by the panels of maps already in "× uniform" units.

    ``vmin`` is 0 (no attention); ``vmax`` is the ``quantile``-th percentile of all values of
    all maps (100: their maximum), and at least 1 so that a set of uniform maps is not
    stretched.
    """
    vals = np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps]) if len(maps) else np.ones(1)
    vals = vals[np.isfinite(vals)]
    top = float(np.percentile(vals, quantile)) if vals.size else 1.0
    return 0.0, max(1.0, top)


def scale_colorbar(fig: Any, image: Any, label: str = SCALE_LABEL,
                   rect: Sequence[float] = (0.93, 0.15, 0.012, 0.7)) -> Any:
    """One colour bar, in its own axes at ``rect`` (figure fraction), for the panels sharing
    ``image``'s scale. Call after ``tight_layout`` and leave room (``subplots_adjust(right=...)``):
    a bar stealing space from many panels would not survive ``tight_layout``."""
    cb = fig.colorbar(image, cax=fig.add_axes(list(rect)))
    cb.set_label(label, fontsize="x-small")
    cb.ax.tick_params(labelsize=7)
    return cb
