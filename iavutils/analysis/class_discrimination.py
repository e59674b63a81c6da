"""Chapter 07, class discrimination (IAV paper, Figs. 2 and 9): how well each layer's IAV separates classes.

Leave-one-out k-NN accuracy and silhouette of the labels in each layer's IAV space (the numbers
next to the t-SNE pictures of Fig. 9), and one image with its SmoothGrad, every head's CLS
attention and IAV (Fig. 2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from .checkpoints import _presets_module
from .iavs import _layer_features, analyses, checkpoint_analysis
from .images import _dataset, default_split
from .study import Study

__all__ = ["class_separability", "example_maps"]


def _loo_knn_accuracy(f: np.ndarray, y: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy (Euclidean; ties go to the nearest class)."""
    n = len(y)
    k = max(1, min(k, n - 1))
    d = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn_idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    correct = 0
    for i in range(n):
        votes: dict[int, float] = {}
        for rank, j in enumerate(nn_idx[i]):
            # Majority vote; the tiny rank bonus breaks ties in favour of nearer neighbours.
            votes[int(y[j])] = votes.get(int(y[j]), 0.0) + 1.0 + 1e-6 * (k - rank)
        correct += max(votes, key=votes.get) == int(y[i])
    return correct / n


def class_separability(study: Study) -> pd.DataFrame:
    """How well each layer's IAV separates the classes, as numbers next to the t-SNE pictures.

    ``knn_accuracy``: leave-one-out 5-nearest-neighbour accuracy (%) of the label from the
    layer's IAV (chance = 100/classes); ``silhouette``: silhouette score of the labels in IAV
    space (−1…1; NaN where it is undefined: a single class, or as many classes as images). Both
    on the raw IAVs, not on the t-SNE coordinates.

    Args:
        study: What is analysed (:class:`~iavutils.analysis.study.Study`); its spec's ``progress``
            shows a bar over the checkpoints.

    Returns:
        Columns ``model, layer, knn_accuracy, silhouette``.
    """
    from sklearn.metrics import silhouette_score

    runs = analyses(study, None, "Fig. 9 maps")
    rows = []
    for p, by_epoch in runs.items():
        r = by_epoch[max(by_epoch)]
        y = r["labels"].numpy()
        for name, f in _layer_features(r).items():
            knn = _loo_knn_accuracy(f, y, k=5)
            # The silhouette needs 2 ≤ classes ≤ images − 1 (a handful of images can all differ).
            sil = silhouette_score(f, y) if 1 < len(set(y.tolist())) < len(y) else float("nan")
            rows.append({"model": p, "layer": name, "knn_accuracy": 100 * knn, "silhouette": float(sil)})
    return pd.DataFrame(rows)


def example_maps(study: Study, preset: str, *, sample: int = 0) -> dict[str, Any]:
    """One image of the analysis set with its SmoothGrad, every head's CLS attention and IAV (Fig. 2).

    Args:
        study: What is analysed (:class:`~iavutils.analysis.study.Study`); its spec's ``progress``
            shows a bar over the checkpoints.
        preset: The model shown (one of the run's presets).
        sample: Which image of the analysis set.

    Returns:
        ``image [H,W,3]`` in [0,1], ``smoothgrad [H,W]``, ``cls_attn [L,H,gh,gw]``, ``iav [L,H]``,
        ``label``, ``mask [H,W]`` (if any), ``preset``.
    """
    dataset = study.dataset
    r = checkpoint_analysis(preset, dataset, None, run_dir=study.run_dir, spec=study.spec)
    info = _presets_module().PRESETS[preset]
    idx = int(r["indices"][sample])
    ds = _dataset(dataset, default_split(dataset), info)
    x = torch.as_tensor(ds[idx][0])
    out = {
        "preset": preset,
        "image": info.denormalize(x).clamp(0, 1).permute(1, 2, 0).numpy(),
        "smoothgrad": r["smoothgrad"][sample].numpy(),
        "cls_attn": r["cls_attn"][sample].reshape(*r["cls_attn"].shape[1:3], *info.grid).numpy(),
        "iav": r["iav"][sample].numpy(),
        "label": int(r["labels"][sample]),
    }
    if "mask" in r:
        out["mask"] = r["mask"][sample].numpy()
    return out
