"""Run plumbing shared by every analysis chapter: devices, presets, finetuning, checkpoints, the store.

What a run directory holds beyond :mod:`iavutils.analysis.runs` (which stays torch-free): the
finetuning entry point (:func:`ensure_finetuned`), the per-epoch metrics and run summary of
chapter 00, the checkpoint epochs each chapter analyses, loading a finetuned checkpoint, and the
cache key every cached computation starts from (:func:`checkpoint_key`: preset, dataset, epoch
and a fingerprint of the checkpoint file). It serves every chapter (IAV paper, Figs. 2–9) and
the extra chapters 08–11.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..world.store import ResultStore
from .run_dirs import finetuned_in_run, resolve_run_dir

__all__ = [
    "DEFAULT_TINY",
    "resolve_device",
    "pretraining",
    "with_pretraining",
    "models_in_run",
    "ensure_finetuned",
    "training_history",
    "run_summary",
    "checkpoint_epochs",
    "analysis_epochs",
    "chosen_epoch",
    "checkpoint_path",
    "checkpoint_fingerprint",
    "checkpoint_key",
    "load_finetuned",
    "result_store",
]

#: The four embedded presets, in the paper's order (MIM≈BEiT, DINO, DeiT, ImageNet-21k).
DEFAULT_TINY = "tiny-mim,tiny-dino,tiny-sup,tiny-sup21k"

# Bump when a computation's definition changes, so stale cache entries are not reused.
_VERSION = 1


# ----------------------------------------------------------------------------- devices and presets


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


def _preset_order(preset: str) -> tuple[int, str]:
    names = list(_presets_module().PRESETS)
    return (names.index(preset) if preset in names else len(names), preset)


def models_in_run(requested: Sequence[str], dataset: str, run_dir: str | os.PathLike | None = "") -> list[str]:
    """The requested presets plus every preset already finetuned on ``dataset`` in the run.

    The chapters show only the models their ``model`` parameter names; this is the "and every
    other model of the run" view, which a chapter gives on request (``model="all"``, see
    :func:`~iavutils.analysis.runs.select_models`).
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
        run_dir: Run directory (see :func:`~iavutils.analysis.runs.resolve_run_dir`).
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


# ----------------------------------------------------------------------------- checkpoints


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


def chosen_epoch(
    preset: str, dataset: str, run_dir: str | os.PathLike | None = "", epoch: int | None = None
) -> int:
    """The checkpoint epoch a cached chapter computation analyses: ``epoch``, else the last one.

    Args:
        preset: Preset name.
        dataset: Dataset the preset was finetuned on.
        run_dir: Run directory (see :func:`~iavutils.analysis.runs.resolve_run_dir`).
        epoch: The epoch asked for (``None``: the last checkpoint).

    Returns:
        The epoch, as an ``int``.

    Raises:
        FileNotFoundError: The run holds no checkpoint of ``preset`` on ``dataset``.
    """
    epochs = checkpoint_epochs(preset, dataset, run_dir)
    if not epochs:
        raise FileNotFoundError(
            f"no checkpoints of {preset!r} on {dataset!r} in {resolve_run_dir(run_dir)}: finetune it first")
    return epochs[-1] if epoch is None else int(epoch)


def checkpoint_path(preset: str, dataset: str, run_dir: str | os.PathLike | None, epoch: int) -> Path:
    """The checkpoint file of ``preset`` on ``dataset`` at ``epoch``.

    Raises:
        FileNotFoundError: The run has no checkpoint for that epoch.
    """
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


def checkpoint_key(
    preset: str,
    dataset: str,
    epoch: int,
    run_dir: str | os.PathLike | None = "",
    version: int = _VERSION,
    *,
    version_field: str = "v",
    fingerprint_field: str = "checkpoint",
) -> dict[str, Any]:
    """The part of a cache key that names one checkpoint: what every cached computation starts from.

    Add the computation's own parameters (``**spec.cache_key()``, ratios, perplexity...) to it.
    The store hashes the key with sorted fields, so their order does not matter.

    Args:
        preset: Preset name.
        dataset: Dataset the preset was finetuned on.
        epoch: Checkpoint epoch.
        run_dir: Run directory (see :func:`~iavutils.analysis.runs.resolve_run_dir`).
        version: The computation's version: bump it when its definition changes, so that stale
            cache entries are not reused.
        version_field: Name of the version field (``"v"`` here; modules whose caches were
            written with ``"version"`` keep that name, so that their caches stay valid).
        fingerprint_field: Name of the :func:`checkpoint_fingerprint` field (``"checkpoint"``
            here, ``"fingerprint"`` in older modules' keys, for the same reason).

    Returns:
        ``{version_field: version, "preset", "dataset", "epoch", fingerprint_field}``.
    """
    path = checkpoint_path(preset, dataset, run_dir, epoch)
    return {version_field: version, "preset": preset, "dataset": dataset, "epoch": int(epoch),
            fingerprint_field: checkpoint_fingerprint(path)}


def load_finetuned(preset: str, dataset: str, run_dir: str | os.PathLike | None, epoch: int, device: torch.device):
    """The checkpoint's model on ``device`` in eval mode, and its ``ModelInfo``."""
    from ..world.training import load_checkpoint

    model, info = load_checkpoint(str(resolve_run_dir(run_dir)), dataset, preset, epoch=epoch)
    return model.to(device).eval(), info


def _progress(items: Sequence[Any], desc: str, enabled: bool = True) -> Any:
    """A progress bar over ``items`` (:func:`iavutils.core.progress.progress_bar`)."""
    from ..core.progress import progress_bar

    return progress_bar(items, desc=desc, disable=not enabled)


def result_store(run_dir: str | os.PathLike | None) -> ResultStore:
    """The run directory's cache of computed results."""
    return ResultStore(resolve_run_dir(run_dir))
