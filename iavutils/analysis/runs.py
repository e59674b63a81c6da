"""What a run directory holds, and what a chapter does when a finetuning is missing.

Every analysis chapter (01–11) calls :func:`finetuned_models` in its setup cell, right after
:func:`iavutils.analysis.parameters.check_parameters` and *before* the heavy imports: this module imports
neither torch nor timm (``tests/test_usage.py`` checks it), so that ``papermill
notebooks/05_global_iav.ipynb out.ipynb -p model beit`` with nothing finetuned stops within
seconds, with the commands to run, instead of failing minutes later with an ``IndexError``.

The preset names, recipes and dataset sizes it needs are kept here as literals, and
``tests/test_usage.py`` checks that they agree with :mod:`iavutils.world.models`,
:data:`iavutils.world.training.RECIPES` and :mod:`iavutils.world.data`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
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
    "finetuned_models",
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


def _format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _device_types(device: str) -> list[str]:
    """Device types to estimate for: the one asked for, or both when ``"auto"`` (no torch here)."""
    if device in ("", "auto", None):
        return ["cuda", "cpu"]
    return ["cuda" if str(device).startswith("cuda") else "cpu"]


def _finetune_plan(preset: str, dataset: str, run: Path, device: str) -> str:
    """The recipe a finetuning of ``preset`` would use (resume: the stored one) and its estimated time."""
    folder = run / dataset / preset
    status, last, _ = finetuning_status(preset, dataset, run)
    stored = _read_json(folder / "config.json")
    if isinstance(stored, dict) and "epochs" in stored:  # ensure_finetuned resumes with the stored recipe
        recipe, max_train, name = stored, stored.get("max_train"), "as stored in the run"
    else:
        name = "tiny" if preset in TINY_PRESETS else "paper"
        recipe, max_train, name = RECIPE_SUMMARY[name], None, repr(name)
    n_train = TRAIN_IMAGES.get(dataset, TRAIN_IMAGES["cifar10"])
    n_train = min(n_train, int(max_train)) if max_train else n_train
    epochs = int(recipe["epochs"])
    remaining = epochs - max(last, 0)
    what = f"epochs {last + 1}-{epochs} of an interrupted run" if status == "incomplete" else f"{epochs} epochs"
    estimates = []
    # Tiny presets: one figure (a GPU does not make these small batches faster).
    for kind in ["cpu"] if preset in TINY_PRESETS else _device_types(device):
        rate, basis = TRAIN_RATE[(preset in TINY_PRESETS, kind)]
        estimates.append(f"{_format_seconds(remaining * n_train / rate)} on {'a GPU' if kind == 'cuda' else 'a CPU'} "
                         f"({rate:g} images/s, {basis})")
    return (f"recipe {name}: {what}, batch {recipe.get('batch_size')}, lr {recipe.get('lr'):g}, "
            f"{n_train} training images; estimated {', '.join(estimates)}")


def _notebook_path(name: str) -> str:
    """How to name ``notebooks/<name>.ipynb`` on a command line run from the working directory."""
    root = repo_root()
    if root is None:
        return f"{name}.ipynb"
    path = root / "notebooks" / f"{name}.ipynb"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- the chapters' entry


def finetuned_models(
    model: str | Sequence[str],
    dataset: str = "auto",
    run_dir: str | os.PathLike | None = "",
    *,
    finetune: bool | str = "auto",
    device: str = "auto",
    notebook: str = "",
) -> tuple[list[str], str, Path]:
    """The finetuned models a chapter analyses; finetunes them or stops where one is missing.

    The one place where every analysis chapter (01–11) deals with missing finetuning, so that
    all of them behave alike. A model needs finetuning when the run directory holds no
    checkpoint of it, or an interrupted run (fewer epochs than its recipe). Then:

    * ``finetune="auto"`` (the default): embedded (tiny) presets are finetuned here — about a
      minute each on a CPU, announced with the recipe and an estimated time; hub presets stop
      at once with :class:`FinetuningRequired`, whose message gives the exact commands.
    * ``finetune=True``: finetune whatever is missing here (announced), hub presets included.
    * ``finetune=False``: stop at once with the commands, whatever the preset.

    Finetuning goes through :func:`iavutils.analysis.checkpoints.ensure_finetuned` (a checkpoint per
    epoch, resumable, with progress bars).

    Args:
        model: The notebook's ``model`` parameter (see :func:`select_models`; ``"all"`` adds
            every model of the run directory).
        dataset: ``"auto"``, ``"embedded"`` or ``"cifar10"``.
        run_dir: Run directory (see :func:`resolve_run_dir`).
        finetune: ``"auto"``, ``True`` or ``False`` (see above).
        device: Where to finetune.
        notebook: The chapter's name (``"05_global_iav"``), for the commands in the message.

    Returns:
        ``(presets, dataset, run directory)``: exactly the models ``model`` names.

    Raises:
        FinetuningRequired: A model needs finetuning that ``finetune`` does not allow here.
        ValueError: ``finetune`` is not ``True``, ``False`` or ``"auto"``, or ``model`` is bad.
    """
    if not (finetune is True or finetune is False or finetune == "auto"):
        raise ValueError(f"finetune must be True, False or 'auto', got {finetune!r}")
    presets, dataset, run = select_models(model, dataset, run_dir)
    needed = {p: finetuning_status(p, dataset, run) for p in presets}
    needed = {p: s for p, s in needed.items() if s[0] != "complete"}
    here = [p for p in needed if finetune is True or (finetune == "auto" and p in TINY_PRESETS)]
    stop = [p for p in needed if p not in here]
    if stop:
        raise FinetuningRequired(_finetuning_message(stop, needed, dataset, run, device, notebook, finetune))
    if here:
        from . import checkpoints  # torch: only when a finetuning is made here
        from ..core import progress

        device_type = checkpoints.resolve_device(device).type  # torch is imported now: say which device
        for p in here:
            status, last, target = needed[p]
            state = (f"an interrupted finetuning on {dataset} (epoch {last} of {target})" if status == "incomplete"
                     else f"no finetuning on {dataset}")
            _announce(progress, f"{p} has {state} in {run}: finetuning it now, "
                                f"{_finetune_plan(p, dataset, run, device_type)}. A checkpoint is saved per epoch, "
                                f"so an interrupted run resumes (finetune={finetune!r}; -p finetune False stops "
                                "instead).")
            t0 = time.perf_counter()
            checkpoints.ensure_finetuned(p, dataset, run, device=device)
            _announce(progress, f"{p}: finetuned in {_format_seconds(time.perf_counter() - t0)}.")
    return presets, dataset, run


def _announce(progress: object, message: str) -> None:
    print(message, flush=True)
    if progress.to_file():  # type: ignore[attr-defined]  # the book runner's terminal too
        progress.write(message)  # type: ignore[attr-defined]


def _finetuning_message(
    stop: Sequence[str], needed: Mapping[str, tuple[str, int, int | None]], dataset: str, run: Path,
    device: str, notebook: str, finetune: bool | str,
) -> str:
    chapter = notebook or "this chapter"
    lines = [f"{chapter} needs finetuned checkpoints that the run directory {run} does not hold:"]
    for p in stop:
        status, last, target = needed[p]
        state = f"interrupted at epoch {last} of {target}" if status == "incomplete" else "not finetuned"
        lines.append(f"  - {p} on {dataset}: {state}; {_finetune_plan(p, dataset, run, device)}")
    why = ("finetune=False" if finetune is False else
           "finetune='auto' finetunes only the embedded tiny presets here; hub presets take long")
    lines.append(f"Nothing was started ({why}). Run one of:")
    models = ",".join(stop)
    extra = "" if run == resolve_run_dir("") else f" -p run_dir {run}"
    lines.append(f"  papermill {_notebook_path('00_finetune')} 00_finetune.out.ipynb -p model {models}{extra}"
                 "   # finetune, then run this chapter again")
    root = repo_root()
    if root is not None and run == root / "runs" and set(stop) <= set(REAL_PRESETS):
        # `make book` uses <repository>/runs: only then does it finetune into this run directory.
        lines.append(f"  cd {root} && PRESETS=real make book   # every chapter for the four hub models, "
                     "finetuning first")
    if notebook:
        lines.append(f"  papermill {_notebook_path(notebook)} {notebook}.out.ipynb -p model {models}{extra} "
                     "-p finetune True   # finetune here, then run this chapter")
    else:
        lines.append("  or set the chapter's parameter finetune = True to finetune here")
    return "\n".join(lines)
