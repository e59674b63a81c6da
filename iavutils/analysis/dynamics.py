"""Chapter 02, training dynamics (IAV paper, Fig. 4), and the epoch reference of every "change over finetuning".

Definitions that the paper leaves open (they are repeated in the notebook):

* **Map distance** (Fig. 4): ``d(φ_t, φ_T) = mean_i ‖φ_t(x_i)/‖φ_t(x_i)‖₂ − φ_T(x_i)/‖φ_T(x_i)‖₂‖₂``
  over the pixels of the SmoothGrad map. Maps are normalised to unit L2 norm (as the IA-Score
  does), so the distance lies in ``[0, √2]``, is 0 for identical maps and does not depend on the
  maps' scale. ``T`` is the last checkpoint.
* **Attention distance** (Fig. 4b, "the attention map averaged over all layers"): the class
  token's attention rows over the patches are averaged over all ``L·H`` heads (every layer and
  its heads) into one map per image, and the map distance above is taken between those maps.
  Heads of different layers are not matched, so the layer average is the only map the paper
  can mean. The mean of the ``L·H`` per-head distances is kept as a second, labelled column.
* **Epoch reference.** Epoch 0 is the pretrained backbone with a *random* head: its SmoothGrad
  explains a random classifier and is nearly flat, so it is never the start of a change. Every
  "change over finetuning" is measured from the **first finetuned epoch** (the smallest epoch
  > 0, :func:`reference_epoch`); epoch 0 is shown only labelled "before finetuning".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .checkpoints import checkpoint_epochs, run_summary
from .iavs import analyses, checkpoint_analysis
from .study import Study

__all__ = [
    "BEFORE_FINETUNING", "BEFORE_COLUMN", "PAPER_LR", "reference_epoch", "stage", "analyses_from_reference",
    "change_over_finetuning", "normalized_distance", "layer_averaged_distance", "per_head_distance",
    "training_dynamics", "dynamics_summary", "dynamics_reading", "learning_rate_sentence",
]

#: The label of epoch 0 (pretrained backbone, random head) wherever it is shown.
BEFORE_FINETUNING = "before finetuning"
#: The column that holds epoch 0's value in the change tables.
BEFORE_COLUMN = "epoch 0 (before finetuning)"
#: The paper's finetuning learning rate.
PAPER_LR = 1e-5


def reference_epoch(epochs: Iterable[int]) -> int:
    """The first finetuned epoch (the smallest epoch > 0): where every change over finetuning starts.

    Raises:
        ValueError: No epoch > 0 (nothing was finetuned).
    """
    later = sorted({int(e) for e in epochs if int(e) > 0})
    if not later:
        raise ValueError(f"no finetuned epoch (> 0) among {sorted(int(e) for e in epochs)}: finetune at least one epoch")
    return later[0]


def stage(epoch: int) -> str:
    """``"before finetuning"`` for epoch 0, ``"finetuned"`` after."""
    return BEFORE_FINETUNING if int(epoch) == 0 else "finetuned"


def analyses_from_reference(study: Study, stride: int | None, desc: str) -> dict[str, dict[int, dict[str, Tensor]]]:
    """:func:`iavutils.analysis.iavs.analyses`, plus each model's first finetuned epoch when the stride skipped it.

    A stride > 1 takes epochs 0, s, 2s, ...: the reference of a change (epoch 1) would be
    missing, so it is added (from the same cache).
    """
    runs = analyses(study, stride, desc)
    if stride is None:
        return runs
    for p, by_epoch in runs.items():
        finetuned = [e for e in checkpoint_epochs(p, study.dataset, study.run_dir) if e > 0]
        if finetuned and finetuned[0] not in by_epoch:
            by_epoch[finetuned[0]] = checkpoint_analysis(p, study.dataset, finetuned[0], run_dir=study.run_dir,
                                                         spec=study.spec)
            runs[p] = dict(sorted(by_epoch.items()))
    return runs


def change_over_finetuning(frame: pd.DataFrame, value: str, by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """Per group: the value at the first finetuned epoch, at the last epoch, and the change between them.

    The value is first averaged over the other rows of a group and epoch (e.g. the heads). Epoch
    0 never enters ``change``; where present it is kept, labelled, in ``BEFORE_COLUMN``.

    Args:
        frame: Columns ``*by, epoch, value`` (more rows per group and epoch are averaged).
        value: The column to compare.
        by: The group columns (e.g. ``("model",)``, ``("score", "model")``).

    Returns:
        Columns ``*by, "epoch 0 (before finetuning)"`` (NaN without epoch 0), ``epochs``
        (``"1 → 4"``: reference → last), ``first finetuned epoch, last epoch, change``
        (last − first finetuned), one row per group in order of appearance.
    """
    by = list(by)
    per_epoch = frame.groupby([*by, "epoch"], sort=False)[value].mean()
    rows = []
    for key, s in per_epoch.groupby(level=list(range(len(by))), sort=False):
        s = s.droplevel(list(range(len(by))))
        ref, last = reference_epoch(s.index), int(max(s.index))
        row: dict[str, Any] = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row[BEFORE_COLUMN] = float(s[0]) if 0 in s.index else np.nan
        row["epochs"] = f"{ref} → {last}"
        row["first finetuned epoch"], row["last epoch"] = float(s[ref]), float(s[last])
        row["change"] = row["last epoch"] - row["first finetuned epoch"]
        rows.append(row)
    return pd.DataFrame(rows)


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


def layer_averaged_distance(a: Tensor, b: Tensor) -> Tensor:
    """The paper's Fig. 4b: distance between the attention maps averaged over all layers and heads.

    Args:
        a: CLS attention ``[N,L,H,P]``.
        b: CLS attention ``[N,L,H,P]``.

    Returns:
        ``[N]``: :func:`normalized_distance` of ``a.mean((1, 2))`` and ``b.mean((1, 2))``.
    """
    if a.dim() != 4 or a.shape != b.shape:
        raise ValueError(f"expected two [N,L,H,P] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return normalized_distance(a.double().mean((1, 2)), b.double().mean((1, 2)), dims=1)


def per_head_distance(a: Tensor, b: Tensor) -> Tensor:
    """Not the paper's measure: the mean over the ``L·H`` heads of each head's distance.

    Args:
        a: CLS attention ``[N,L,H,P]``.
        b: CLS attention ``[N,L,H,P]``.

    Returns:
        ``[N]``: the NaN-aware mean over heads of :func:`normalized_distance` per head.
    """
    if a.dim() != 4 or a.shape != b.shape:
        raise ValueError(f"expected two [N,L,H,P] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.nanmean(normalized_distance(a, b, dims=1).flatten(1), dim=1)


def training_dynamics(study: Study, *, stride: int = 1) -> pd.DataFrame:
    """‖φ_t − φ_T‖ and ‖A_t − A_T‖ per analysed epoch t (Fig. 4), T = last checkpoint.

    Distances are :func:`normalized_distance` (unit-L2 maps) averaged over the images
    (NaN-aware): SmoothGrad over the pixels; attention as the paper's layer-averaged map
    (:func:`layer_averaged_distance`) and, labelled, the per-head mean (:func:`per_head_distance`).

    Args:
        study: What is analysed (:class:`~iavutils.analysis.study.Study`); its spec's ``progress``
            shows a bar over the checkpoints.
        stride: Every ``stride``-th checkpoint epoch (the last and the first finetuned always).

    Returns:
        Columns ``model, epoch, stage ("before finetuning" | "finetuned"), phi_distance,
        attention_distance`` (layer-averaged map), ``attention_distance_per_head`` (+ ``phi_std``,
        ``attention_std``: the spread over images).
    """
    runs = analyses_from_reference(study, stride, "Fig. 4 maps")
    rows = []
    for p, by_epoch in runs.items():
        last = by_epoch[max(by_epoch)]
        for e, r in sorted(by_epoch.items()):
            dphi = normalized_distance(r["smoothgrad"], last["smoothgrad"], dims=2)
            datt = layer_averaged_distance(r["cls_attn"], last["cls_attn"])
            dhead = per_head_distance(r["cls_attn"], last["cls_attn"])
            rows.append({
                "model": p, "epoch": e, "stage": stage(e),
                "phi_distance": float(torch.nanmean(dphi)), "phi_std": float(_nanstd(dphi)),
                "attention_distance": float(torch.nanmean(datt)), "attention_std": float(_nanstd(datt)),
                "attention_distance_per_head": float(torch.nanmean(dhead)),
            })
    return pd.DataFrame(rows)


_SUMMARY = {"phi_distance": "SmoothGrad", "attention_distance": "attention (layer-averaged map)",
            "attention_distance_per_head": "attention (per-head mean, not the paper's)"}


def dynamics_summary(distances: pd.DataFrame) -> pd.DataFrame:
    """Per model: the distance of the first finetuned epoch to the last, and epoch 0's, labelled.

    Args:
        distances: :func:`training_dynamics` frame.

    Returns:
        Columns ``model, epochs ("1 → 4")``, then for SmoothGrad and the two attention distances
        the value from the first finetuned epoch (``"<what>: first finetuned → last"``) and from
        epoch 0 (``"<what>: before finetuning (epoch 0) → last"``, NaN without epoch 0).
    """
    rows = []
    for p, s in distances.groupby("model", sort=False):
        s = s.set_index("epoch")
        ref, last = reference_epoch(s.index), int(max(s.index))
        row: dict[str, Any] = {"model": p, "epochs": f"{ref} → {last}"}
        for col, what in _SUMMARY.items():
            if col in s:
                row[f"{what}: first finetuned → last"] = float(s.loc[ref, col])
        for col, what in _SUMMARY.items():
            if col in s:
                row[f"{what}: {BEFORE_FINETUNING} (epoch 0) → last"] = float(s.loc[0, col]) if 0 in s.index else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def dynamics_reading(summary: pd.DataFrame) -> str:
    """One sentence per distance of :func:`dynamics_summary`: the models from least to most moved.

    Returns:
        Markdown built from the frame's numbers only.
    """
    out = []
    for col in [c for c in summary.columns if c.endswith(": first finetuned → last")]:
        s = summary.set_index("model")[col].dropna().sort_values()
        if s.empty:
            continue
        order = ", ".join(f"{m} {v:.3f}" for m, v in s.items())
        out.append(f"*{col.split(':')[0]}*, first finetuned → last epoch, least to most moved: {order}.")
    return " ".join(out)


def learning_rate_sentence(study: Study) -> str:
    """The run's finetuning learning rate against the paper's ``1e-5`` (from each model's ``config.json``)."""
    runs = run_summary(study.presets, study.dataset, study.run_dir)
    if runs.empty or "lr" not in runs:
        return "The run's finetuning recipe (config.json) was not found."
    lrs = sorted({float(v) for v in runs["lr"].dropna()})
    if not lrs:
        return "The run's finetuning recipe gives no learning rate."
    ratio = " to ".join(f"{lr / PAPER_LR:.0f}×" for lr in (lrs[0], lrs[-1]) if lr) if len(lrs) > 1 else f"{lrs[0] / PAPER_LR:.0f}×"
    epochs = sorted({int(v) for v in runs.get("epochs", pd.Series(dtype=float)).dropna()})
    ep = f" for {', '.join(map(str, epochs))} epoch(s)" if epochs else ""
    return (f"This run finetunes{ep} at a peak learning rate of {', '.join(f'{lr:g}' for lr in lrs)}, "
            f"{ratio} the paper's {PAPER_LR:g}.")


def _nanstd(x: Tensor) -> Tensor:
    x = x[~torch.isnan(x)]
    return x.std() if x.numel() > 1 else torch.tensor(0.0)
