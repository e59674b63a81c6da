"""The cached per-checkpoint analysis behind chapters 02–07 (IAV paper, Figs. 2 and 4–9).

Every notebook is a parameters cell, calls into the chapter modules of :mod:`iavutils.analysis`
and :mod:`iavutils.publish.plots`, and prose. Each computation is keyed by what it depends on —
preset, dataset, checkpoint epoch *and a fingerprint of the checkpoint file*
(:func:`iavutils.analysis.checkpoints.checkpoint_key`), and its parameters (the
:class:`~iavutils.core.spec.AnalysisSpec`) — and cached in the run directory's
:class:`~iavutils.world.store.ResultStore`, so a later notebook (or a second run) reuses it.

The expensive part of the whole book is SmoothGrad. It is computed once per (model, checkpoint)
by :func:`checkpoint_analysis`, which keeps, for a fixed, seeded set of validation images:

* ``iav`` ``[N,L,H]`` — IA-Scores (SmoothGrad vs each head's CLS attention),
* ``smoothgrad`` ``[N,H,W]`` — the pixel attribution ``φ``,
* ``cls_attn`` ``[N,L,H,P]`` — each head's CLS row over the patches ``A``,
* ``logits``, ``labels``, ``targets``, ``indices`` and (embedded data) ``mask``.

Training dynamics (Fig. 4), entropy (Fig. 6), global-IAV/AAV (Fig. 7), head roles (Fig. 8),
t-SNE (Fig. 9) and the SmoothGrad ordering of the masking test (Fig. 5) are all derived from
these entries, so the notebooks 02–07 share one SmoothGrad pass per checkpoint.
:func:`compute_iavs` is the single place where IAVs are computed for a set of images.

A definition that the paper leaves open (it is repeated in the notebooks):

* **Target class** ``ŷ``: the ground-truth label by default (``target="label"``), so that the
  attribution of every checkpoint explains the same class and Fig. 4 measures how the maps
  change, not how the predictions change; ``target="predicted"`` is the alternative of Eq. (3).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.spec import AnalysisSpec
from .checkpoints import (
    _progress,
    analysis_epochs,
    checkpoint_epochs,
    checkpoint_key,
    load_finetuned,
    resolve_device,
    result_store,
)
from .images import default_split, load_images
from .study import Study

__all__ = ["compute_iavs", "checkpoint_analysis", "analyses", "precision_table"]


def compute_iavs(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None,
    spec: AnalysisSpec | None = None,
    *,
    indices: Tensor | None = None,
) -> dict[str, Tensor]:
    """IAVs of a set of images — the one place the notebooks compute them.

    With ``indices`` (dataset positions) the SmoothGrad noise of each image is seeded by
    :func:`iavutils.core.noise.image_seed` ``(seed, index)``, so an image gets the same noise whatever
    subset or batch it is computed in, and every model sees the same noise for the same image.
    Without, the per-image seeds come from ``torch.Generator().manual_seed(seed)`` as in the
    ARCHITECTURE.md noise-stream contract.

    Computed by the engine (:func:`iavutils.core.scores.clean_cls_attention`: CLS rows only; :func:`iavutils.core.attribution.smoothgrad_passes`: chunked SmoothGrad); the
    straightforward reference implementation it agrees with, up to float summation order, is
    the tests' oracle.

    Args:
        model: A finetuned ViT-family classifier.
        images: Model-normalised images ``[B,3,H,W]``.
        targets: ``[B]`` classes to explain, or ``None`` for the predicted class.
        spec: The analysis specification (``None``: :class:`~iavutils.core.spec.AnalysisSpec`
            defaults); used here: ``n_samples`` (SmoothGrad noisy copies per image),
            ``noise_level`` (noise as a fraction of each image's value range), ``noise`` (the
            noise stream), ``seed`` (of the SmoothGrad noise), ``device`` (where to compute) and
            ``progress`` (a tqdm bar over the SmoothGrad chunks). ``num_images`` and ``target``
            are the caller's: it passes the images and ``targets``. With ``spec.tol`` the
            precision mode runs instead (:mod:`iavutils.core.precision`: antithetic pairs in
            rounds over these images until every head's global-IAV is within ``tol``, at most
            ``spec.max_samples`` per image); ``n_samples`` and ``noise`` are then unused.
        indices: Dataset index of each image (see above).

    Returns:
        ``iav [B,L,H]``, ``smoothgrad [B,H,W]`` (pixels), ``cls_attn [B,L,H,P]``,
        ``logits [B,C]``, ``targets [B]`` — all on the CPU; with ``spec.tol`` also ``n_used``
        (samples per image, 0-dim) and ``error [L,H]`` (each head's estimated error bound of
        global-IAV).
    """
    from ..core.attribution import patch_pool, smoothgrad_passes
    from ..core.noise import image_seed, noise_seeds
    from ..core.hooks import model_geometry
    from ..core.scores import clean_cls_attention, ia_score

    spec = AnalysisSpec() if spec is None else spec
    seed = spec.seed
    dev = resolve_device(spec.device)
    model = model.to(dev).eval()
    geo = model_geometry(model)
    x = images.to(dev)
    B = x.shape[0]
    if indices is not None:
        seeds = torch.tensor([image_seed(seed, int(i)) for i in indices], dtype=torch.long)
    else:
        seeds = noise_seeds(B, torch.Generator().manual_seed(int(seed)))
    logits, cls = clean_cls_attention(model, x)
    logits, cls = logits.detach().float().cpu(), cls.detach().float().cpu()
    t = logits.argmax(1) if targets is None else torch.as_tensor(targets).long().cpu().clone()
    if spec.tol is not None:
        from ..core.precision import precision_passes

        run = precision_passes(model, lambda: [(torch.arange(B), x, seeds)], cls, t, tol=spec.tol,
                               max_samples=spec.max_samples, noise_level=spec.noise_level, grid=geo.grid,
                               return_pixels=True, progress=spec.progress)
        return {"iav": run["iav"], "smoothgrad": run["pixels"], "cls_attn": cls, "logits": logits, "targets": t,
                "n_used": torch.tensor(run["n_used"]), "error": run["error"]}
    sg = smoothgrad_passes(model, x, t.to(dev), spec.n_samples, spec.noise_level, seeds=seeds, noise=spec.noise,
                           grid=geo.grid, return_pixels=True, progress=spec.progress)
    phi = sg["pixels"].detach().cpu()
    scores = ia_score(patch_pool(phi, geo.grid), cls)
    return {"iav": scores, "smoothgrad": phi, "cls_attn": cls, "logits": logits, "targets": t}


def checkpoint_analysis(
    preset: str,
    dataset: str = "embedded",
    epoch: int | None = None,
    *,
    run_dir: str | os.PathLike | None = "",
    spec: AnalysisSpec | None = None,
) -> dict[str, Tensor]:
    """SmoothGrad, CLS attention and IAVs of one checkpoint on a seeded image set (cached).

    Args:
        preset: Preset name.
        dataset: Dataset the preset was finetuned on.
        epoch: Checkpoint epoch (``None``: the last one).
        run_dir: Run directory.
        spec: The analysis specification (``None``: :class:`~iavutils.core.spec.AnalysisSpec`
            defaults): ``num_images`` of the held-out split (the same seeded subset for every
            model), ``n_samples`` SmoothGrad noisy copies, ``noise_level`` and ``noise``,
            ``seed`` (the subset and the SmoothGrad noise), ``target`` (``"label"``: ground
            truth, or ``"predicted"``: the class ``ŷ`` explained) and ``device``. Its
            :meth:`~iavutils.core.spec.AnalysisSpec.cache_key` is part of the cache key.

    Returns:
        ``iav [N,L,H]``, ``smoothgrad [N,H,W]``, ``cls_attn [N,L,H,P]``, ``logits [N,C]``,
        ``labels [N]``, ``targets [N]``, ``indices [N]`` and, where the dataset has object masks,
        ``mask [N,H,W]``; with ``spec.tol`` also ``n_used`` (SmoothGrad samples per image, a
        0-dim tensor) and ``error [L,H]`` (each head's estimated error bound of global-IAV).
    """
    spec = AnalysisSpec() if spec is None else spec
    if epoch is None:
        epoch = checkpoint_epochs(preset, dataset, run_dir)[-1]
    key = {**checkpoint_key(preset, dataset, epoch, run_dir), "split": default_split(dataset), **spec.cache_key()}

    def compute() -> dict[str, Tensor]:
        dev = resolve_device(spec.device)
        model, info = load_finetuned(preset, dataset, run_dir, epoch, dev)
        data = load_images(dataset, info, spec.num_images, spec.seed)
        res = compute_iavs(
            model, data["x"], data["y"] if spec.target == "label" else None,
            spec.replace(progress=False),  # the bar is over checkpoints (analyses), not chunks
            indices=data["indices"],
        )
        res.update(labels=data["y"].clone(), indices=data["indices"].clone())
        if "mask" in data:
            res["mask"] = data["mask"]
        return res

    return result_store(run_dir).cached("analysis", key, compute, meta={"what": "SmoothGrad, CLS attention, IAV"})


def analyses(study: Study, stride: int | None, desc: str) -> dict[str, dict[int, dict[str, Tensor]]]:
    """``{preset: {epoch: checkpoint_analysis}}`` over the chosen epochs (``stride=None``: last only).

    Args:
        study: The presets, dataset, run and spec (:class:`~iavutils.analysis.study.Study`);
            ``study.spec.progress`` shows a bar over the checkpoints.
        stride: Every ``stride``-th checkpoint epoch, the last always (``None``: the last only).
        desc: The progress bar's label.
    """
    dataset, run_dir, spec = study.dataset, study.run_dir, study.spec
    jobs = []
    for p in study.presets:
        epochs = analysis_epochs(p, dataset, run_dir, stride) if stride else checkpoint_epochs(p, dataset, run_dir)[-1:]
        jobs += [(p, e) for e in epochs]
    out: dict[str, dict[int, dict[str, Tensor]]] = {}
    for p, e in _progress(jobs, desc, spec.progress):
        out.setdefault(p, {})[e] = checkpoint_analysis(p, dataset, e, run_dir=run_dir, spec=spec)
    return out


def precision_table(study: Study) -> Any:
    """How precise each model's global-IAV is at its last checkpoint: one row per model.

    Args:
        study: The presets, dataset, run and spec (:class:`~iavutils.analysis.study.Study`).

    Returns:
        A ``pandas.DataFrame`` with ``model``, ``n per image`` and ``noise``; with ``spec.tol``
        also ``tol`` and the largest and median estimated error over the heads (the cached
        :func:`checkpoint_analysis`; nothing is computed for the fixed-n mode).
    """
    import pandas as pd

    spec = study.spec
    rows = []
    for p in study.presets:
        if spec.tol is None:
            rows.append({"model": p, "n per image": spec.n_samples, "noise": spec.noise})
            continue
        r = checkpoint_analysis(p, study.dataset, None, run_dir=study.run_dir, spec=spec)
        err = r["error"].flatten()
        rows.append({"model": p, "n per image": int(r["n_used"]), "noise": "antithetic", "tol": spec.tol,
                     "largest error": float(err.nan_to_num(0.0).max()), "median error": float(err.nanmedian())})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- per-head views


def _rank_within_layer(values: Tensor, descending: bool = True) -> Tensor:
    """Position of each head after sorting the heads of its layer (``[L,H]`` → ``[L,H]`` ranks)."""
    order = torch.argsort(torch.nan_to_num(values, nan=-1.0), dim=1, descending=descending)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(values.shape[1]).expand_as(order).contiguous())
    return ranks


def _head_rows(preset: str, values: Tensor, extra: dict[str, Any], name: str) -> list[dict[str, Any]]:
    ranks = _rank_within_layer(values)
    L, H = values.shape
    return [
        {"model": preset, **extra, "layer": l + 1, "head": h, "rank": int(ranks[l, h]), name: float(values[l, h])}
        for l in range(L) for h in range(H)
    ]


def _layer_features(r: dict[str, Tensor]) -> dict[str, np.ndarray]:
    s = r["iav"].double()
    s = torch.where(torch.isnan(s), torch.nanmean(s, dim=0, keepdim=True).nan_to_num(0.0), s)
    feats = {f"L{l + 1}": s[:, l].numpy() for l in range(s.shape[1])}
    feats["classifier"] = r["logits"].double().numpy()
    return feats
