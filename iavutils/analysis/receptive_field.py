"""Chapter 04, global receptive field (IAV paper, Fig. 6): the entropy of each head's CLS attention.

Mean entropy per head over the analysed epochs (Fig. 6a) and the per-image entropy of one
layer at the last checkpoint (Fig. 6b), against its maximum ``log P`` (uniform attention); both
from the cached :func:`iavutils.analysis.iavs.checkpoint_analysis`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .checkpoints import _presets_module, with_pretraining
from .dynamics import analyses_from_reference, change_over_finetuning
from .iavs import _head_rows, analyses
from .study import Study

__all__ = ["entropy_over_epochs", "entropy_change", "max_entropy", "entropy_ceiling_sentence",
           "entropy_change_reading", "last_layer_entropy"]


def entropy_over_epochs(study: Study, *, stride: int = 1) -> pd.DataFrame:
    """Mean attention entropy (nats) per head over the images, per analysed epoch (Fig. 6a).

    Entropy of the CLS row over the patches renormalised to sum 1 (:func:`iavutils.attention_entropy`);
    its maximum is ``log P`` (uniform attention).

    Args:
        study: What is analysed (:class:`~iavutils.analysis.study.Study`); its spec's ``progress``
            shows a bar over the checkpoints.
        stride: Every ``stride``-th checkpoint epoch (the last and the first finetuned always).

    Returns:
        Columns ``model, epoch, layer (1-based), head, rank (position after sorting the layer's
        heads by decreasing entropy), entropy``; epoch 0 is the model before finetuning.
    """
    from ..core.scores import attention_entropy

    runs = analyses_from_reference(study, stride, "Fig. 6 maps")
    rows = []
    for p, by_epoch in runs.items():
        for e, r in sorted(by_epoch.items()):
            ent = attention_entropy(r["cls_attn"].double()).mean(0)  # [L,H]
            rows += _head_rows(p, ent, {"epoch": e}, "entropy")
    return pd.DataFrame(rows)


def entropy_change(entropy: pd.DataFrame) -> pd.DataFrame:
    """Mean entropy over the heads per model: first finetuned epoch, last epoch, change (Fig. 6a's claim).

    Args:
        entropy: :func:`entropy_over_epochs` frame.

    Returns:
        :func:`iavutils.analysis.dynamics.change_over_finetuning` per model, with ``pretraining``;
        epoch 0 only in its labelled "before finetuning" column.
    """
    return with_pretraining(change_over_finetuning(entropy, "entropy", ("model",)))


def entropy_change_reading(trend: pd.DataFrame) -> str:
    """Which models' mean entropy rose and which fell from the first finetuned epoch (from :func:`entropy_change`)."""
    up = [f"{m} ({c:+.3f})" for m, c in zip(trend["model"], trend["change"]) if c > 0]
    down = [f"{m} ({c:+.3f})" for m, c in zip(trend["model"], trend["change"]) if c < 0]
    flat = [m for m, c in zip(trend["model"], trend["change"]) if c == 0]
    parts = [f"rose for {', '.join(up)}" if up else "rose for no model",
             f"fell for {', '.join(down)}" if down else "fell for no model"]
    if flat:
        parts.append(f"did not change for {', '.join(flat)}")
    return ("In this run the mean entropy from the first finetuned epoch to the last "
            + "; ".join(parts) + " (nats; the paper: up for supervised, down for self-supervised models).")


def max_entropy(preset: str) -> float:
    """``log P`` (nats): the entropy of uniform attention over the preset's ``P`` patches."""
    gh, gw = _presets_module().PRESETS[preset].grid
    return float(np.log(gh * gw))


def entropy_ceiling_sentence(preset: str) -> str:
    """The number of patches ``P`` of the preset and the entropy ceiling ``log P`` it gives."""
    gh, gw = _presets_module().PRESETS[preset].grid
    return (f"{preset} keeps {gh * gw} patches per image ({gh}×{gw}), so $\\log P = \\log {gh * gw} "
            f"\\approx {max_entropy(preset):.2f}$ nats is the ceiling (uniform attention).")


def last_layer_entropy(study: Study, *, layer: int = -1) -> pd.DataFrame:
    """Per-image entropy of each head of one layer at the last checkpoint (Fig. 6b box plot).

    Args:
        study: What is analysed (:class:`~iavutils.analysis.study.Study`); its spec's ``progress``
            shows a bar over the checkpoints.
        layer: The layer (negative: from the end).

    Returns:
        Columns ``model, layer (1-based), head, sample, entropy``.
    """
    from ..core.scores import attention_entropy

    runs = analyses(study, None, "Fig. 6b maps")
    rows = []
    for p, by_epoch in runs.items():
        r = by_epoch[max(by_epoch)]
        ent = attention_entropy(r["cls_attn"].double())  # [N,L,H]
        li = layer % ent.shape[1]
        for h in range(ent.shape[2]):
            rows += [{"model": p, "layer": li + 1, "head": h, "sample": i, "entropy": float(v)}
                     for i, v in enumerate(ent[:, li, h].tolist())]
    return pd.DataFrame(rows)
