"""The Fig. 1-style gallery of chapter 06: a few test images × each model × a few heads of an early,
a middle and the last layer, beside the image's SmoothGrad.

Nothing new is computed: the numbers are the cached
:func:`~iavutils.analysis.iavs.checkpoint_analysis` of each model's last checkpoint (the study's
spec), the same ``cls_attn``, ``smoothgrad`` and ``iav`` as chapters 02–07. The figure is
:func:`iavutils.publish.gallery_figure.gallery_figure`.

Which heads: layers 1, ``(L+1)//2`` and ``L`` (numbered from 1, as in the paper), and in each
the heads evenly spaced over ``0..H-1`` (the first and the last always), a choice that does not
look at the scores, so the gallery is not a selection of agreeing heads. Which images: the first
``num_images`` of the analysis set, itself a seeded random subset of the held-out split, the same
images for every model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .study import Study

__all__ = ["gallery_data", "gallery_heads", "gallery_layers"]


def gallery_layers(num_layers: int) -> list[int]:
    """The early, middle and last layer (1-based, distinct): ``[1, (L+1)//2, L]``."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return sorted({1, (num_layers + 1) // 2, num_layers})


def gallery_heads(num_layers: int, num_heads: int, per_layer: int = 3) -> list[tuple[int, int]]:
    """The gallery's heads as ``(layer 1-based, head 0-based)``, layer by layer.

    Args:
        num_layers: ``L`` of the model.
        num_heads: ``H`` of the model.
        per_layer: Heads per layer, evenly spaced over ``0..H-1`` (all heads if ``H`` is smaller).
    """
    if per_layer < 1:
        raise ValueError(f"per_layer must be >= 1, got {per_layer}")
    heads = sorted({int(h) for h in np.linspace(0, num_heads - 1, min(per_layer, num_heads)).round()})
    return [(l, h) for l in gallery_layers(num_layers) for h in heads]


def gallery_data(
    study: Study,
    num_images: int = 6,
    heads_per_layer: int = 3,
    samples: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """What the gallery shows, one record per (image, model), images outer, models inner.

    Args:
        study: The presets, dataset, run and spec (:class:`~iavutils.analysis.study.Study`);
            each model's last checkpoint is read (cached :func:`~iavutils.analysis.iavs.checkpoint_analysis`).
        num_images: Images shown: the first ``num_images`` of the analysis set (at most its size).
        heads_per_layer: Heads per layer (:func:`gallery_heads`).
        samples: Positions in the analysis set instead of the first ``num_images``.

    Returns:
        Records with ``model``, ``sample`` (position in the analysis set), ``index`` (dataset
        index), ``label``, ``target`` (the class SmoothGrad explains), ``image [H,W,3]`` in [0,1],
        ``smoothgrad [H,W]``, ``heads`` (``[(layer, head)]``, :func:`gallery_heads`),
        ``attn [K,gh,gw]`` (CLS attention of those heads over the patches), ``ia_score [K]``
        and ``entropy [K]`` (nats, :func:`~iavutils.core.scores.attention_entropy`).
    """
    from ..core.scores import attention_entropy
    from ..world.models import PRESETS
    from .images import load_images
    from .iavs import analyses

    runs = {p: r[max(r)] for p, r in analyses(study, None, "gallery").items()}
    n_set = min(r["iav"].shape[0] for r in runs.values())
    chosen = list(range(min(num_images, n_set))) if samples is None else [int(s) for s in samples]
    if any(not 0 <= s < n_set for s in chosen):
        raise ValueError(f"samples {chosen} outside the analysis set of {n_set} images")
    out: dict[tuple[int, str], dict[str, Any]] = {}
    for p, r in runs.items():
        info = PRESETS[p]
        _, L, H, _ = r["cls_attn"].shape
        heads = gallery_heads(L, H, heads_per_layer)
        li = [l - 1 for l, _ in heads]
        hi = [h for _, h in heads]
        imgs = load_images(study.dataset, info, study.spec.num_images, study.spec.seed)
        if not torch.equal(imgs["indices"][:n_set], r["indices"][:n_set]):
            raise RuntimeError(f"{p}: the cached analysis is not of the study's image set")
        ent = attention_entropy(r["cls_attn"].double())
        for s in chosen:
            x = imgs["x"][s:s + 1]
            out[s, p] = {
                "model": p, "sample": s, "index": int(r["indices"][s]), "label": int(r["labels"][s]),
                "target": int(r["targets"][s]),
                "image": info.denormalize(x)[0].clamp(0, 1).permute(1, 2, 0).numpy(),
                "smoothgrad": r["smoothgrad"][s].float().numpy(),
                "heads": heads,
                "attn": r["cls_attn"][s, li, hi].reshape(len(heads), *info.grid).float().numpy(),
                "ia_score": r["iav"][s, li, hi].float().numpy(),
                "entropy": ent[s, li, hi].float().numpy(),
            }
    return [out[s, p] for s in chosen for p in runs]
