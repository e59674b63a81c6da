"""Chapter 06, head roles (IAV paper, Figs. 8 and 9): per-head IA-Scores, head types and the IAV t-SNE.

Per-image IA-Score of every head at the last checkpoint with its type (High-IA-Head: median
IA-Score over the images > 0.5, Fig. 8), the count of High-IA-Heads per layer, and the 2-D t-SNE
of each layer's IAV and of the logits (Fig. 9, cached).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .checkpoints import checkpoint_key, result_store
from .iavs import _layer_features, analyses
from .study import Study

__all__ = ["head_scores", "head_type_table", "iav_tsne"]


def head_scores(study: Study) -> pd.DataFrame:
    """Per-image IA-Score of every head at the last checkpoint (Fig. 8), with head types.

    Args:
        study: What is analysed (:class:`~iavutils.analysis.study.Study`); its spec's ``progress``
            shows a bar over the checkpoints.

    Returns:
        Columns ``model, layer (1-based), head, sample, label, score, high`` where ``high`` is the
        head's type (median IA-Score over the images > 0.5: High-IA-Head).
    """
    from ..core.scores import head_types

    runs = analyses(study, None, "Fig. 8 maps")
    frames = []
    for p, by_epoch in runs.items():
        r = by_epoch[max(by_epoch)]
        s = r["iav"].double()
        N, L, H = s.shape
        high = head_types(s)
        frames.append(pd.DataFrame({
            "model": p,
            "layer": np.repeat(np.arange(1, L + 1), H)[None].repeat(N, 0).ravel(),
            "head": np.tile(np.arange(H), L)[None].repeat(N, 0).ravel(),
            "sample": np.repeat(np.arange(N), L * H),
            "label": np.repeat(r["labels"].numpy(), L * H),
            "score": s.reshape(-1).numpy(),
            "high": high.reshape(1, -1).expand(N, -1).reshape(-1).numpy(),
        }))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def head_type_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Count of High-IA-Heads per model and layer (from :func:`head_scores`), as ``high/H``."""
    heads = scores.groupby(["model", "layer", "head"], sort=False)["high"].first().reset_index()
    table = heads.groupby(["model", "layer"], sort=False)["high"].agg(lambda v: f"{int(v.sum())}/{len(v)}")
    return table.unstack("layer")


def iav_tsne(study: Study, *, perplexity: float = 15.0) -> pd.DataFrame:
    """2-D t-SNE of each layer's IAV (``H`` numbers per image) and of the logits (Fig. 9), cached.

    NaN scores (all-zero SmoothGrad) are replaced by the layer's mean before embedding.

    Args:
        study: What is analysed (:class:`~iavutils.analysis.study.Study`); its spec's ``progress``
            shows a bar over the checkpoints.
        perplexity: t-SNE perplexity (capped for a handful of images).

    Returns:
        Columns ``model, layer ("L1".."L<L>", "classifier"), x, y, label, sample``.
    """
    from sklearn.manifold import TSNE

    dataset, run_dir, spec = study.dataset, study.run_dir, study.spec
    runs = analyses(study, None, "Fig. 9 maps")
    frames = []
    for p, by_epoch in runs.items():
        epoch, r = max(by_epoch.items())
        key = {**checkpoint_key(p, dataset, epoch, run_dir), "perplexity": float(perplexity), **spec.cache_key()}

        def compute() -> dict[str, Tensor]:
            feats = _layer_features(r)
            out = {}
            for name, f in feats.items():
                n = f.shape[0]
                perp = float(min(perplexity, max(2.0, (n - 1) / 3)))
                emb = TSNE(n_components=2, perplexity=perp, init="pca", random_state=int(spec.seed)).fit_transform(f)
                out[name] = torch.as_tensor(emb, dtype=torch.float32)
            return out

        res = result_store(run_dir).cached("tsne", key, compute)
        for name, emb in res.items():
            frames.append(pd.DataFrame({"model": p, "layer": name, "x": emb[:, 0].numpy(), "y": emb[:, 1].numpy(),
                                        "label": r["labels"].numpy(), "sample": np.arange(emb.shape[0])}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
