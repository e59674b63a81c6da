"""Chapter 03, input disturbance (IAV paper, Fig. 5): accuracy when the most relevant patches are masked.

A definition that the paper leaves open (it is repeated in the notebook):

* **Masking orders** (Fig. 5): ``attention`` = last layer's CLS attention averaged over its
  heads; ``attention-mean`` = CLS attention averaged over all heads of all layers (the paper's
  "Attention-Mean"); ``smoothgrad`` = patch-mean SmoothGrad; ``random`` = a seeded random
  order. Most relevant patches are set to black first (:func:`iavutils.core.metrics.perturbation_curve`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor

from .checkpoints import checkpoint_key, load_finetuned, resolve_device, result_store
from .iavs import analyses
from .images import load_images
from .study import Study

__all__ = ["MASK_RATIOS", "MASK_METHODS", "masking_curves", "masking_reading"]

#: Masking ratios of Fig. 5 (0 = clean accuracy).
MASK_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

#: Patch orderings of Fig. 5, in legend order.
MASK_METHODS: tuple[str, ...] = ("attention", "attention-mean", "smoothgrad", "random")


def masking_curves(study: Study, *, ratios: Sequence[float] = MASK_RATIOS) -> pd.DataFrame:
    """Accuracy when the most relevant patches are blacked out first (Fig. 5), last checkpoint.

    The orderings (:data:`MASK_METHODS`) come from the cached
    :func:`~iavutils.analysis.iavs.checkpoint_analysis` of the same images: last-layer attention
    (mean over heads), attention averaged over all heads of all layers, patch-mean SmoothGrad,
    and a seeded random order.

    Args:
        study: What is analysed (:class:`~iavutils.analysis.study.Study`); the orderings come
            from the analysis of its spec, whose ``seed`` also seeds the random order.
        ratios: Fractions of the patches masked.

    Returns:
        Columns ``model, method, ratio, accuracy`` (ratio and accuracy in %), ratio 0 = clean.
    """
    from ..core.metrics import perturbation_curve

    dataset, run_dir, spec = study.dataset, study.run_dir, study.spec
    runs = analyses(study, None, "Fig. 5 maps")
    rows = []
    for p, by_epoch in runs.items():
        epoch, r = max(by_epoch.items())
        key = {**checkpoint_key(p, dataset, epoch, run_dir), "ratios": [float(f) for f in ratios], **spec.cache_key()}

        def compute() -> dict[str, Tensor]:
            from ..core.attribution import patch_pool
            from ..core.hooks import model_geometry

            dev = resolve_device(spec.device)
            model, info = load_finetuned(p, dataset, run_dir, epoch, dev)
            data = load_images(dataset, info, spec.num_images, spec.seed)
            if not torch.equal(data["indices"], r["indices"]):
                raise RuntimeError("image subset changed between the analysis and the masking test")
            grid = model_geometry(model).grid
            cls = r["cls_attn"]
            orders = {
                "attention": cls[:, -1].mean(1),
                "attention-mean": cls.mean((1, 2)),
                "smoothgrad": patch_pool(r["smoothgrad"], grid),
                "random": torch.zeros(cls.shape[0], cls.shape[-1]),  # all ties: the seeded random order
            }
            out = {}
            for i, m in enumerate(MASK_METHODS):
                curve = perturbation_curve(
                    model, data["x"].to(dev), orders[m].to(dev), data["y"], info=info, fractions=list(ratios),
                    mode="positive", unit="patch", grid=grid, seed=int(spec.seed) + i,
                    clean=r["logits"].argmax(1).to(dev),  # ratio 0: the analysis' own forward
                )
                out[m] = curve.accuracy.float()
                out["fractions"] = curve.fractions.float()
            return out

        res = result_store(run_dir).cached("masking", key, compute)
        for m in MASK_METHODS:
            for f, a in zip(res["fractions"].tolist(), res[m].tolist()):
                rows.append({"model": p, "method": m, "ratio": round(100 * f, 3), "accuracy": 100 * a})
    return pd.DataFrame(rows)


def masking_reading(masking: pd.DataFrame, n_images: int) -> str:
    """What the curves show at the smallest masking ratio, in Markdown, every number from ``masking``.

    Per model: the clean accuracy, the accuracy with the random ordering and the range over the
    other orderings at the smallest ratio > 0; then the largest gap between two orderings' mean
    accuracies over all ratios > 0, also in images of ``n_images``.

    Args:
        masking: :func:`masking_curves`.
        n_images: Images each accuracy is measured on (the spec's ``num_images``).

    Returns:
        Markdown text (one bullet per model, then one sentence).
    """
    masked = masking[masking["ratio"] > 0]
    first = masked["ratio"].min()
    lines = [f"At the smallest masking ratio ({first:g} % of the patches black):"]
    for m, sub in masking.groupby("model", sort=False):
        clean = sub[sub["ratio"] == 0]["accuracy"].mean()
        at = sub[sub["ratio"] == first].set_index("method")["accuracy"]
        rest = at.drop("random", errors="ignore")
        span = f"{rest.min():.1f}" if f"{rest.min():.1f}" == f"{rest.max():.1f}" else f"{rest.min():.1f}–{rest.max():.1f}"
        lines.append(f"- **{m}**: {clean:.1f} % clean → {at.get('random', float('nan')):.1f} % with the random "
                     f"ordering, {span} % with the others.")
    means = masked.pivot_table(index="model", columns="method", values="accuracy")
    spread = means.max(axis=1) - means.min(axis=1)
    hi, lo = spread.idxmax(), spread.idxmin()
    lines.append(f"\nOver all ratios > 0, the orderings' mean accuracies differ by at most {spread[hi]:.1f} "
                 f"points ({hi}), i.e. about {spread[hi] * n_images / 100:.0f} of the {n_images} images; "
                 f"smallest spread: {spread[lo]:.1f} points ({lo}).")
    return "\n".join(lines)
