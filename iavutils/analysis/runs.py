"""What a chapter does when a finetuning is missing: :func:`finetuned_models`.

Every analysis chapter (01–11) calls :func:`finetuned_models` in its setup cell, right after
:func:`iavutils.analysis.parameters.check_parameters` and *before* the heavy imports: this module imports
neither torch nor timm (``tests/test_usage.py`` checks it), so that ``papermill
notebooks/05_global_iav.ipynb out.ipynb -p model beit`` with nothing finetuned stops within
seconds, with the commands to run, instead of failing minutes later with an ``IndexError``.
The run-directory names it builds on live in :mod:`iavutils.analysis.run_dirs` and are
importable from here too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import run_dirs
from .run_dirs import (  # noqa: F401 - the names a setup cell imports from here
    PRESET_NAMES,
    REAL_PRESETS,
    RECIPE_SUMMARY,
    TINY_PRESETS,
    TRAIN_IMAGES,
    TRAIN_RATE,
    FinetuningRequired,
    _read_json,
    finetuned_in_run,
    finetuning_status,
    parse_models,
    repo_root,
    resolve_dataset,
    resolve_run_dir,
    select_models,
)

# Everything run_dirs exports is public here too, so a setup cell needs one import.
__all__ = [*run_dirs.__all__, "finetuned_models"]


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
