"""Chapter 02, training dynamics (IAV paper, Fig. 4): how far each checkpoint's maps are from the last.

A definition that the paper leaves open (it is repeated in the notebook):

* **Map distance** (Fig. 4): ``d(φ_t, φ_T) = mean_i ‖φ_t(x_i)/‖φ_t(x_i)‖₂ − φ_T(x_i)/‖φ_T(x_i)‖₂‖₂``
  over the pixels of the SmoothGrad map, and for attention the same distance between the CLS
  rows over the patches of every head, averaged over the ``L·H`` heads and the images. Maps are
  normalised to unit L2 norm (as the IA-Score does), so the distance lies in ``[0, √2]``, is 0
  for identical maps and does not depend on the maps' scale. ``T`` is the last checkpoint.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from .iavs import analyses
from .study import Study

__all__ = ["normalized_distance", "training_dynamics"]


def normalized_distance(a: Tensor, b: Tensor, dims: int = 1) -> Tensor:
    """L2 distance between maps after scaling each to unit L2 norm.

    Args:
        a: Maps ``[..., *map]``.
        b: Maps of the same shape.
        dims: How many trailing dimensions form one map (2 for ``[N,H,W]``, 1 for ``[N,...,P]``).

    Returns:
        ``[...]`` distances in ``[0, 2]`` (``[0, √2]`` for non-negative maps); NaN where a map is
        all zero (it has no direction).
    """
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    a = a.double().flatten(-dims) if dims > 1 else a.double()
    b = b.double().flatten(-dims) if dims > 1 else b.double()
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    d = (a / na.clamp_min(1e-300) - b / nb.clamp_min(1e-300)).norm(dim=-1)
    return torch.where((na.squeeze(-1) > 0) & (nb.squeeze(-1) > 0), d, torch.nan)


def training_dynamics(study: Study, *, stride: int = 1) -> pd.DataFrame:
    """‖φ_t − φ_T‖ and ‖A_t − A_T‖ per analysed epoch t (Fig. 4), T = last checkpoint.

    Distances are :func:`normalized_distance` (unit-L2 maps): SmoothGrad over the pixels, and
    CLS attention over the patches of each head averaged over all ``L·H`` heads; both averaged
    over the images (NaN-aware).

    Args:
        study: What is analysed (:class:`~iavutils.analysis.study.Study`); its spec's ``progress``
            shows a bar over the checkpoints.
        stride: Every ``stride``-th checkpoint epoch (the last always).

    Returns:
        Columns ``model, epoch, phi_distance, attention_distance`` (+ ``phi_std``,
        ``attention_std``: the spread over images).
    """
    runs = analyses(study, stride, "Fig. 4 maps")
    rows = []
    for p, by_epoch in runs.items():
        last = by_epoch[max(by_epoch)]
        for e, r in sorted(by_epoch.items()):
            dphi = normalized_distance(r["smoothgrad"], last["smoothgrad"], dims=2)
            datt = torch.nanmean(normalized_distance(r["cls_attn"], last["cls_attn"], dims=1).flatten(1), dim=1)
            rows.append({
                "model": p, "epoch": e,
                "phi_distance": float(torch.nanmean(dphi)), "phi_std": float(_nanstd(dphi)),
                "attention_distance": float(torch.nanmean(datt)), "attention_std": float(_nanstd(datt)),
            })
    return pd.DataFrame(rows)


def _nanstd(x: Tensor) -> Tensor:
    x = x[~torch.isnan(x)]
    return x.std() if x.numel() > 1 else torch.tensor(0.0)
