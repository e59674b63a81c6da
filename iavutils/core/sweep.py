"""Sweeps: the IAVs of a whole dataset, and the bf16 autocast check.

:func:`iav_dataset` seeds the noise of the image at dataset index ``i`` with
:func:`~iavutils.core.noise.image_seed` ``(seed, i)``, so an image's result does not depend on
which other images share its batch or process (:mod:`iavutils.analysis.distributed` relies on
this). With ``tol`` it runs the precision mode of :mod:`iavutils.core.precision` over the whole
set. :func:`autocast_deviation` measures how far bf16 autocast moves the IA-Scores
(compare with ``BF16_TOLERANCE``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .chunking import auto_chunk_size
from .geometry import check_grad_mode, model_geometry
from .hooks import threads
from .noise import image_seed
from .precision import check_precision, precision_passes
from .scores import clean_cls_attention, iav
from .spec import AnalysisSpec

__all__ = ["BF16_TOLERANCE", "autocast_deviation", "iav_dataset"]

# the defaults are declared once, in the analysis specification
_D = AnalysisSpec()

# Largest |Δ IA-Score| we accept between bf16 autocast and fp32 (stated in the docs, checked by
# ``autocast_deviation`` and the benchmark). bf16 keeps 8 mantissa bits (~0.4 % relative); a
# cosine of two 64..196-long non-negative vectors moves by far less than that in practice.
BF16_TOLERANCE = 0.02


def _item(ds: Any, i: int) -> tuple[Tensor, int | None]:
    item = ds[i]
    if isinstance(item, (tuple, list)):
        x = item[0]
        y = item[1] if len(item) > 1 else None
    else:
        x, y = item, None
    return torch.as_tensor(x), (None if y is None else int(y))


def _iter_batches(
    dataset_or_loader: Any, indices: Sequence[int] | None, group: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yields ``(x [G,3,H,W], y [G] (-1 = none), idx [G])`` groups in index order."""
    if isinstance(dataset_or_loader, torch.utils.data.DataLoader):
        pos = 0
        for batch in dataset_or_loader:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            y = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
            n = x.shape[0]
            idx = torch.arange(pos, pos + n)
            pos += n
            y = torch.full((n,), -1, dtype=torch.long) if y is None else torch.as_tensor(y).long()
            if indices is not None:
                keep = torch.isin(idx, torch.as_tensor(list(indices)))
                x, y, idx = x[keep], y[keep], idx[keep]
            if len(idx):
                yield x, y, idx
        return
    ds = dataset_or_loader
    idx_all = list(range(len(ds))) if indices is None else [int(i) for i in indices]
    for s in range(0, len(idx_all), group):
        ids = idx_all[s : s + group]
        items = [_item(ds, i) for i in ids]
        x = torch.stack([it[0] for it in items])
        y = torch.tensor([-1 if it[1] is None else it[1] for it in items], dtype=torch.long)
        yield x, y, torch.tensor(ids, dtype=torch.long)


def iav_dataset(
    model: nn.Module,
    dataset_or_loader: Any,
    *,
    indices: Sequence[int] | None = None,
    num_images: int | None = None,
    target: Literal["pred", "predicted", "label"] = "pred",
    n_samples: int = _D.n_samples,
    noise_level: float = _D.noise_level,
    seed: int = _D.seed,
    noise: str = _D.noise,
    chunk_size: int | str | None = "auto",
    memory_budget: int | None = None,
    autocast: Any = None,
    compile: bool | str = False,
    device: torch.device | str | None = None,
    images_per_call: int | None = None,
    num_threads: int | None = None,
    keep_cls_attention: bool = False,
    progress: bool = True,
    tol: float | None = _D.tol,
    max_samples: int = _D.max_samples,
) -> dict[str, Tensor]:
    """IAVs of a whole dataset (or the listed indices), for sweeps.

    The noise of the image at dataset index ``i`` is seeded by ``image_seed(seed, i)``, so the
    result of an image does not depend on which other images share its batch or process
    (``iavutils.analysis.distributed`` relies on this).

    Args:
        model: the ViT (moved to ``device`` by the caller).
        dataset_or_loader: a map-style dataset returning ``(x, y, ...)`` or ``x``, or a
            non-shuffling ``DataLoader`` (indices are then positions in iteration order).
        indices: dataset indices to process (default: all, or the first ``num_images``).
        num_images: cap on the number of images.
        target: ``"pred"`` / ``"predicted"`` (predicted class, the paper's ``ŷ``) or ``"label"``.
        n_samples, noise_level, noise, chunk_size, memory_budget, autocast, compile: as
            :func:`~iavutils.core.scores.iav`.
        seed: base seed.
        device: where to compute; default the model's device.
        images_per_call: images handed to one engine call (default: enough for ~4 chunks).
        num_threads: CPU threads for the engine calls (restored afterwards).
        keep_cls_attention: also return the ``[N,L,H,P]`` CLS rows (large for big sweeps).
        progress: tqdm over images.
        tol: Target precision of every head's global-IAV over the processed images, or
            ``None`` (fixed ``n_samples``). With ``tol``, SmoothGrad draws antithetic pairs in
            rounds over all images until every head's estimated error (jackknife over 8
            replicate groups, 95 %) is within ``tol`` (:mod:`iavutils.core.precision`);
            ``n_samples`` and ``noise`` are unused, the images are read once per round, and
            the ``[N,L,H,P]`` CLS rows are held in memory.
        max_samples: Cap on the samples per image with ``tol`` (a warning when reached).

    Returns:
        dict with ``iav [N,L,H]``, ``targets [N]``, ``preds [N]``, ``labels [N]`` (-1 if the
        dataset has none), ``indices [N]``, ``seeds [N]``, ``cls_attention [N,L,H,P]``,
        ``attribution [N,P]``; with ``tol`` also ``n_used`` (samples per image, a 0-dim
        tensor) and ``error [L,H]`` (each head's estimated error bound).
    """
    if target not in ("pred", "predicted", "label"):
        raise ValueError(f"target must be 'pred' (alias 'predicted': the predicted class) or 'label', got {target!r}")
    check_grad_mode("iav_dataset")
    if tol is not None:
        check_precision(tol, max_samples)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if indices is None and num_images is not None and not isinstance(dataset_or_loader, torch.utils.data.DataLoader):
        indices = range(min(num_images, len(dataset_or_loader)))
    elif indices is not None and num_images is not None:
        indices = list(indices)[:num_images]
    if images_per_call is None:
        probe_x = None
        if not isinstance(dataset_or_loader, torch.utils.data.DataLoader):
            first = (list(indices)[0] if indices is not None else 0)
            probe_x = _item(dataset_or_loader, first)[0]
        if probe_x is not None:
            plan = auto_chunk_size(model, tuple(probe_x.shape), None, device, memory_budget, autocast)
            images_per_call = max(1, (4 * plan.chunk_size) // max(n_samples, 1))
        else:
            images_per_call = 32
    total = len(indices) if indices is not None else (
        len(dataset_or_loader.dataset) if isinstance(dataset_or_loader, torch.utils.data.DataLoader) else len(dataset_or_loader)
    )
    if num_images is not None:
        total = min(total, num_images)

    def groups() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        # the image groups in index order; the precision mode reads them once per round
        done = 0
        for xb, yb, ib in _iter_batches(dataset_or_loader, indices, images_per_call):
            if num_images is not None and done >= num_images:
                break
            if num_images is not None and done + len(ib) > num_images:
                keep = num_images - done
                xb, yb, ib = xb[:keep], yb[:keep], ib[:keep]
            done += len(ib)
            yield xb.to(device), yb, ib

    if tol is not None:
        return _iav_to_precision(model, groups, target, tol, max_samples, noise_level, seed, num_threads,
                                 keep_cls_attention, progress, chunk_size=chunk_size, memory_budget=memory_budget,
                                 autocast=autocast, compile=compile)

    bar = None
    if progress:
        from .progress import tqdm  # one progress helper: widgets, terminal, or the book runner

        bar = tqdm(total=total, desc="IAV", unit="img")
    keys = ["iav", "targets", "preds", "labels", "indices", "seeds", "attribution"]
    outs: dict[str, list[Tensor]] = {k: [] for k in keys + (["cls_attention"] if keep_cls_attention else [])}
    try:
        for xb, yb, ib in groups():
            seeds = torch.tensor([image_seed(seed, int(i)) for i in ib], dtype=torch.long)
            tgt = None
            if target == "label":
                if bool((yb < 0).any()):
                    raise ValueError("target='label' needs labelled items")
                tgt = yb.to(device)

            det = iav(
                model, xb, tgt, n_samples, noise_level, None, chunk_size, memory_budget, autocast, compile,
                seeds=seeds, noise=noise, num_threads=num_threads, return_details=True,
            )
            outs["iav"].append(det["iav"].cpu())
            outs["targets"].append(det["target"].cpu())
            outs["preds"].append(det["logits"].argmax(-1).cpu())
            outs["labels"].append(yb.cpu())
            outs["indices"].append(ib.cpu())
            outs["seeds"].append(seeds)
            if keep_cls_attention:
                outs["cls_attention"].append(det["cls_attention"].float().cpu())
            outs["attribution"].append(det["attribution"].cpu())
            if bar is not None:
                bar.update(len(ib))
    finally:
        if bar is not None:
            bar.close()
    if not outs["iav"]:
        raise ValueError("no images to process")
    return {k: torch.cat(v) for k, v in outs.items()}


def _iav_to_precision(
    model: nn.Module,
    groups: Any,
    target: str,
    tol: float,
    max_samples: int,
    noise_level: float,
    seed: int,
    num_threads: int | None,
    keep_cls_attention: bool,
    progress: bool,
    **engine: Any,
) -> dict[str, Tensor]:
    """``iav_dataset`` in the precision mode: a clean pass over the images, then rounds of pairs."""
    geo = model_geometry(model)
    keys = ["targets", "preds", "labels", "indices", "seeds", "cls_attention"]
    outs: dict[str, list[Tensor]] = {k: [] for k in keys}
    with threads(num_threads):
        for xb, yb, ib in groups():
            if target == "label" and bool((yb < 0).any()):
                raise ValueError("target='label' needs labelled items")
            logits, cls = clean_cls_attention(model, xb)
            preds = logits.argmax(-1).cpu()
            outs["targets"].append(yb.clone() if target == "label" else preds)
            outs["preds"].append(preds)
            outs["labels"].append(yb.cpu())
            outs["indices"].append(ib.cpu())
            outs["seeds"].append(torch.tensor([image_seed(seed, int(i)) for i in ib], dtype=torch.long))
            outs["cls_attention"].append(cls.float().cpu())
        if not outs["targets"]:
            raise ValueError("no images to process")
        res = {k: torch.cat(v) for k, v in outs.items()}

        def batches() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
            pos = 0
            for xb, _, ib in groups():  # the same groups, in the same order, every round
                yield torch.arange(pos, pos + len(ib)), xb, res["seeds"][pos : pos + len(ib)]
                pos += len(ib)

        run = precision_passes(model, batches, res["cls_attention"], res["targets"], tol=tol,
                               max_samples=max_samples, noise_level=noise_level, grid=geo.grid, progress=progress,
                               **engine)
    res.update(iav=run["iav"], attribution=run["patches"], n_used=torch.tensor(run["n_used"]), error=run["error"])
    if not keep_cls_attention:
        del res["cls_attention"]
    return res


# --------------------------------------------------------------------------------------------
# bf16 check


def autocast_deviation(
    model: nn.Module,
    x: Tensor,
    dtype: torch.dtype = torch.bfloat16,
    n_samples: int = 8,
    noise_level: float = _D.noise_level,
    seed: int = _D.seed,
) -> float:
    """Max |IA-Score(autocast) − IA-Score(fp32)| on the same noise (compare with ``BF16_TOLERANCE``)."""
    ref = iav(model, x, None, n_samples, noise_level, torch.Generator().manual_seed(seed), return_details=True)
    low = iav(
        model, x, ref["target"], n_samples, noise_level, torch.Generator().manual_seed(seed), autocast=dtype
    )
    return float((low.float() - ref["iav"]).abs().nan_to_num(0.0).max())
