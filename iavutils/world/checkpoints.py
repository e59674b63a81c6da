"""A finetuning run on disk: where it lives, reading its checkpoints back, where it resumes.

The layout of a run (``{run_dir}/{dataset}/{preset}/``: ``config.json``, ``metrics.json``,
``checkpoints/epoch_XXX.safetensors``, ``checkpoints/train_state_XXX.pt``) and the order in
which an epoch's files are written are described in :mod:`iavutils.world.training`, which
writes them. Here: :func:`load_checkpoint` and :func:`list_checkpoints` for the analyses, and
the readers :func:`iavutils.world.training.finetune` uses to find the last complete epoch.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .models import ModelInfo, load_model, load_state_dict_file, safetensors_problem

__all__ = ["list_checkpoints", "load_checkpoint", "run_path"]


def run_path(run_dir: str | Path, dataset: str, preset: str) -> Path:
    """The directory of one finetuning run."""
    return Path(run_dir) / dataset / preset


def list_checkpoints(run_dir: str | Path, dataset: str, preset: str) -> list[tuple[int, Path]]:
    """``[(epoch, path), ...]`` of the run's checkpoints, sorted by epoch (0 = initialisation)."""
    folder = run_path(run_dir, dataset, preset) / "checkpoints"
    out = []
    for p in folder.glob("epoch_*.safetensors"):
        try:
            out.append((int(p.stem.split("_")[1]), p))
        except (IndexError, ValueError):
            continue
    return sorted(out)


def _read_json(path: Path, what: str, fix: str):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {path} is unreadable ({type(err).__name__}: {err}); it is damaged or incompletely copied. {fix}") from None


def _read_config(run: Path) -> dict:
    path = run / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no finetuning run at {run} (config.json missing)")
    cfg = _read_json(
        path, "the run configuration",
        f"Restore it from a copy of the run, or delete the run directory {run} to finetune again from scratch.",
    )
    if not isinstance(cfg, dict):
        raise ValueError(f"the run configuration {path} holds a {type(cfg).__name__}, not a JSON object; restore it or delete {run}")
    return cfg


def _read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.json"
    if not path.exists():
        return []
    metrics = _read_json(
        path, "the metrics file",
        f"Restore it from a copy of the run, or delete it to finetune again from scratch (the checkpoints "
        f"under {run / 'checkpoints'} are then recomputed).",
    )
    if not isinstance(metrics, list) or not all(isinstance(m, dict) for m in metrics):
        raise ValueError(f"the metrics file {path} is not a list of per-epoch records; restore it or delete it to start over")
    return metrics


def load_checkpoint(
    run_dir: str | Path, dataset: str, preset: str, epoch: int | None = None, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelInfo]:
    """Loads a finetuned model from a run.

    Args:
        run_dir: The run directory (``"runs"``).
        dataset: The dataset it was finetuned on.
        preset: The preset.
        epoch: Which checkpoint (0 = initialisation); ``None``: the last one.
        device: Where to put the model.

    Returns:
        ``(model, info)`` in eval mode.
    """
    run = run_path(run_dir, dataset, preset)
    ckpts = dict(list_checkpoints(run_dir, dataset, preset))
    if not ckpts:
        raise FileNotFoundError(f"no checkpoints under {run / 'checkpoints'}")
    if epoch is None:
        epoch = max(ckpts)
    if epoch not in ckpts:
        raise FileNotFoundError(f"no checkpoint for epoch {epoch} in {run / 'checkpoints'}; have {sorted(ckpts)}")
    cfg = _read_config(run)
    model, info = load_model(preset, num_classes=cfg["num_classes"], pretrained=False)
    model.load_state_dict(load_state_dict_file(ckpts[epoch]))  # names the file if it is damaged
    return model.to(device).eval(), info


def _complete_epochs(run: Path, metrics: list[dict]) -> int:
    """Last epoch whose checkpoint, training state and metrics all exist (-1: none)."""
    ck = run / "checkpoints"
    last = -1
    for k, entry in enumerate(metrics):
        if entry.get("epoch") != k or not (ck / f"epoch_{k:03d}.safetensors").exists():
            break
        if k > 0 and not (ck / f"train_state_{k:03d}.pt").exists():
            # Only the newest training state is kept; older epochs count if a later one is complete.
            later = any((ck / f"train_state_{j:03d}.pt").exists() for j in range(k + 1, len(metrics)))
            if not later:
                break
        last = k
    return last


def _load_train_state(path: Path) -> dict:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or not {"optimizer", "scheduler", "scaler", "torch_rng"} <= set(saved):
        raise ValueError("not a training state (optimizer, scheduler, scaler, torch_rng)")
    return saved


def _resume_point(ck: Path, last: int, final: int) -> tuple[int, dict | None]:
    """The newest epoch ``<= last`` that can be resumed exactly, and its training state.

    A damaged checkpoint or training state is skipped with a warning naming it. Epoch 0 needs
    only its checkpoint; a finished run (``last == final``) only its last checkpoint.

    Returns:
        ``(epoch, train_state)``; ``(-1, None)``: start from scratch.
    """
    for k in range(last, -1, -1):
        path = ck / f"epoch_{k:03d}.safetensors"
        problem = safetensors_problem(path)
        if problem is not None:
            warnings.warn(f"skipping the damaged checkpoint {path} ({problem}); it will be recomputed", RuntimeWarning, stacklevel=3)
            continue
        if k == 0 or k == final:
            return k, None
        state_path = ck / f"train_state_{k:03d}.pt"
        if not state_path.exists():
            continue  # only the newest training states are kept: an older epoch cannot be resumed
        try:
            saved = _load_train_state(state_path)
        except Exception as err:
            warnings.warn(
                f"skipping the damaged training state {state_path} ({type(err).__name__}: {err}); "
                f"resuming from an earlier epoch",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        return k, saved
    return -1, None

