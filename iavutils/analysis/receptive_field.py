"""Chapter 04, global receptive field (IAV paper, Fig. 6): the entropy of each head's CLS attention.

Mean entropy per head over the analysed epochs (Fig. 6a) and the per-image entropy of one
layer at the last checkpoint (Fig. 6b), against its maximum ``log P`` (uniform attention); both
from the cached :func:`iavutils.analysis.iavs.checkpoint_analysis`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .checkpoints import _presets_module
from .iavs import _head_rows, analyses
from .study import Study

__all__ = ["entropy_over_epochs", "max_entropy", "last_layer_entropy"]


def entropy_over_epochs(study: Study, *, stride: int = 1) -> pd.DataFrame:
    """Mean attention entropy (nats) per head over the images, per analysed epoch (Fig. 6a).

    Entropy of the CLS row over the patches renormalised to sum 1 (:func:`iavutils.attention_entropy`);
    its maximum is ``log P`` (uniform attention).

    Args:
        study: What is analysed (:class:`~iavutils.analysis.study.Study`); its spec's ``progress``
            shows a bar over the checkpoints.
        stride: Every ``stride``-th checkpoint epoch (the last always).

    Returns:
        Columns ``model, epoch, layer (1-based), head, rank (position after sorting the layer's
        heads by decreasing entropy), entropy``.
    """
    from ..core.scores import attention_entropy

    runs = analyses(study, stride, "Fig. 6 maps")
    rows = []
    for p, by_epoch in runs.items():
        for e, r in sorted(by_epoch.items()):
            ent = attention_entropy(r["cls_attn"].double()).mean(0)  # [L,H]
            rows += _head_rows(p, ent, {"epoch": e}, "entropy")
    return pd.DataFrame(rows)


def max_entropy(preset: str) -> float:
    """``log P`` (nats): the entropy of uniform attention over the preset's ``P`` patches."""
    gh, gw = _presets_module().PRESETS[preset].grid
    return float(np.log(gh * gw))


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
