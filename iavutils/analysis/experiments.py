"""Cached per-section computations behind the notebooks (IAV paper, Figs. 2–9).

Every notebook is a parameters cell, calls into this module and :mod:`iavutils.publish.plots`, and prose.
Each computation here is keyed by what it depends on — preset, dataset, checkpoint epoch *and a
fingerprint of the checkpoint file*, and its parameters — and cached in the run directory's
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

Definitions that the paper leaves open (they are repeated in the notebooks):

* **Target class** ``ŷ``: the ground-truth label by default (``target="label"``), so that the
  attribution of every checkpoint explains the same class and Fig. 4 measures how the maps
  change, not how the predictions change; ``target="predicted"`` is the alternative of Eq. (3).
* **Map distance** (Fig. 4): ``d(φ_t, φ_T) = mean_i ‖φ_t(x_i)/‖φ_t(x_i)‖₂ − φ_T(x_i)/‖φ_T(x_i)‖₂‖₂``
  over the pixels of the SmoothGrad map, and for attention the same distance between the CLS
  rows over the patches of every head, averaged over the ``L·H`` heads and the images. Maps are
  normalised to unit L2 norm (as the IA-Score does), so the distance lies in ``[0, √2]``, is 0
  for identical maps and does not depend on the maps' scale. ``T`` is the last checkpoint.
* **Masking orders** (Fig. 5): ``attention`` = last layer's CLS attention averaged over its
  heads; ``attention-mean`` = CLS attention averaged over all heads of all layers (the paper's
  "Attention-Mean"); ``smoothgrad`` = patch-mean SmoothGrad; ``random`` = a seeded random
  order. Most relevant patches are set to black first (:func:`iavutils.analysis.evaluation.perturbation_curve`).
* **global-AAV** (Fig. 7b): the IA-Score with the last checkpoint's SmoothGrad of the reference
  model (the paper uses DINO; our default is the DINO-like preset of the run), computed on the
  same images; the embedded dataset also gives the AAV with the ground-truth object mask.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .runs import (  # light (no torch): the chapters' setup cells use them before the heavy imports
    FinetuningRequired,
    finetuned_in_run,
    finetuned_models,
    finetuning_status,
    parse_models,
    repo_root,
    resolve_dataset,
    resolve_run_dir,
    select_models,
)
from ..world.store import ResultStore

__all__ = [
    "DEFAULT_TINY",
    "BLUR_DEGREES",
    "MASK_RATIOS",
    "MASK_METHODS",
    "repo_root",
    "resolve_run_dir",
    "resolve_device",
    "parse_models",
    "models_in_run",
    "ensure_finetuned",
    "FinetuningRequired",
    "finetuned_in_run",
    "select_models",
    "finetuning_status",
    "finetuned_models",
    "training_history",
    "run_summary",
    "resolve_dataset",
    "pretraining",
    "with_pretraining",
    "pretraining_contrast",
    "checkpoint_epochs",
    "analysis_epochs",
    "checkpoint_fingerprint",
    "load_images",
    "has_masks",
    "NoMasksWarning",
    "class_names",
    "default_split",
    "default_aav_reference",
    "compute_iavs",
    "checkpoint_analysis",
    "accuracy",
    "accuracy_table",
    "robustness_curves",
    "normalized_distance",
    "training_dynamics",
    "masking_curves",
    "entropy_over_epochs",
    "last_layer_entropy",
    "max_entropy",
    "global_scores_over_epochs",
    "uniform_baselines",
    "head_scores",
    "head_type_table",
    "iav_tsne",
    "class_separability",
    "example_maps",
]

#: The four embedded presets, in the paper's order (MIM≈BEiT, DINO, DeiT, ImageNet-21k).
DEFAULT_TINY = "tiny-mim,tiny-dino,tiny-sup,tiny-sup21k"

#: Gaussian blur degrees of Fig. 3b (``shifts.gaussian_blur``'s degree; 0 = clean).
BLUR_DEGREES: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0)

#: Masking ratios of Fig. 5 (0 = clean accuracy).
MASK_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

#: Patch orderings of Fig. 5, in legend order.
MASK_METHODS: tuple[str, ...] = ("attention", "attention-mean", "smoothgrad", "random")

# Bump when a computation's definition changes, so stale cache entries are not reused.
_VERSION = 1


# ----------------------------------------------------------------------------- paths and names


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device in ("", "auto", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _presets_module() -> Any:
    from ..world import models

    return models


def pretraining(preset: str) -> str:
    """``"supervised"`` or ``"self-supervised"``."""
    return _presets_module().PRESETS[preset].pretraining


def with_pretraining(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of a frame with a ``model`` column, plus the model's ``pretraining`` type."""
    out = df.copy()
    out.insert(1, "pretraining", [pretraining(m) for m in out["model"]])
    return out


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


def _preset_order(preset: str) -> tuple[int, str]:
    names = list(_presets_module().PRESETS)
    return (names.index(preset) if preset in names else len(names), preset)


def models_in_run(requested: Sequence[str], dataset: str, run_dir: str | os.PathLike | None = "") -> list[str]:
    """The requested presets plus every preset already finetuned on ``dataset`` in the run.

    The chapters show only the models their ``model`` parameter names; this is the "and every
    other model of the run" view, which a chapter gives on request (``model="all"``, see
    :func:`select_models`).
    """
    return sorted(set(requested) | set(finetuned_in_run(dataset, run_dir)), key=_preset_order)


# ----------------------------------------------------------------------------- finetuning


def ensure_finetuned(
    preset: str,
    dataset: str = "embedded",
    run_dir: str | os.PathLike | None = "",
    *,
    recipe: str | None = None,
    epochs: int | None = None,
    max_train: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Finetunes ``preset`` with a checkpoint per epoch unless the run already holds it.

    :func:`iavutils.world.training.finetune` resumes from the last checkpoint and returns at once
    when every epoch is there.

    Args:
        preset: Preset name.
        dataset: ``"embedded"`` or ``"cifar10"``.
        run_dir: Run directory (see :func:`resolve_run_dir`).
        recipe: Key of :data:`iavutils.world.training.RECIPES` (``None``/``""``: ``"tiny"`` for
            embedded presets, else ``"paper"``).
        epochs: Override of the recipe's number of epochs.
        max_train: Override of the recipe's number of training images (``None``: the recipe's).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        progress: Show progress bars.

    Returns:
        The per-epoch metrics (:func:`training_history`) of this preset.
    """
    from ..world import training

    info = _presets_module().PRESETS[preset]
    run = training.run_path(resolve_run_dir(run_dir), dataset, preset)
    if not recipe and epochs is None and max_train is None and (run / "config.json").is_file():
        # No override asked for: a chapter that only needs *a* finetuned model takes the run
        # that is there (e.g. made by 00_finetune with its own epochs), resuming it if cut short.
        stored = json.loads((run / "config.json").read_text())
        fields = {f.name for f in dataclasses.fields(training.FinetuneConfig)}
        config = training.FinetuneConfig(**{k: v for k, v in stored.items() if k in fields})
        max_train = stored.get("max_train")
    else:
        if not recipe:
            recipe = "tiny" if info.is_tiny else "paper"
        config = training.RECIPES[recipe]
        if epochs is not None:
            config = dataclasses.replace(config, epochs=int(epochs))
    training.finetune(
        preset, dataset=dataset, run_dir=str(resolve_run_dir(run_dir)), config=config,
        device=str(resolve_device(device)), progress=progress,
        max_train=None if max_train is None else int(max_train),
    )
    return training_history([preset], dataset, run_dir)


def training_history(presets: Iterable[str], dataset: str, run_dir: str | os.PathLike | None = "") -> pd.DataFrame:
    """Per-epoch finetuning metrics (``metrics.json``) as a tidy frame.

    Returns:
        Columns ``model, epoch`` and every metric the trainer wrote (``train_loss``,
        ``train_acc``, ``val_acc``, ``seconds``...); accuracies as fractions in [0, 1].
    """
    rows = []
    for preset in presets:
        path = resolve_run_dir(run_dir) / dataset / preset / "metrics.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        epochs = data.get("epochs", data) if isinstance(data, dict) else data
        for i, rec in enumerate(epochs):
            row = {"model": preset, "epoch": rec.get("epoch", i)}
            row.update({k: v for k, v in rec.items() if k != "epoch" and (v is None or isinstance(v, (int, float)))})
            rows.append(row)
    return pd.DataFrame(rows)


def run_summary(presets: Iterable[str], dataset: str, run_dir: str | os.PathLike | None = "") -> pd.DataFrame:
    """One row per finetuned model: pretraining, recipe (``config.json``), last-epoch metrics, time."""
    rows = []
    for preset in presets:
        run = resolve_run_dir(run_dir) / dataset / preset
        if not (run / "config.json").is_file():
            continue
        cfg = json.loads((run / "config.json").read_text())
        hist = training_history([preset], dataset, run_dir)
        row = {"model": preset, "pretraining": pretraining(preset)}
        row.update({k: cfg.get(k) for k in ("epochs", "batch_size", "lr", "max_train") if k in cfg})
        if not hist.empty:
            last = hist.sort_values("epoch").iloc[-1]
            if "val_acc" in hist:
                row["initial val accuracy (%)"] = round(100 * float(hist.sort_values("epoch")["val_acc"].iloc[0]), 1)
                row["final val accuracy (%)"] = round(100 * float(last["val_acc"]), 1)
            if "seconds" in hist:
                row["training time (s)"] = round(float(hist["seconds"].fillna(0).sum()), 1)
        rows.append(row)
    return pd.DataFrame(rows)


def checkpoint_epochs(preset: str, dataset: str, run_dir: str | os.PathLike | None = "") -> list[int]:
    """Epochs with a checkpoint (0 = the pretrained initialisation with its new head)."""
    from ..world.training import list_checkpoints

    return sorted(int(e) for e, _ in list_checkpoints(str(resolve_run_dir(run_dir)), dataset, preset))


def analysis_epochs(preset: str, dataset: str, run_dir: str | os.PathLike | None = "", stride: int = 1) -> list[int]:
    """Every ``stride``-th checkpoint epoch from 0, always including the last one."""
    epochs = checkpoint_epochs(preset, dataset, run_dir)
    if not epochs:
        raise FileNotFoundError(
            f"no checkpoints of {preset!r} on {dataset!r} in {resolve_run_dir(run_dir)}: run 00_finetune first"
        )
    chosen = epochs[:: max(1, int(stride))]
    if chosen[-1] != epochs[-1]:
        chosen.append(epochs[-1])
    return chosen


def _checkpoint_path(preset: str, dataset: str, run_dir: str | os.PathLike | None, epoch: int) -> Path:
    from ..world.training import list_checkpoints

    for e, path in list_checkpoints(str(resolve_run_dir(run_dir)), dataset, preset):
        if int(e) == int(epoch):
            return Path(path)
    raise FileNotFoundError(f"{preset!r} on {dataset!r} has no checkpoint for epoch {epoch}")


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """A short hash of a checkpoint file (size, first and last MiB), part of every cache key.

    Re-finetuning with another recipe changes the weights and so invalidates derived results,
    without hashing whole hub-sized checkpoints.
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()[:16]


def _load(preset: str, dataset: str, run_dir: str | os.PathLike | None, epoch: int, device: torch.device):
    from ..world.training import load_checkpoint

    model, info = load_checkpoint(str(resolve_run_dir(run_dir)), dataset, preset, epoch=epoch)
    return model.to(device).eval(), info


def _progress(items: Sequence[Any], desc: str, enabled: bool = True) -> Any:
    """A progress bar over ``items`` (:func:`iavutils.core.progress.progress_bar`)."""
    from ..core.progress import progress_bar

    return progress_bar(items, desc=desc, disable=not enabled)


def _store(run_dir: str | os.PathLike | None) -> ResultStore:
    return ResultStore(resolve_run_dir(run_dir))


# ----------------------------------------------------------------------------- images


def default_split(dataset: str) -> str:
    """The held-out split the figures use: ``val`` for embedded data, ``test`` for CIFAR-10."""
    return "val" if dataset == "embedded" else "test"


def _dataset(dataset: str, split: str, info: Any) -> Any:
    from ..world.data import get_dataset

    return get_dataset(dataset, split=split, info=info)


def _indices(n_total: int, num_images: int | None, seed: int) -> Tensor:
    # The same seeded subset for every model, so that maps of different models (AAV with
    # DINO's SmoothGrad) are about the same images.
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n_total, generator=g)
    if num_images is None or num_images <= 0 or num_images >= n_total:
        return perm
    return perm[: int(num_images)]


def load_images(
    dataset: str, info: Any, num_images: int | None, seed: int = 0, split: str | None = None
) -> dict[str, Tensor]:
    """A seeded subset of a split: ``x`` (model-normalised), ``y``, ``indices`` (and ``mask``).

    Args:
        dataset: ``"embedded"`` or ``"cifar10"``.
        info: The model's :class:`~iavutils.world.models.ModelInfo` (normalisation, size).
        num_images: Subset size (``None``/0: the whole split).
        seed: Chooses the subset.
        split: Default :func:`default_split`.
    """
    ds = _dataset(dataset, split or default_split(dataset), info)
    idx = _indices(len(ds), num_images, seed)
    if hasattr(ds, "get_batch"):
        # Datasets prepare a batch at once: ``(x, y, mask)`` with object masks (embedded data),
        # ``(x, y)`` without (CIFAR-10). Without masks, callers skip what needs them.
        batch = ds.get_batch(idx)
        out = {"x": batch[0], "y": torch.as_tensor(batch[1]).long(), "indices": idx.clone()}
        if len(batch) > 2 and batch[2] is not None:
            out["mask"] = torch.as_tensor(batch[2]).float()
        return out
    xs, ys, masks = [], [], []
    for i in idx.tolist():
        item = ds[i]
        xs.append(torch.as_tensor(item[0]))
        ys.append(int(item[1]))
        if len(item) > 2:
            masks.append(torch.as_tensor(item[2]).float())
    out = {"x": torch.stack(xs), "y": torch.tensor(ys, dtype=torch.long), "indices": idx.clone()}
    if masks and len(masks) == len(xs):
        out["mask"] = torch.stack(masks)
    return out


class NoMasksWarning(UserWarning):
    """The dataset has no object masks: what needs them is skipped, everything else is computed."""


def has_masks(dataset: str) -> bool:
    """Whether the dataset's items carry per-pixel object masks (embedded data and Fashion-MNIST:
    yes; CIFAR-10: no)."""
    return dataset not in ("cifar10", "cifar-10", "CIFAR10")


def warn_no_masks(dataset: str, skipped: str) -> None:
    """States, once per calling line, what a mask-less dataset leaves out (shown in notebooks).

    Args:
        dataset: The dataset name.
        skipped: What is not computed, e.g. ``"the AAV with the object mask"``.
    """
    warnings.warn(
        f"{dataset} has no object masks, so {skipped} cannot be computed; everything else is. "
        "The embedded dataset has masks (dataset='embedded' with the tiny presets).",
        NoMasksWarning, stacklevel=3)


def class_names(dataset: str) -> tuple[str, ...]:
    """Class names of a dataset (for legends)."""
    ds = _dataset(dataset, default_split(dataset), None)
    return tuple(getattr(ds, "classes", ())) or tuple(str(i) for i in range(int(max(ds.labels)) + 1))


def _batches(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


# ----------------------------------------------------------------------------- IAV


def compute_iavs(
    model: nn.Module,
    info: Any,
    images: Tensor,
    targets: Tensor | None,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    device: str | torch.device = "auto",
    *,
    indices: Tensor | None = None,
    backend: str = "engine",
    progress: bool = False,
) -> dict[str, Tensor]:
    """IAVs of a set of images — the one place the notebooks compute them.

    With ``indices`` (dataset positions) the SmoothGrad noise of each image is seeded by
    :func:`iavutils.core.engine.image_seed` ``(seed, index)``, so an image gets the same noise whatever
    subset or batch it is computed in, and every model sees the same noise for the same image.
    Without, the per-image seeds come from ``torch.Generator().manual_seed(seed)`` as in the
    ARCHITECTURE.md noise-stream contract.

    Args:
        model: A finetuned ViT-family classifier.
        info: Its ``ModelInfo`` (kept in the signature so that other backends can read
            normalisation and geometry from it).
        images: Model-normalised images ``[B,3,H,W]``.
        targets: ``[B]`` classes to explain, or ``None`` for the predicted class.
        n_samples: SmoothGrad noisy copies per image.
        noise_level: SmoothGrad noise as a fraction of each image's value range.
        seed: Seed of the SmoothGrad noise.
        device: Where to compute.
        indices: Dataset index of each image (see above); engine backend only.
        backend: ``"engine"`` (:mod:`iavutils.core.engine`: CLS rows only, chunked SmoothGrad) or
            ``"reference"`` (:func:`iavutils.smoothgrad` + :func:`iavutils.record_attention`);
            both give the same numbers up to float summation order.
        progress: Show a tqdm bar over the SmoothGrad chunks.

    Returns:
        ``iav [B,L,H]``, ``smoothgrad [B,H,W]`` (pixels), ``cls_attn [B,L,H,P]``,
        ``logits [B,C]``, ``targets [B]`` — all on the CPU.
    """
    from ..core.attribution import noise_seeds, patch_pool, smoothgrad
    from ..core.engine import engine_cls_attention, image_seed, smoothgrad_fast
    from ..core.hooks import model_geometry, record_attention
    from ..core.scores import cls_attention, ia_score

    dev = resolve_device(device)
    model = model.to(dev).eval()
    geo = model_geometry(model)
    x = images.to(dev)
    B = x.shape[0]
    if indices is not None:
        seeds = torch.tensor([image_seed(seed, int(i)) for i in indices], dtype=torch.long)
    else:
        seeds = noise_seeds(B, torch.Generator().manual_seed(int(seed)))
    if backend == "engine":
        logits, cls = engine_cls_attention(model, x)
    elif backend == "reference":
        logits, attn = record_attention(model, x)
        cls = cls_attention(attn, geo.num_prefix_tokens)
    else:
        raise ValueError(f"backend must be 'engine' or 'reference', got {backend!r}")
    logits, cls = logits.detach().float().cpu(), cls.detach().float().cpu()
    t = logits.argmax(1) if targets is None else torch.as_tensor(targets).long().cpu().clone()
    if backend == "engine":
        sg = smoothgrad_fast(model, x, t.to(dev), n_samples, noise_level, seeds=seeds, grid=geo.grid,
                             return_pixels=True, progress=progress)
        phi = sg["pixels"].detach().cpu()
    else:
        if indices is not None:
            raise ValueError("backend='reference' follows the generator contract only; pass indices=None")
        phi = smoothgrad(model, x, t.to(dev), n_samples, noise_level,
                         generator=torch.Generator().manual_seed(int(seed))).detach().cpu()
    scores = ia_score(patch_pool(phi, geo.grid), cls)
    return {"iav": scores, "smoothgrad": phi, "cls_attn": cls, "logits": logits, "targets": t}


def checkpoint_analysis(
    preset: str,
    dataset: str = "embedded",
    epoch: int | None = None,
    *,
    run_dir: str | os.PathLike | None = "",
    num_images: int = 64,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    target: str = "label",
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Tensor]:
    """SmoothGrad, CLS attention and IAVs of one checkpoint on a seeded image set (cached).

    Args:
        preset: Preset name.
        dataset: Dataset the preset was finetuned on.
        epoch: Checkpoint epoch (``None``: the last one).
        run_dir: Run directory.
        num_images: Images of the held-out split (the same seeded subset for every model).
        n_samples: SmoothGrad noisy copies.
        noise_level: SmoothGrad noise level.
        seed: Seeds the subset and the SmoothGrad noise.
        target: ``"label"`` (ground truth) or ``"predicted"``: the class ``ŷ`` explained.
        device: Where to compute.
        progress: Show a progress bar while computing.

    Returns:
        ``iav [N,L,H]``, ``smoothgrad [N,H,W]``, ``cls_attn [N,L,H,P]``, ``logits [N,C]``,
        ``labels [N]``, ``targets [N]``, ``indices [N]`` and, where the dataset has object masks,
        ``mask [N,H,W]``.
    """
    if target not in ("label", "predicted"):
        raise ValueError(f"target must be 'label' or 'predicted', got {target!r}")
    if epoch is None:
        epoch = checkpoint_epochs(preset, dataset, run_dir)[-1]
    path = _checkpoint_path(preset, dataset, run_dir, epoch)
    key = {
        "v": _VERSION, "preset": preset, "dataset": dataset, "epoch": int(epoch),
        "checkpoint": checkpoint_fingerprint(path), "split": default_split(dataset),
        "num_images": int(num_images), "n_samples": int(n_samples), "noise_level": float(noise_level),
        "seed": int(seed), "target": target,
    }

    def compute() -> dict[str, Tensor]:
        dev = resolve_device(device)
        model, info = _load(preset, dataset, run_dir, epoch, dev)
        data = load_images(dataset, info, num_images, seed)
        res = compute_iavs(
            model, info, data["x"], data["y"] if target == "label" else None,
            n_samples=n_samples, noise_level=noise_level, seed=seed, device=dev, indices=data["indices"],
        )
        res.update(labels=data["y"].clone(), indices=data["indices"].clone())
        if "mask" in data:
            res["mask"] = data["mask"]
        return res

    return _store(run_dir).cached("analysis", key, compute, meta={"what": "SmoothGrad, CLS attention, IAV"})


def _analyses(
    presets: Sequence[str], dataset: str, run_dir: Any, stride: int | None, params: dict[str, Any], desc: str
) -> dict[str, dict[int, dict[str, Tensor]]]:
    """``{preset: {epoch: checkpoint_analysis}}`` over the chosen epochs (``stride=None``: last only)."""
    jobs = []
    for p in presets:
        epochs = analysis_epochs(p, dataset, run_dir, stride) if stride else checkpoint_epochs(p, dataset, run_dir)[-1:]
        jobs += [(p, e) for e in epochs]
    out: dict[str, dict[int, dict[str, Tensor]]] = {}
    for p, e in _progress(jobs, desc, params.get("progress", True)):
        out.setdefault(p, {})[e] = checkpoint_analysis(p, dataset, e, run_dir=run_dir, **params)
    return out


def _analysis_params(num_images, n_samples, noise_level, seed, target, device, progress=True) -> dict[str, Any]:
    return dict(
        num_images=int(num_images), n_samples=int(n_samples), noise_level=float(noise_level),
        seed=int(seed), target=target, device=device, progress=progress,
    )


# ----------------------------------------------------------------------------- Fig. 3: accuracy


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, device: torch.device, batch_size: int = 256) -> Tensor:
    preds = [model(x[sl].to(device)).argmax(1).cpu() for sl in _batches(x.shape[0], batch_size)]
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def accuracy(
    preset: str,
    dataset: str = "embedded",
    epoch: int | None = None,
    *,
    split: str | None = None,
    run_dir: str | os.PathLike | None = "",
    num_eval: int | None = None,
    seed: int = 0,
    device: str = "auto",
) -> float:
    """Top-1 accuracy (fraction) of a checkpoint on a split (or a seeded subset of it), cached."""
    if epoch is None:
        epoch = checkpoint_epochs(preset, dataset, run_dir)[-1]
    split = split or default_split(dataset)
    path = _checkpoint_path(preset, dataset, run_dir, epoch)
    key = {"v": _VERSION, "preset": preset, "dataset": dataset, "epoch": int(epoch), "split": split,
           "checkpoint": checkpoint_fingerprint(path), "num_eval": int(num_eval or 0), "seed": int(seed)}

    def compute() -> dict[str, Tensor]:
        dev = resolve_device(device)
        model, info = _load(preset, dataset, run_dir, epoch, dev)
        data = load_images(dataset, info, num_eval, seed, split=split)
        correct = (_predict(model, data["x"], dev) == data["y"]).float()
        return {"accuracy": correct.mean().reshape(1), "n": torch.tensor([correct.numel()])}

    return float(_store(run_dir).cached("accuracy", key, compute)["accuracy"][0])


def accuracy_table(
    presets: Sequence[str], dataset: str = "embedded", *, run_dir: str | os.PathLike | None = "",
    splits: Sequence[str] | None = None, num_eval: int | None = None, seed: int = 0, device: str = "auto",
) -> pd.DataFrame:
    """Final-checkpoint accuracy (%) of each model on each held-out split, one row per model."""
    if splits is None:
        splits = ("val", "test") if dataset == "embedded" else ("test",)
    info = _presets_module().PRESETS
    rows = []
    for p in presets:
        row = {"model": p, "pretraining": info[p].pretraining}
        for s in splits:
            row[f"{s} accuracy (%)"] = 100.0 * accuracy(p, dataset, split=s, run_dir=run_dir, num_eval=num_eval,
                                                        seed=seed, device=device)
        rows.append(row)
    return pd.DataFrame(rows)


def _jigsaw_swaps(num_tiles: int) -> list[int]:
    # 0, then ×4 up to the number of tiles (as many swaps as tiles ≈ a full shuffle); for 4 tiles
    # every count 0..4 would be too coarse to skip, so small puzzles get 0, 1, 2, 4.
    if num_tiles <= 4:
        return sorted({0, 1, min(2, num_tiles), num_tiles})
    swaps = [0, 1]
    while swaps[-1] * 4 < num_tiles:
        swaps.append(swaps[-1] * 4)
    return swaps + [num_tiles]


def robustness_curves(
    presets: Sequence[str],
    dataset: str = "embedded",
    *,
    run_dir: str | os.PathLike | None = "",
    num_eval: int | None = None,
    blur_degrees: Sequence[float] = BLUR_DEGREES,
    jigsaw_swaps_2: Sequence[int] | None = None,
    jigsaw_swaps_grid: Sequence[int] | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Accuracy of the last checkpoint under distribution shifts (Fig. 3b–d), cached per model.

    Shifts: Gaussian blur of each degree (in [0,1] pixel space, then re-normalised); jigsaw with
    a 2×2 grid and with the model's own patch grid (tiles = patches), each for a number of tile
    swaps. Jigsaw randomness is seeded per (shift, level), identical for every model.

    Returns:
        Columns ``model, shift ("blur" | "jigsaw g=2" | "jigsaw g=<grid>"), shift_kind
        ("blur" | "jigsaw-2" | "jigsaw-grid"), level, accuracy`` (accuracy in %).
    """
    from ..core.hooks import model_geometry
    from ..world.shifts import gaussian_blur, jigsaw

    rows = []
    for p in _progress(presets, "robustness", progress):
        epoch = checkpoint_epochs(p, dataset, run_dir)[-1]
        path = _checkpoint_path(p, dataset, run_dir, epoch)
        dev = resolve_device(device)
        holder: dict[str, Any] = {}

        def model_info() -> tuple[nn.Module, Any]:
            if "m" not in holder:
                holder["m"] = _load(p, dataset, run_dir, epoch, dev)
            return holder["m"]

        grid = _presets_module().PRESETS[p].grid
        g = int(grid[0])
        s2 = list(jigsaw_swaps_2) if jigsaw_swaps_2 is not None else _jigsaw_swaps(4)
        sg = list(jigsaw_swaps_grid) if jigsaw_swaps_grid is not None else _jigsaw_swaps(g * g)
        key = {"v": _VERSION, "preset": p, "dataset": dataset, "epoch": epoch, "checkpoint": checkpoint_fingerprint(path),
               "num_eval": int(num_eval or 0), "seed": int(seed), "blur": [float(d) for d in blur_degrees],
               "jigsaw2": s2, "jigsawg": sg}

        def compute() -> dict[str, Tensor]:
            model, info = model_info()
            geo_grid = model_geometry(model).grid
            if geo_grid[0] != geo_grid[1]:
                raise ValueError(f"jigsaw needs a square patch grid, {p} has {geo_grid}")
            data = load_images(dataset, info, num_eval, seed)
            x, y = data["x"], data["y"]
            x01 = info.denormalize(x)
            clean = (_predict(model, x, dev) == y).float().mean()  # level 0 of every shift
            res = {}
            res["blur"] = torch.stack([
                clean if d == 0 else (_predict(model, info.normalize(gaussian_blur(x01, float(d)).clamp(0, 1)), dev) == y).float().mean()
                for d in blur_degrees
            ])
            for name, gs, swaps in (("jigsaw2", 2, s2), ("jigsawg", geo_grid[0], sg)):
                accs = []
                for i, s in enumerate(swaps):
                    gen = torch.Generator().manual_seed(int(seed) * 1000 + gs * 100 + i)
                    accs.append(clean if s == 0 else (_predict(model, jigsaw(x, gs, int(s), gen), dev) == y).float().mean())
                res[name] = torch.stack(accs)
            return res

        r = _store(run_dir).cached("robustness", key, compute)
        for d, a in zip(blur_degrees, r["blur"].tolist()):
            rows.append({"model": p, "shift": "blur", "shift_kind": "blur", "level": float(d), "accuracy": 100 * a})
        for s, a in zip(s2, r["jigsaw2"].tolist()):
            rows.append({"model": p, "shift": "jigsaw g=2", "shift_kind": "jigsaw-2", "level": s, "accuracy": 100 * a})
        for s, a in zip(sg, r["jigsawg"].tolist()):
            rows.append({"model": p, "shift": f"jigsaw g={g}", "shift_kind": "jigsaw-grid", "level": s, "accuracy": 100 * a})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Fig. 4: dynamics


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


def training_dynamics(
    presets: Sequence[str],
    dataset: str = "embedded",
    *,
    run_dir: str | os.PathLike | None = "",
    stride: int = 1,
    num_images: int = 64,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    target: str = "label",
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """‖φ_t − φ_T‖ and ‖A_t − A_T‖ per analysed epoch t (Fig. 4), T = last checkpoint.

    Distances are :func:`normalized_distance` (unit-L2 maps): SmoothGrad over the pixels, and
    CLS attention over the patches of each head averaged over all ``L·H`` heads; both averaged
    over the images (NaN-aware).

    Returns:
        Columns ``model, epoch, phi_distance, attention_distance`` (+ ``phi_std``,
        ``attention_std``: the spread over images).
    """
    params = _analysis_params(num_images, n_samples, noise_level, seed, target, device, progress)
    runs = _analyses(presets, dataset, run_dir, stride, params, "Fig. 4 maps")
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


# ----------------------------------------------------------------------------- Fig. 5: masking


def masking_curves(
    presets: Sequence[str],
    dataset: str = "embedded",
    *,
    run_dir: str | os.PathLike | None = "",
    ratios: Sequence[float] = MASK_RATIOS,
    num_images: int = 64,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    target: str = "label",
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Accuracy when the most relevant patches are blacked out first (Fig. 5), last checkpoint.

    The orderings (:data:`MASK_METHODS`) come from the cached :func:`checkpoint_analysis` of the
    same images: last-layer attention (mean over heads), attention averaged over all heads of
    all layers, patch-mean SmoothGrad, and a seeded random order.

    Returns:
        Columns ``model, method, ratio, accuracy`` (ratio and accuracy in %), ratio 0 = clean.
    """
    from .evaluation import perturbation_curve

    params = _analysis_params(num_images, n_samples, noise_level, seed, target, device, progress)
    runs = _analyses(presets, dataset, run_dir, None, params, "Fig. 5 maps")
    rows = []
    for p, by_epoch in runs.items():
        epoch, r = max(by_epoch.items())
        path = _checkpoint_path(p, dataset, run_dir, epoch)
        key = {"v": _VERSION, "preset": p, "dataset": dataset, "epoch": epoch,
               "checkpoint": checkpoint_fingerprint(path), "ratios": [float(f) for f in ratios],
               **{k: v for k, v in params.items() if k not in ("device", "progress")}}

        def compute() -> dict[str, Tensor]:
            from ..core.attribution import patch_pool
            from ..core.hooks import model_geometry

            dev = resolve_device(device)
            model, info = _load(p, dataset, run_dir, epoch, dev)
            data = load_images(dataset, info, num_images, seed)
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
                    mode="positive", unit="patch", grid=grid, seed=int(seed) + i,
                    clean=r["logits"].argmax(1).to(dev),  # ratio 0: the analysis' own forward
                )
                out[m] = curve.accuracy.float()
                out["fractions"] = curve.fractions.float()
            return out

        res = _store(run_dir).cached("masking", key, compute)
        for m in MASK_METHODS:
            for f, a in zip(res["fractions"].tolist(), res[m].tolist()):
                rows.append({"model": p, "method": m, "ratio": round(100 * f, 3), "accuracy": 100 * a})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Fig. 6: entropy


def _rank_within_layer(values: Tensor, descending: bool = True) -> Tensor:
    """Position of each head after sorting the heads of its layer (``[L,H]`` → ``[L,H]`` ranks)."""
    order = torch.argsort(torch.nan_to_num(values, nan=-1.0), dim=1, descending=descending)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(values.shape[1]).expand_as(order).contiguous())
    return ranks


def entropy_over_epochs(
    presets: Sequence[str],
    dataset: str = "embedded",
    *,
    run_dir: str | os.PathLike | None = "",
    stride: int = 1,
    num_images: int = 64,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    target: str = "label",
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Mean attention entropy (nats) per head over the images, per analysed epoch (Fig. 6a).

    Entropy of the CLS row over the patches renormalised to sum 1 (:func:`iavutils.attention_entropy`);
    its maximum is ``log P`` (uniform attention).

    Returns:
        Columns ``model, epoch, layer (1-based), head, rank (position after sorting the layer's
        heads by decreasing entropy), entropy``.
    """
    from ..core.scores import attention_entropy

    params = _analysis_params(num_images, n_samples, noise_level, seed, target, device, progress)
    runs = _analyses(presets, dataset, run_dir, stride, params, "Fig. 6 maps")
    rows = []
    for p, by_epoch in runs.items():
        for e, r in sorted(by_epoch.items()):
            ent = attention_entropy(r["cls_attn"].double()).mean(0)  # [L,H]
            rows += _head_rows(p, ent, {"epoch": e}, "entropy")
    return pd.DataFrame(rows)


def _head_rows(preset: str, values: Tensor, extra: dict[str, Any], name: str) -> list[dict[str, Any]]:
    ranks = _rank_within_layer(values)
    L, H = values.shape
    return [
        {"model": preset, **extra, "layer": l + 1, "head": h, "rank": int(ranks[l, h]), name: float(values[l, h])}
        for l in range(L) for h in range(H)
    ]


def max_entropy(preset: str) -> float:
    """``log P`` (nats): the entropy of uniform attention over the preset's ``P`` patches."""
    gh, gw = _presets_module().PRESETS[preset].grid
    return float(np.log(gh * gw))


def last_layer_entropy(
    presets: Sequence[str],
    dataset: str = "embedded",
    *,
    run_dir: str | os.PathLike | None = "",
    layer: int = -1,
    num_images: int = 64,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    target: str = "label",
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Per-image entropy of each head of one layer at the last checkpoint (Fig. 6b box plot).

    Returns:
        Columns ``model, layer (1-based), head, sample, entropy``.
    """
    from ..core.scores import attention_entropy

    params = _analysis_params(num_images, n_samples, noise_level, seed, target, device, progress)
    runs = _analyses(presets, dataset, run_dir, None, params, "Fig. 6b maps")
    rows = []
    for p, by_epoch in runs.items():
        r = by_epoch[max(by_epoch)]
        ent = attention_entropy(r["cls_attn"].double())  # [N,L,H]
        li = layer % ent.shape[1]
        for h in range(ent.shape[2]):
            rows += [{"model": p, "layer": li + 1, "head": h, "sample": i, "entropy": float(v)}
                     for i, v in enumerate(ent[:, li, h].tolist())]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Fig. 7: global-IAV


def default_aav_reference(presets: Sequence[str]) -> str | None:
    """The run's DINO-like model (the paper's global-AAV reference), if any."""
    for p in presets:
        if "dino" in p:
            return p
    return None


def global_scores_over_epochs(
    presets: Sequence[str],
    dataset: str = "embedded",
    *,
    run_dir: str | os.PathLike | None = "",
    stride: int = 1,
    aav_reference: str | None = "auto",
    num_images: int = 64,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    target: str = "label",
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """global-IAV and global-AAV per head and analysed epoch (Fig. 7).

    ``IAV``: mean over images of the IA-Score with the model's own SmoothGrad (NaN-aware).
    ``AAV (<ref>)``: the same with the last checkpoint's SmoothGrad of ``aav_reference`` on the
    same images (the paper: DINO). ``AAV (mask)``: with the ground-truth object mask, where the
    dataset has masks.

    Args:
        aav_reference: A preset, ``"auto"`` (:func:`default_aav_reference`) or ``None``/``""``
            (no model-based AAV).

    Returns:
        Columns ``model, epoch, score ("IAV" | "AAV (<ref>)" | "AAV (mask)"), layer, head, rank
        (position after sorting the layer's heads by decreasing score), value``.
    """
    from ..core.attribution import patch_pool
    from ..core.scores import global_iav, ia_score

    params = _analysis_params(num_images, n_samples, noise_level, seed, target, device, progress)
    runs = _analyses(presets, dataset, run_dir, stride, params, "Fig. 7 maps")
    if aav_reference == "auto":
        aav_reference = default_aav_reference(list(presets))
    ref_phi = None
    if aav_reference:
        ref = checkpoint_analysis(aav_reference, dataset, None, run_dir=run_dir, **params)
        ref_phi = ref["smoothgrad"]
    if not has_masks(dataset):
        warn_no_masks(dataset, "the AAV with the object mask ('AAV (mask)')")
    rows = []
    for p, by_epoch in runs.items():
        grid = _presets_module().PRESETS[p].grid
        for e, r in sorted(by_epoch.items()):
            scores = {"IAV": r["iav"]}
            if ref_phi is not None:
                scores[f"AAV ({aav_reference})"] = ia_score(patch_pool(ref_phi, grid), r["cls_attn"])
            if "mask" in r:
                scores["AAV (mask)"] = ia_score(patch_pool(r["mask"], grid), r["cls_attn"])
            for name, s in scores.items():
                rows += _head_rows(p, global_iav(s.double()), {"epoch": e, "score": name}, "value")
    return pd.DataFrame(rows)


def uniform_baselines(
    presets: Sequence[str],
    dataset: str = "embedded",
    *,
    run_dir: str | os.PathLike | None = "",
    stride: int | None = None,
    aav_reference: str | None = "auto",
    num_images: int = 64,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    target: str = "label",
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """The IA-Score a head with *uniform* attention would get: ``cos(φ_P, 1)``, mean over images.

    Cosines of non-negative vectors are never negative, and a smooth attribution has a high
    cosine with the flat vector, so "IA-Score > 0.5" is not by itself evidence that a head looks
    at the object: compare a head's score with this baseline of the same map. It depends only on
    the map (SmoothGrad of that checkpoint, the reference model's SmoothGrad, or the mask).

    Args:
        stride: Epoch stride as in :func:`global_scores_over_epochs` (``None``: last epoch only).

    Returns:
        Columns ``model, epoch, score, baseline`` (``score`` as in :func:`global_scores_over_epochs`).
    """
    from ..core.attribution import patch_pool

    params = _analysis_params(num_images, n_samples, noise_level, seed, target, device, progress)
    runs = _analyses(presets, dataset, run_dir, stride, params, "uniform baselines")
    if aav_reference == "auto":
        aav_reference = default_aav_reference(list(presets))
    ref_phi = checkpoint_analysis(aav_reference, dataset, None, run_dir=run_dir, **params)["smoothgrad"] if aav_reference else None
    rows = []
    for p, by_epoch in runs.items():
        grid = _presets_module().PRESETS[p].grid
        for e, r in sorted(by_epoch.items()):
            maps = {"IAV": r["smoothgrad"]}
            if ref_phi is not None:
                maps[f"AAV ({aav_reference})"] = ref_phi
            if "mask" in r:
                maps["AAV (mask)"] = r["mask"]
            for name, m in maps.items():
                phi = patch_pool(m.double(), grid)
                cos = phi.sum(1) / (phi.norm(dim=1) * phi.shape[1] ** 0.5)
                rows.append({"model": p, "epoch": e, "score": name, "baseline": float(torch.nanmean(cos))})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Fig. 8: head roles


def head_scores(
    presets: Sequence[str],
    dataset: str = "embedded",
    *,
    run_dir: str | os.PathLike | None = "",
    num_images: int = 64,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    target: str = "label",
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Per-image IA-Score of every head at the last checkpoint (Fig. 8), with head types.

    Returns:
        Columns ``model, layer (1-based), head, sample, label, score, high`` where ``high`` is the
        head's type (median IA-Score over the images > 0.5: High-IA-Head).
    """
    from ..core.scores import head_types

    params = _analysis_params(num_images, n_samples, noise_level, seed, target, device, progress)
    runs = _analyses(presets, dataset, run_dir, None, params, "Fig. 8 maps")
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


# ----------------------------------------------------------------------------- Fig. 9: t-SNE


def iav_tsne(
    presets: Sequence[str],
    dataset: str = "embedded",
    *,
    run_dir: str | os.PathLike | None = "",
    perplexity: float = 15.0,
    num_images: int = 64,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    target: str = "label",
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """2-D t-SNE of each layer's IAV (``H`` numbers per image) and of the logits (Fig. 9), cached.

    NaN scores (all-zero SmoothGrad) are replaced by the layer's mean before embedding.

    Returns:
        Columns ``model, layer ("L1".."L<L>", "classifier"), x, y, label, sample``.
    """
    from sklearn.manifold import TSNE

    params = _analysis_params(num_images, n_samples, noise_level, seed, target, device, progress)
    runs = _analyses(presets, dataset, run_dir, None, params, "Fig. 9 maps")
    frames = []
    for p, by_epoch in runs.items():
        epoch, r = max(by_epoch.items())
        path = _checkpoint_path(p, dataset, run_dir, epoch)
        key = {"v": _VERSION, "preset": p, "dataset": dataset, "epoch": epoch, "checkpoint": checkpoint_fingerprint(path),
               "perplexity": float(perplexity), **{k: v for k, v in params.items() if k not in ("device", "progress")}}

        def compute() -> dict[str, Tensor]:
            feats = _layer_features(r)
            out = {}
            for name, f in feats.items():
                n = f.shape[0]
                perp = float(min(perplexity, max(2.0, (n - 1) / 3)))
                emb = TSNE(n_components=2, perplexity=perp, init="pca", random_state=int(seed)).fit_transform(f)
                out[name] = torch.as_tensor(emb, dtype=torch.float32)
            return out

        res = _store(run_dir).cached("tsne", key, compute)
        for name, emb in res.items():
            frames.append(pd.DataFrame({"model": p, "layer": name, "x": emb[:, 0].numpy(), "y": emb[:, 1].numpy(),
                                        "label": r["labels"].numpy(), "sample": np.arange(emb.shape[0])}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _loo_knn_accuracy(f: np.ndarray, y: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy (Euclidean; ties go to the nearest class)."""
    n = len(y)
    k = max(1, min(k, n - 1))
    d = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn_idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    correct = 0
    for i in range(n):
        votes: dict[int, float] = {}
        for rank, j in enumerate(nn_idx[i]):
            # Majority vote; the tiny rank bonus breaks ties in favour of nearer neighbours.
            votes[int(y[j])] = votes.get(int(y[j]), 0.0) + 1.0 + 1e-6 * (k - rank)
        correct += max(votes, key=votes.get) == int(y[i])
    return correct / n


def _layer_features(r: dict[str, Tensor]) -> dict[str, np.ndarray]:
    s = r["iav"].double()
    s = torch.where(torch.isnan(s), torch.nanmean(s, dim=0, keepdim=True).nan_to_num(0.0), s)
    feats = {f"L{l + 1}": s[:, l].numpy() for l in range(s.shape[1])}
    feats["classifier"] = r["logits"].double().numpy()
    return feats


def class_separability(
    presets: Sequence[str],
    dataset: str = "embedded",
    *,
    run_dir: str | os.PathLike | None = "",
    num_images: int = 64,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    target: str = "label",
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """How well each layer's IAV separates the classes, as numbers next to the t-SNE pictures.

    ``knn_accuracy``: leave-one-out 5-nearest-neighbour accuracy (%) of the label from the
    layer's IAV (chance = 100/classes); ``silhouette``: silhouette score of the labels in IAV
    space (−1…1; NaN where it is undefined: a single class, or as many classes as images). Both
    on the raw IAVs, not on the t-SNE coordinates.

    Returns:
        Columns ``model, layer, knn_accuracy, silhouette``.
    """
    from sklearn.metrics import silhouette_score

    params = _analysis_params(num_images, n_samples, noise_level, seed, target, device, progress)
    runs = _analyses(presets, dataset, run_dir, None, params, "Fig. 9 maps")
    rows = []
    for p, by_epoch in runs.items():
        r = by_epoch[max(by_epoch)]
        y = r["labels"].numpy()
        for name, f in _layer_features(r).items():
            knn = _loo_knn_accuracy(f, y, k=5)
            # The silhouette needs 2 ≤ classes ≤ images − 1 (a handful of images can all differ).
            sil = silhouette_score(f, y) if 1 < len(set(y.tolist())) < len(y) else float("nan")
            rows.append({"model": p, "layer": name, "knn_accuracy": 100 * knn, "silhouette": float(sil)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Fig. 2: one image


def example_maps(
    preset: str,
    dataset: str = "embedded",
    *,
    run_dir: str | os.PathLike | None = "",
    sample: int = 0,
    num_images: int = 64,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    target: str = "label",
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """One image of the analysis set with its SmoothGrad, every head's CLS attention and IAV (Fig. 2).

    Returns:
        ``image [H,W,3]`` in [0,1], ``smoothgrad [H,W]``, ``cls_attn [L,H,gh,gw]``, ``iav [L,H]``,
        ``label``, ``mask [H,W]`` (if any), ``preset``.
    """
    params = _analysis_params(num_images, n_samples, noise_level, seed, target, device, progress)
    r = checkpoint_analysis(preset, dataset, None, run_dir=run_dir, **params)
    info = _presets_module().PRESETS[preset]
    idx = int(r["indices"][sample])
    ds = _dataset(dataset, default_split(dataset), info)
    x = torch.as_tensor(ds[idx][0])
    out = {
        "preset": preset,
        "image": info.denormalize(x).clamp(0, 1).permute(1, 2, 0).numpy(),
        "smoothgrad": r["smoothgrad"][sample].numpy(),
        "cls_attn": r["cls_attn"][sample].reshape(*r["cls_attn"].shape[1:3], *info.grid).numpy(),
        "iav": r["iav"][sample].numpy(),
        "label": int(r["labels"][sample]),
    }
    if "mask" in r:
        out["mask"] = r["mask"][sample].numpy()
    return out
