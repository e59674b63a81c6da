"""What a run directory holds: its location, the presets a ``model`` parameter names, which
finetunings it has and whether they are complete.

The bottom of the analysis layer: it imports neither torch nor timm (``tests/test_usage.py``
checks it), so that a notebook's setup cell can read a run before the heavy imports. What a
chapter does when a finetuning is missing lives one step up, in :mod:`iavutils.analysis.runs`.

The preset names, recipes and dataset sizes it needs are kept here as literals, and
``tests/test_usage.py`` checks that they agree with :mod:`iavutils.world.models`,
:data:`iavutils.world.training.RECIPES` and :mod:`iavutils.world.data`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "TINY_PRESETS",
    "REAL_PRESETS",
    "PRESET_NAMES",
    "FinetuningRequired",
    "repo_root",
    "resolve_run_dir",
    "parse_models",
    "resolve_dataset",
    "finetuned_in_run",
    "select_models",
    "finetuning_status",
]

# Literal copies (no torch import); tests/test_usage.py checks them against the real tables.
TINY_PRESETS: tuple[str, ...] = ("tiny-mim", "tiny-dino", "tiny-sup", "tiny-sup21k")
REAL_PRESETS: tuple[str, ...] = ("beit", "dino", "deit", "in21k")
PRESET_NAMES: tuple[str, ...] = (*TINY_PRESETS, *REAL_PRESETS, "beit-in22k-ft")  # order of models.PRESETS
#: ``iavutils.world.training.RECIPES``: epochs, batch size, learning rate.
RECIPE_SUMMARY: dict[str, dict[str, float]] = {
    "paper": {"epochs": 30, "batch_size": 768, "lr": 1e-5},
    "tiny": {"epochs": 4, "batch_size": 64, "lr": 5e-4},
}
#: Training images of each finetuning dataset.
TRAIN_IMAGES: dict[str, int] = {"embedded": 5000, "cifar10": 50_000}

#: Training images per second assumed by the time estimates: (tiny preset, device type) →
#: (rate, where it comes from). Tiny on a CPU is measured (``make book``: 4 epochs of 5000 images
#: in 53-69 s on a shared 2-core CPU, evaluation included); the others are assumptions, and every
#: message that uses one says so.
TRAIN_RATE: dict[tuple[bool, str], tuple[float, str]] = {
    (True, "cpu"): (360.0, "measured for the tiny presets on a 2-core CPU"),
    (False, "cuda"): (800.0, "assumed for a ViT-B/16 with mixed precision on one A100-class GPU"),
    (False, "cpu"): (4.0, "assumed for a ViT-B/16 on a CPU"),
}


class FinetuningRequired(RuntimeError):
    """A chapter needs a finetuning the run directory does not hold, and may not make it here."""


# ----------------------------------------------------------------------------- names and paths


def repo_root() -> Path | None:
    """The checkout this package sits in (``pyproject.toml`` next to ``iavutils/``), else None."""
    here = Path(__file__).resolve().parents[2]
    if (here / "pyproject.toml").is_file() and (here / "iavutils").is_dir():
        return here
    return None


def resolve_run_dir(run_dir: str | os.PathLike | None = "") -> Path:
    """Where checkpoints and cached results live.

    Papermill starts the kernel in whatever directory it was called from, so a default must not
    depend on the working directory when the package sits in a checkout.

    Args:
        run_dir: An explicit directory (relative paths are relative to the working directory,
            as on any command line); ``""`` or ``None`` selects the default: the environment
            variable ``IAV_RUN_DIR`` if set, else ``<repository root>/runs`` when the package
            sits in a checkout, else ``./runs``.

    Returns:
        An absolute path (not created).
    """
    if run_dir not in (None, ""):
        return Path(run_dir).expanduser().resolve()
    env = os.environ.get("IAV_RUN_DIR", "")
    if env:
        return Path(env).expanduser().resolve()
    root = repo_root()
    return (root / "runs") if root is not None else (Path.cwd() / "runs").resolve()


def parse_models(model: str | Sequence[str]) -> list[str]:
    """Presets named by a notebook's ``model`` parameter.

    Args:
        model: One preset, a comma-separated list, or a sequence; ``"tiny"`` (or
            ``"embedded"``) stands for the four embedded presets and ``"real"`` for the four
            hub presets. Duplicates are dropped, order is kept.

    Raises:
        ValueError: An unknown preset, or nothing named.
    """
    parts = [p.strip() for p in model.split(",")] if isinstance(model, str) else [str(p).strip() for p in model]
    out: list[str] = []
    for p in parts:
        if not p:
            continue
        low = p.lower()
        names = list(TINY_PRESETS) if low in ("tiny", "embedded") else list(REAL_PRESETS) if low == "real" else [p]
        for name in names:
            if name not in PRESET_NAMES:
                raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESET_NAMES)} or 'tiny'/'real'")
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError(f"no preset named in model={model!r}")
    return out


def resolve_dataset(dataset: str, presets: Sequence[str]) -> str:
    """``"auto"`` → ``"embedded"`` when every preset is an embedded one, else ``"cifar10"``."""
    if dataset not in ("", "auto", None):
        return dataset
    return "embedded" if all(p in TINY_PRESETS for p in presets) else "cifar10"


def _preset_order(preset: str) -> tuple[int, str]:
    return (PRESET_NAMES.index(preset) if preset in PRESET_NAMES else len(PRESET_NAMES), preset)


def _checkpoints(run: Path) -> list[Path]:
    # The layout of iavutils.world.training: checkpoints/epoch_{k:03d}.safetensors.
    return sorted((run / "checkpoints").glob("epoch_*.safetensors"))


def finetuned_in_run(dataset: str, run_dir: str | os.PathLike | None = "") -> list[str]:
    """Presets with at least one checkpoint on ``dataset`` in the run directory, in preset order."""
    root = resolve_run_dir(run_dir) / dataset
    found = []
    if root.is_dir():
        for d in root.iterdir():
            if d.name in PRESET_NAMES and d.is_dir() and _checkpoints(d):
                found.append(d.name)
    return sorted(found, key=_preset_order)


def select_models(
    model: str | Sequence[str], dataset: str = "auto", run_dir: str | os.PathLike | None = ""
) -> tuple[list[str], str, Path]:
    """What a notebook's ``model``, ``dataset`` and ``run_dir`` parameters name.

    The figures show exactly the presets ``model`` names. ``"all"`` (alone or in a list) stands
    for every preset finetuned on the dataset in the run directory; with ``dataset="auto"`` it
    looks at the embedded runs first, then at CIFAR-10.

    Returns:
        ``(presets, dataset, run directory)``; the directory is absolute.

    Raises:
        ValueError: An unknown preset, nothing named, or ``"all"`` and no finetuned model in the run.
    """
    run = resolve_run_dir(run_dir)
    parts = [p.strip() for p in model.split(",")] if isinstance(model, str) else [str(p).strip() for p in model]
    parts = [p for p in parts if p]
    named = [p for p in parts if p.lower() != "all"]
    if len(named) == len(parts):  # no "all"
        return (presets := parse_models(model)), resolve_dataset(dataset, presets), run
    presets = parse_models(named) if named else []
    if dataset not in ("", "auto", None):
        candidates = [dataset]
    else:
        candidates = [resolve_dataset("auto", presets)] if presets else ["embedded", "cifar10"]
    for ds in candidates:
        found = finetuned_in_run(ds, run)
        if found:
            return presets + [p for p in found if p not in presets], ds, run
    raise ValueError(
        f"model={model!r}: 'all' means every model finetuned in the run directory, and {run} holds "
        f"no finetuned model on {' or '.join(candidates)}; name the presets (e.g. model='tiny') or "
        "finetune first (notebooks/00_finetune.ipynb)"
    )


# ----------------------------------------------------------------------------- finetuning status


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finetuning_status(preset: str, dataset: str, run_dir: str | os.PathLike | None = "") -> tuple[str, int, int | None]:
    """How far the finetuning of ``preset`` on ``dataset`` in the run got.

    Returns:
        ``(status, last complete epoch, epochs of its recipe)``: ``"missing"`` (no checkpoint,
        last epoch -1), ``"incomplete"`` (``config.json`` names more epochs than are complete:
        an interrupted run, which resumes) or ``"complete"``. A run without a recipe in its
        ``config.json`` counts as complete when it has any checkpoint.
    """
    run = resolve_run_dir(run_dir) / dataset / preset
    checkpoints = _checkpoints(run)
    if not checkpoints:
        return "missing", -1, None
    config = _read_json(run / "config.json")
    target = config.get("epochs") if isinstance(config, dict) else None
    last_file = int(checkpoints[-1].stem.split("_")[-1])
    if not isinstance(target, int) or isinstance(target, bool):
        return "complete", last_file, None
    from ..world.training import _complete_epochs  # torch: only for a run that is there (the analysis follows)

    metrics = _read_json(run / "metrics.json")
    metrics = metrics.get("epochs", []) if isinstance(metrics, dict) else metrics if isinstance(metrics, list) else []
    last = _complete_epochs(run, metrics)
    return ("complete" if last >= target else "incomplete"), last, target
