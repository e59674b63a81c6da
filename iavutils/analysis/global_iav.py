"""Chapter 05, global IAV (IAV paper, Fig. 7): global-IAV and global-AAV per head, and their baselines.

Also the one-sentence comparison of a per-model number between the two pretraining types
(:func:`pretraining_contrast`) that the chapters' prose uses.

A definition that the paper leaves open (it is repeated in the notebook):

* **global-AAV** (Fig. 7b): the IA-Score with the last checkpoint's SmoothGrad of the reference
  model (the paper uses DINO; our default is the DINO-like preset of the run), computed on the
  same images; the embedded dataset also gives the AAV with the ground-truth object mask.
* **The reference model's own AAV** is its attention scored against its own SmoothGrad (at the
  last epoch exactly its IAV), so it is left out of every pretraining contrast of that AAV and
  shown apart, labelled (:data:`SELF_REFERENCE`).
* **Change over finetuning** starts at the first finetuned epoch, never at epoch 0 (the
  pretrained backbone with a random head; :mod:`iavutils.analysis.dynamics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .checkpoints import _preset_order, _presets_module, pretraining
from .dynamics import BEFORE_COLUMN, analyses_from_reference, change_over_finetuning
from .iavs import _head_rows, checkpoint_analysis
from .images import has_masks, warn_no_masks
from .study import Study

__all__ = ["pretraining_contrast", "default_aav_reference", "global_scores_over_epochs", "uniform_baselines",
           "SELF_REFERENCE", "is_self_reference", "later_layers_table", "contrast_sentences", "uniform_reading",
           "uniform_table"]

#: The label of the AAV reference model's own AAV (its attention against its own SmoothGrad).
SELF_REFERENCE = "AAV reference: its own SmoothGrad (AAV = IAV at the last epoch), left out of the contrast"


def pretraining_contrast(
    values: Mapping[str, float], expect: str, what: str, fmt: str = ".3f", source: str = "paper"
) -> str:
    """One honest sentence comparing a per-model number between the two pretraining types.

    Args:
        values: ``{preset: value}``.
        expect: The paper's claim, ``"self-supervised higher"`` or ``"self-supervised lower"``.
        what: What the value is, for the sentence.
        fmt: Number format.
        source: Whose expectation ``expect`` is (``"paper"``, or e.g. ``"naive expectation"``).

    Returns:
        Markdown: the group means and whether the expected ordering holds for every pair of
        models (*separates*), only for the group means (*on average only*), or not at all.
    """
    if expect not in ("self-supervised higher", "self-supervised lower"):
        raise ValueError(f"expect must be 'self-supervised higher' or 'self-supervised lower', got {expect!r}")
    vals = {m: float(v) for m, v in values.items() if v == v}  # drop NaN
    ssl = {m: v for m, v in vals.items() if pretraining(m) == "self-supervised"}
    sup = {m: v for m, v in vals.items() if pretraining(m) == "supervised"}
    if not ssl or not sup:
        return f"*{what}*: the run needs both supervised and self-supervised models for this comparison."
    sign = 1.0 if expect == "self-supervised higher" else -1.0
    m_ssl, m_sup = float(np.mean(list(ssl.values()))), float(np.mean(list(sup.values())))
    if sign > 0:
        separates = min(ssl.values()) > max(sup.values())
    else:
        separates = max(ssl.values()) < min(sup.values())
    if separates:
        verdict = "**the expected ordering holds and separates the types** (every self-supervised model is on the expected side of every supervised one)"
    elif sign * (m_ssl - m_sup) > 0:
        verdict = "**the expected ordering holds on average only** (the groups overlap)"
    else:
        verdict = "**the expected ordering does not hold in this run**"
    word = "higher" if sign > 0 else "lower"
    per_model = ", ".join(f"{m} {v:{fmt}}" for m, v in sorted(vals.items(), key=lambda kv: _preset_order(kv[0])))
    return (f"*{what}* — {source}: self-supervised {word}. Here: self-supervised mean {m_ssl:{fmt}}, "
            f"supervised mean {m_sup:{fmt}} ({per_model}): {verdict}.")


def default_aav_reference(presets: Sequence[str]) -> str | None:
    """The run's DINO-like model (the paper's global-AAV reference), if any."""
    for p in presets:
        if "dino" in p:
            return p
    return None


def _aav_maps(
    study: Study, stride: int | None, aav_reference: str | None, desc: str
) -> list[tuple[str, tuple[int, int], int, dict[str, Tensor], dict[str, Tensor]]]:
    """Every analysed checkpoint with the maps its global-AAVs compare the attention with.

    Shared by :func:`global_scores_over_epochs` and :func:`uniform_baselines`, so that both name
    and take the same maps.

    Args:
        study: What is analysed (:class:`~iavutils.analysis.study.Study`).
        stride: Epoch stride (``None``: last epoch only).
        aav_reference: A preset, ``"auto"`` (:func:`default_aav_reference`) or ``None``/``""``.
        desc: Progress bar label.

    Returns:
        ``(preset, grid, epoch, analysis, aav_maps)`` per preset and epoch (epochs in order):
        ``aav_maps`` holds ``"AAV (<ref>)"`` (the reference's last-checkpoint SmoothGrad), when
        there is a reference, and ``"AAV (mask)"``, when the dataset has masks; pixel maps ``[N,H,W]``.
    """
    runs = analyses_from_reference(study, stride, desc)
    if aav_reference == "auto":
        aav_reference = default_aav_reference(list(study.presets))
    ref_phi = None
    if aav_reference:
        ref_phi = checkpoint_analysis(aav_reference, study.dataset, None, run_dir=study.run_dir,
                                      spec=study.spec)["smoothgrad"]
    out = []
    for p, by_epoch in runs.items():
        grid = _presets_module().PRESETS[p].grid
        for e, r in sorted(by_epoch.items()):
            aav_maps = {}
            if ref_phi is not None:
                aav_maps[f"AAV ({aav_reference})"] = ref_phi
            if "mask" in r:
                aav_maps["AAV (mask)"] = r["mask"]
            out.append((p, grid, e, r, aav_maps))
    return out


def global_scores_over_epochs(
    study: Study, *, stride: int = 1, aav_reference: str | None = "auto"
) -> pd.DataFrame:
    """global-IAV and global-AAV per head and analysed epoch (Fig. 7).

    ``IAV``: mean over images of the IA-Score with the model's own SmoothGrad (NaN-aware).
    ``AAV (<ref>)``: the same with the last checkpoint's SmoothGrad of ``aav_reference`` on the
    same images (the paper: DINO). ``AAV (mask)``: with the ground-truth object mask, where the
    dataset has masks.

    Args:
        study: What is analysed (:class:`~iavutils.analysis.study.Study`); its spec's ``progress``
            shows a bar over the checkpoints.
        stride: Every ``stride``-th checkpoint epoch (the last and the first finetuned always).
        aav_reference: A preset, ``"auto"`` (:func:`default_aav_reference`) or ``None``/``""``
            (no model-based AAV).

    Returns:
        Columns ``model, epoch, score ("IAV" | "AAV (<ref>)" | "AAV (mask)"), layer, head, rank
        (position after sorting the layer's heads by decreasing score), value``.
    """
    from ..core.attribution import patch_pool
    from ..core.scores import global_iav, ia_score

    checkpoints = _aav_maps(study, stride, aav_reference, "Fig. 7 maps")
    if not has_masks(study.dataset):
        warn_no_masks(study.dataset, "the AAV with the object mask ('AAV (mask)')")
    rows = []
    for p, grid, e, r, aav_maps in checkpoints:
        scores = {"IAV": r["iav"]}
        scores.update({name: ia_score(patch_pool(m, grid), r["cls_attn"]) for name, m in aav_maps.items()})
        for name, s in scores.items():
            rows += _head_rows(p, global_iav(s.double()), {"epoch": e, "score": name}, "value")
    return pd.DataFrame(rows)


def uniform_baselines(
    study: Study, *, stride: int | None = None, aav_reference: str | None = "auto"
) -> pd.DataFrame:
    """The IA-Score a head with *uniform* attention would get: ``cos(φ_P, 1)``, mean over images.

    Cosines of non-negative vectors are never negative, and a smooth attribution has a high
    cosine with the flat vector, so "IA-Score > 0.5" is not by itself evidence that a head looks
    at the object: compare a head's score with this baseline of the same map. It depends only on
    the map (SmoothGrad of that checkpoint, the reference model's SmoothGrad, or the mask).

    Args:
        study: What is analysed (:class:`~iavutils.analysis.study.Study`); its spec's ``progress``
            shows a bar over the checkpoints.
        stride: Epoch stride as in :func:`global_scores_over_epochs` (``None``: last epoch only).
        aav_reference: As in :func:`global_scores_over_epochs`.

    Returns:
        Columns ``model, epoch, score, baseline`` (``score`` as in :func:`global_scores_over_epochs`).
    """
    from ..core.attribution import patch_pool

    checkpoints = _aav_maps(study, stride, aav_reference, "uniform baselines")
    rows = []
    for p, grid, e, r, aav_maps in checkpoints:
        for name, m in {"IAV": r["smoothgrad"], **aav_maps}.items():
            phi = patch_pool(m.double(), grid)
            cos = phi.sum(1) / (phi.norm(dim=1) * phi.shape[1] ** 0.5)
            rows.append({"model": p, "epoch": e, "score": name, "baseline": float(torch.nanmean(cos))})
    return pd.DataFrame(rows)


def uniform_table(uniform: pd.DataFrame) -> pd.DataFrame:
    """:func:`uniform_baselines` as a ``(score, model) × epoch`` table, epoch 0 labelled "before finetuning"."""
    t = uniform.pivot_table(index=["score", "model"], columns="epoch", values="baseline", sort=False)
    t = t[sorted(t.columns)]
    t.columns = [BEFORE_COLUMN if e == 0 else f"epoch {e}" for e in t.columns]
    return t


def is_self_reference(score: str, model: str) -> bool:
    """Whether ``score`` is the AAV with ``model``'s own SmoothGrad (``"AAV (<model>)"``)."""
    return score == f"AAV ({model})"


def later_layers_table(scores: pd.DataFrame, uniform: pd.DataFrame) -> pd.DataFrame:
    """Mean global score of the later half of the layers per score and model, over finetuning.

    Args:
        scores: :func:`global_scores_over_epochs` frame.
        uniform: :func:`uniform_baselines` frame (its last epoch per score and model is used).

    Returns:
        Indexed by ``(score, model)``: ``pretraining``, ``role`` (:data:`SELF_REFERENCE` for the
        reference model's own AAV, else empty), then the columns of
        :func:`iavutils.analysis.dynamics.change_over_finetuning` (epoch 0 labelled, change from
        the first finetuned epoch) and ``above uniform`` (last epoch − the uniform-attention score).
    """
    late = scores[scores["layer"] > scores["layer"].max() / 2]
    table = change_over_finetuning(late, "value", ("score", "model")).set_index(["score", "model"])
    order = {k: i for i, k in enumerate(dict.fromkeys(scores["score"]))}  # score-major, models in run order
    models = {k: i for i, k in enumerate(dict.fromkeys(scores["model"]))}
    table = table.loc[sorted(table.index, key=lambda sm: (order[sm[0]], models[sm[1]]))]
    last_uniform = uniform.loc[uniform.groupby(["score", "model"])["epoch"].idxmax()].set_index(["score", "model"])
    table["above uniform"] = table["last epoch"] - last_uniform["baseline"].reindex(table.index)
    table.insert(0, "role", [SELF_REFERENCE if is_self_reference(s, m) else "" for s, m in table.index])
    table.insert(0, "pretraining", [pretraining(m) for _, m in table.index])
    return table


_CONTRASTS = (("last epoch", "last epoch"), ("change", "change from the first finetuned epoch"),
              ("above uniform", "last epoch minus the uniform-attention score"))


def contrast_sentences(table: pd.DataFrame, expect: str = "self-supervised higher") -> list[str]:
    """:func:`pretraining_contrast` for every score and column of :func:`later_layers_table`.

    The reference model's own AAV is left out of its score's contrasts (one sentence says so).

    Returns:
        Markdown sentences, in the order of the table's scores.
    """
    out = []
    for score in dict.fromkeys(table.index.get_level_values("score")):
        sub = table.loc[score]
        own = [m for m in sub.index if is_self_reference(score, m)]
        kept = sub.drop(index=own)
        for col, what in _CONTRASTS:
            if col in kept:
                out.append(pretraining_contrast(kept[col].to_dict(), expect, f"{score}, later layers, {what}"))
        out += [f"*{score}*: {m} is the AAV reference and is left out of these contrasts "
                f"(its own AAV, last epoch {sub.loc[m, 'last epoch']:.3f}, is its IAV)." for m in own]
    return out


def uniform_reading(table: pd.DataFrame, score: str = "IAV") -> str:
    """Each model's later-layer score at the last epoch against the score of uniform attention on the same maps.

    Returns:
        A Markdown sentence from :func:`later_layers_table`'s ``last epoch`` and ``above uniform``.
    """
    if score not in table.index.get_level_values("score"):
        return f"No {score} in this run."
    sub = table.loc[score]
    parts = []
    for m, row in sub.iterrows():
        d = row["above uniform"]
        if d != d:  # no uniform baseline for this score and model
            parts.append(f"{m} {row['last epoch']:.3f} (no uniform baseline)")
            continue
        side = "above" if d > 0 else "below" if d < 0 else "at"
        parts.append(f"{m} {row['last epoch']:.3f} ({d:+.3f}, {side} uniform)")
    return (f"*{score}*, later layers, last epoch, and its margin over a head with uniform attention on the "
            f"same maps: {'; '.join(parts)}. A margin near 0 means the heads score no better than attending everywhere.")
