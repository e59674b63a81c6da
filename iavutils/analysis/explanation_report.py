"""Chapter 08's tables and verdict: does GMAR beat rollout on these models?

Frames built from :func:`iavutils.analysis.explanations.run_explanation_eval` results (one per
model) and :func:`~iavutils.analysis.explanations.explanation_table`: AUC and localization tables
per method and model, the perturbation curves and the AAV with the object mask as tidy frames
(for :mod:`iavutils.publish.figures`), and the chapter's verdict in Markdown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.metrics import LOCALIZATION_METRICS
from .explanations import EXPLANATION_METHODS, gmar_vs_rollout

__all__ = [
    "AUC_TABLES",
    "GMAR_RULE",
    "NO_MASKS_AAV",
    "NO_MASKS_LOCALIZATION",
    "comparison_table",
    "gmar_verdict",
    "localization_tables",
    "mask_aav_frame",
    "method_order",
    "method_pivot",
    "perturbation_frame",
    "auc_tables",
]

#: ``(column of explanation_table, title)`` of the chapter's AUC tables.
AUC_TABLES: tuple[tuple[str, str], ...] = (
    ("auc_positive", "positive perturbation AUC (lower = better)"),
    ("auc_negative", "negative perturbation AUC (higher = better)"),
    ("auc_patch_positive", "patch masking AUC, IAV Fig. 5 (lower = better)"),
)

#: What the chapter says instead of the localization, for a dataset without masks (``{dataset}``).
NO_MASKS_LOCALIZATION = (
    "**Skipped: {dataset} has no object masks**, so there is nothing to localize against "
    "(pixel accuracy, mIoU, AP and the pointing game need a ground-truth mask). The "
    "perturbation AUCs above do not need masks and are computed."
)

#: What the chapter says instead of the AAV with the mask, for a dataset without masks.
NO_MASKS_AAV = (
    "**Skipped: {dataset} has no object masks**, so the AAV with the mask cannot be "
    "computed; chapter 05 shows the AAV with a reference model's SmoothGrad instead."
)


#: The rule of :func:`gmar_verdict`, as the chapter prints it.
GMAR_RULE = (
    "Rule: a comparison is *better* (*worse*) when its 95 % paired bootstrap interval over images "
    "excludes 0 in GMAR's (rollout's) favour, *indistinguishable* when it contains 0; the verdict is "
    "**GMAR beats rollout** when more than half of all comparisons are *better*, **worse** when more "
    "than half are *worse*, **cannot say** otherwise."
)


def method_order(table: Any) -> list[str]:
    """The methods of an :func:`explanation_table` in :data:`EXPLANATION_METHODS` order."""
    return [m for m in EXPLANATION_METHODS if m in set(table["method"])]


def method_pivot(table: Any, col: str, models: Sequence[str]) -> Any:
    """One column of the table as methods × models (rows without any value dropped), rounded to 0.1."""
    t = table.pivot(index="method", columns="model", values=col).reindex(index=method_order(table), columns=list(models))
    return t.dropna(how="all").round(1)


def auc_tables(table: Any, models: Sequence[str]) -> dict[str, Any]:
    """``{title: methods × models}`` of the three AUCs (:data:`AUC_TABLES`)."""
    return {title: method_pivot(table, col, models) for col, title in AUC_TABLES}


def localization_tables(table: Any, models: Sequence[str]) -> dict[str, Any]:
    """``{metric: methods × models}`` of the localization means (empty without object masks)."""
    if not table["miou"].notna().any():
        return {}
    return {col: method_pivot(table, col, models).round(2) for col in LOCALIZATION_METRICS}


def perturbation_frame(results: Mapping[str, Mapping[str, Tensor]]) -> Any:
    """Mean accuracy per model, mode, method and removed fraction (the perturbation curves).

    Returns:
        ``pandas.DataFrame`` with ``model, mode, method, removed pixels (%), accuracy (%)``.
    """
    import pandas as pd

    rows = []
    for p, res in results.items():
        fr = res["fractions"]
        for key, v in res.items():
            mode, _, m = key.partition(".")
            if mode in ("positive", "negative"):
                for f, a in zip(fr.tolist(), v.mean(1).tolist()):
                    rows.append({"model": p, "mode": mode, "method": m,
                                 "removed pixels (%)": 100 * f, "accuracy (%)": 100 * a})
    return pd.DataFrame(rows)


def mask_aav_frame(results: Mapping[str, Mapping[str, Tensor]]) -> Any:
    """Per model, layer and head: the AAV with the object mask, averaged over images.

    Returns:
        ``pandas.DataFrame`` with ``model, layer (1-based), head, AAV (mask)``; empty when no
        result has a mask AAV (a dataset without masks).
    """
    import pandas as pd

    rows = []
    for p, res in results.items():
        if "aav_mask" not in res:
            continue
        a = torch.nanmean(res["aav_mask"].double(), dim=0)  # [L,H]
        for l in range(a.shape[0]):
            for h in range(a.shape[1]):
                rows.append({"model": p, "layer": l + 1, "head": h, "AAV (mask)": float(a[l, h])})
    return pd.DataFrame(rows, columns=["model", "layer", "head", "AAV (mask)"])


def comparison_table(results: Mapping[str, Mapping[str, Tensor]], **kw: Any) -> Any:
    """:func:`gmar_vs_rollout` with a ``verdict`` column: ``better``, ``worse`` or ``no difference``."""
    cmp = gmar_vs_rollout(results, **kw)
    cmp["verdict"] = cmp["better"].map({True: "better", False: "worse"}).fillna("no difference")
    return cmp


def gmar_verdict(cmp: Any, table: Any, n_models: int) -> str:
    """The chapter's answer in Markdown: counts of the comparisons, mean differences, rule, verdict.

    The rule (:data:`GMAR_RULE`, printed before the verdict): **GMAR beats rollout** when more than half of the comparisons (models × GMAR norms × the
    two tests) say better, **it is worse** when more than half say worse, **cannot say**
    otherwise.

    Args:
        cmp: :func:`comparison_table`.
        table: :func:`~iavutils.analysis.explanations.explanation_table` (for the mIoU line).
        n_models: Number of models compared.

    Returns:
        Markdown text.
    """
    counts = cmp.groupby("verdict").size().to_dict()
    n = len(cmp)
    lines = [f"Over {n_models} model(s) × 2 GMAR norms × 2 tests = {n} comparisons: "
             f"GMAR is **better** than rollout in {counts.get('better', 0)}, **worse** in "
             f"{counts.get('worse', 0)} and **indistinguishable** in {counts.get('no difference', 0)}."]
    mean_pos = cmp[cmp["mode"] == "positive"]["diff"].mean()
    mean_neg = cmp[cmp["mode"] == "negative"]["diff"].mean()
    lines.append(f"Average difference: positive AUC {mean_pos:+.2f} (negative favours GMAR), "
                 f"negative AUC {mean_neg:+.2f} (positive favours GMAR).")
    if "miou" in table and table["miou"].notna().any():
        loc = table.pivot(index="model", columns="method", values="miou")
        d = (loc["gmar_l1"] - loc["rollout"]).mean()
        lines.append(f"Localization: mean mIoU difference GMAR-L1 − rollout = {d:+.3f}.")
    lines.append(GMAR_RULE)
    if counts.get("better", 0) > n / 2:
        lines.append("**Verdict: on these models GMAR beats rollout.**")
    elif counts.get("worse", 0) > n / 2:
        lines.append("**Verdict: on these models GMAR does not beat rollout — it is worse.**")
    else:
        lines.append("**Verdict: on these models we cannot say that GMAR beats rollout**; "
                     f"{counts.get('no difference', 0)} of the {n} intervals contain 0.")
    return " ".join(lines)
