"""The one validator of every notebook parameter.

Each chapter's setup cell calls :func:`check_parameters` with its namespace before anything
else runs, so that a bad ``papermill -p`` value fails at once with a message that names the
parameter, the value given, what is accepted and what the parameter means, instead of a bare
``IndexError`` minutes later, a silent fallback (``num_images 0`` meaning "the whole split")
or an all-NaN result.

:data:`PARAMETERS` is the table of every parameter any notebook declares (name → meaning and
accepted values); ``tests/test_parameters.py`` checks that every name in a notebook's
``parameters`` cell is in it, so a new parameter cannot escape validation. The module imports
no torch (only ``device`` values other than ``"auto"`` are checked with it), so that the check
runs before the chapters' heavy imports.

:func:`analysis_spec` turns a notebook's analysis parameters into the one
:class:`~iavutils.core.spec.AnalysisSpec` its chapter functions take, with the same checks.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.spec import AnalysisSpec

__all__ = [
    "Parameter",
    "ParameterError",
    "PARAMETERS",
    "SPEC_PARAMETERS",
    "check_parameters",
    "check_parameter",
    "analysis_spec",
]

#: Literal copy of :data:`iavutils.core.spec.NOISE_MODES` (no import of the core here);
#: ``tests/test_parameters.py`` checks that they agree.
NOISE_MODES: tuple[str, ...] = ("gaussian", "antithetic", "quasi")


class ParameterError(ValueError):
    """A notebook parameter has a value that is not accepted."""


@dataclass(frozen=True)
class Parameter:
    """One notebook parameter.

    Attributes:
        name: Its name in the ``parameters`` cell.
        accepted: The accepted values, in words (part of every error message).
        meaning: What it controls (part of every error message).
        check: ``check(value, values)`` → ``None`` when accepted, else a short reason; ``values``
            holds the notebook's other parameters (for ``example < num_images`` and the like).
    """

    name: str
    accepted: str
    meaning: str
    check: Callable[[Any, Mapping[str, Any]], str | None]


# ----------------------------------------------------------------------------- value checks


def _is_int(v: Any) -> bool:
    # bool is an int subclass: `-p num_images True` is a mistake, not 1.
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int_at_least(lo: int) -> Callable[[Any, Mapping[str, Any]], str | None]:
    def check(v: Any, _: Mapping[str, Any]) -> str | None:
        if not _is_int(v):
            return "not an integer"
        return None if v >= lo else f"below {lo}"

    return check


def _optional_int_at_least(lo: int) -> Callable[[Any, Mapping[str, Any]], str | None]:
    inner = _int_at_least(lo)

    def check(v: Any, values: Mapping[str, Any]) -> str | None:
        return None if v is None else inner(v, values)

    return check


def _real(lo: float, lo_open: bool) -> Callable[[Any, Mapping[str, Any]], str | None]:
    def check(v: Any, _: Mapping[str, Any]) -> str | None:
        if not _is_real(v):
            return "not a number"
        if not math.isfinite(float(v)):
            return "not finite"
        if (v <= lo) if lo_open else (v < lo):
            return f"{'not above' if lo_open else 'below'} {lo:g}"
        return None

    return check


def _tol(v: Any, values: Mapping[str, Any]) -> str | None:
    if v is None:
        return None
    reason = _real(0.0, lo_open=True)(v, values)
    if reason is None and v >= 1:
        return "not below 1 (IA-Scores lie in [0, 1])"
    if reason is None and values.get("noise", "gaussian") == "quasi":
        return "the precision mode draws antithetic pairs; with tol set, noise must be 'gaussian' or 'antithetic'"
    return reason


def _choice(*choices: str) -> Callable[[Any, Mapping[str, Any]], str | None]:
    def check(v: Any, _: Mapping[str, Any]) -> str | None:
        return None if isinstance(v, str) and v in choices else "not one of the choices"

    return check


def _model(v: Any, _: Mapping[str, Any]) -> str | None:
    from .run_dirs import parse_models  # light: no torch

    if not isinstance(v, str):
        return "not a string"
    names = [p.strip() for p in v.split(",") if p.strip()]
    if not names:
        return "empty"
    rest = [p for p in names if p.lower() != "all"]
    if rest:
        try:
            parse_models(",".join(rest))
        except ValueError as exc:
            return str(exc).split(";")[0]
    return None


def _run_dir(v: Any, _: Mapping[str, Any]) -> str | None:
    if v is None:
        return None
    if not isinstance(v, (str, os.PathLike)):
        return "not a path"
    if str(v) and os.path.exists(v) and not os.path.isdir(v):
        return "an existing file, not a directory"
    return None


def _device(v: Any, _: Mapping[str, Any]) -> str | None:
    if not isinstance(v, str):
        return "not a string"
    if v in ("", "auto"):
        return None
    import torch

    try:
        dev = torch.device(v)
    except (RuntimeError, ValueError):
        return "not a torch device"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


def _aav_reference(v: Any, _: Mapping[str, Any]) -> str | None:
    if v is None or v in ("", "auto"):
        return None
    from .run_dirs import PRESET_NAMES

    return None if isinstance(v, str) and v in PRESET_NAMES else "not a preset"


def _example(v: Any, values: Mapping[str, Any]) -> str | None:
    if not _is_int(v):
        return "not an integer"
    n = values.get("num_images")
    if v < 0:
        return "negative"
    if _is_int(n) and v >= n:
        return f"not below num_images = {n}"
    return None


def _image_index(v: Any, _: Mapping[str, Any]) -> str | None:
    if _is_int(v):
        return None if v >= 0 else "negative"
    if isinstance(v, str):
        parts = [s.strip() for s in v.split(",") if s.strip()]
        if parts and all(s.isdigit() for s in parts):
            return None
        return "not a comma-separated list of non-negative integers"
    return "not an integer"


def _recipe(v: Any, _: Mapping[str, Any]) -> str | None:
    if v is None or v == "":
        return None
    from .run_dirs import RECIPE_SUMMARY

    return None if isinstance(v, str) and v in RECIPE_SUMMARY else "not a recipe"


def _finetune(v: Any, _: Mapping[str, Any]) -> str | None:
    return None if v is True or v is False or v == "auto" else "not True, False or 'auto'"


def _recipes_text() -> str:
    from .run_dirs import RECIPE_SUMMARY  # light: importing this module must not import torch

    return ", ".join(repr(r) for r in RECIPE_SUMMARY)


# ----------------------------------------------------------------------------- the table


def _table() -> dict[str, Parameter]:
    from .run_dirs import PRESET_NAMES

    rows = [
        Parameter("model", f"a preset ({', '.join(PRESET_NAMES)}), several comma-separated, 'tiny' (the four "
                  "embedded presets), 'real' (the four hub presets) or 'all' (every model finetuned in the run "
                  "directory)",
                  "the models to analyse; figures show exactly these", _model),
        Parameter("run_dir", "a directory path, or '' for $IAV_RUN_DIR, else <repository>/runs",
                  "where checkpoints and cached results live", _run_dir),
        Parameter("dataset", "'auto', 'embedded' or 'cifar10'",
                  "the finetuning and analysis dataset (auto: embedded for tiny presets, else cifar10)",
                  _choice("auto", "embedded", "cifar10")),
        Parameter("num_images", "an integer >= 1 (a number >= the split size analyses the whole split)",
                  "held-out images analysed", _int_at_least(1)),
        Parameter("n_samples", "an integer >= 1 (the IAV author's convention: 25)",
                  "SmoothGrad noisy copies per image", _int_at_least(1)),
        Parameter("noise_level", "a finite number >= 0 (0: plain gradients; the IAV author's convention: 0.15)",
                  "SmoothGrad noise as a fraction of the image's value range", _real(0.0, lo_open=False)),
        Parameter("noise", f"one of {', '.join(repr(m) for m in NOISE_MODES)} (the IAV author's convention: "
                  "'gaussian')",
                  "the SmoothGrad noise stream (gaussian: independent draws; antithetic: pairs +eps, -eps; quasi: "
                  "randomly shifted scrambled Sobol points)", _choice(*NOISE_MODES)),
        Parameter("tol", "None (fixed n = n_samples) or a number above 0 and below 1, e.g. 0.005",
                  "the target precision of every head's global-IAV: SmoothGrad draws antithetic noise in rounds "
                  "until each head's estimated error (jackknife, 95 %) is within tol (n_samples is then unused)",
                  _tol),
        Parameter("max_samples", "an integer >= 16 (400 by default)",
                  "the cap on SmoothGrad noisy copies per image when tol is set", _int_at_least(16)),
        Parameter("device", "'auto', 'cpu', 'cuda' or 'cuda:<index>' (CUDA only where available)",
                  "where to compute", _device),
        Parameter("seed", "an integer >= 0", "seeds the image subset and the noise", _int_at_least(0)),
        Parameter("target", "'label' or 'predicted'", "the class the attributions explain",
                  _choice("label", "predicted")),
        Parameter("finetune", "True, False or 'auto'",
                  "what to do when a model has no complete finetuning in the run: True finetunes it here, "
                  "False stops with the command to run, auto finetunes embedded (tiny) presets and stops "
                  "for hub presets", _finetune),
        Parameter("epoch_stride", "an integer >= 1", "analyse every epoch_stride-th checkpoint (the last and the first finetuned always)",
                  _int_at_least(1)),
        Parameter("aav_reference", "'auto', '' (no model-based AAV) or a preset",
                  "the model whose last-checkpoint SmoothGrad is the AAV map", _aav_reference),
        Parameter("example", "an integer from 0 to num_images - 1", "which analysed image Fig. 2 shows", _example),
        Parameter("perplexity", "a finite number > 0 (capped for small image sets)", "t-SNE perplexity",
                  _real(0.0, lo_open=True)),
        Parameter("num_eval", "an integer >= 0 (0: the whole split)",
                  "held-out images for the accuracies under shift", _int_at_least(0)),
        Parameter("epochs", "None (the recipe's) or an integer >= 1", "finetuning epochs",
                  _optional_int_at_least(1)),
        Parameter("max_train", "None (every training image) or an integer >= 1",
                  "finetune on the first max_train training images only", _optional_int_at_least(1)),
        Parameter("recipe", f"'' (tiny for embedded presets, paper otherwise) or one of {_recipes_text()}",
                  "the finetuning recipe", _recipe),
        Parameter("n_examples", "an integer >= 1", "images shown with every model's maps", _int_at_least(1)),
        Parameter("image_index", "an integer >= 0 or comma-separated integers >= 0 (e.g. 0,7,12)",
                  "image(s) of the held-out split the explorer shows", _image_index),
        Parameter("panel_px", "an integer >= 0 (0: automatic)", "height of each pre-rendered explorer panel",
                  _int_at_least(0)),
        Parameter("ablation_images", "an integer >= 1", "held-out images each head ablation is measured on",
                  _int_at_least(1)),
        Parameter("ablation_mode", "'zero' or 'mean'", "how an ablated head's output is replaced",
                  _choice("zero", "mean")),
        Parameter("ablation_subsets", "an integer >= 1 (20 by default)",
                  "same-size head subsets averaged for each control group of the head ablation",
                  _int_at_least(1)),
        Parameter("perturbation_steps", "an integer >= 1 (9: removed fractions 10 %, 20 %, ..., 90 %)",
                  "removed fractions of the perturbation curves, k/(steps+1) for k from 1 to steps",
                  _int_at_least(1)),
        Parameter("unit", "'checkpoint' or 'run'", "one classifier row per checkpoint or per model",
                  _choice("checkpoint", "run")),
        Parameter("num_permutations", "an integer >= 1", "Monte Carlo permutations (exact when enumerable)",
                  _int_at_least(1)),
        Parameter("n_boot", "an integer >= 1", "bootstrap replicates of the claims table's intervals",
                  _int_at_least(1)),
    ]
    return {p.name: p for p in rows}


#: Every notebook parameter: name → :class:`Parameter`.
PARAMETERS: dict[str, Parameter] = _table()


def _message(p: Parameter, value: Any, reason: str) -> str:
    return (f"parameter {p.name} = {value!r} is not accepted ({reason}): expected {p.accepted}. "
            f"{p.name} is {p.meaning}; set it with papermill -p {p.name} <value>.")


def check_parameter(name: str, value: Any, values: Mapping[str, Any] | None = None) -> None:
    """Checks one parameter (see :func:`check_parameters`).

    Raises:
        ParameterError: The value is not accepted, or ``name`` is not a known parameter.
    """
    check_parameters({**(values or {}), name: value}, names=[name])


def check_parameters(values: Mapping[str, Any], names: Any = None) -> None:
    """Checks a notebook's parameters; call it first in the setup cell with ``globals()``.

    Args:
        values: The notebook's namespace (or any mapping of parameter name → value). Every
            name of :data:`PARAMETERS` found in it is checked.
        names: Check only these names (each must be in :data:`PARAMETERS`); ``None``: every
            known name present in ``values``.

    Raises:
        ParameterError: One line per rejected parameter, each naming the parameter, the value,
            the accepted values and the parameter's meaning.
    """
    if names is None:
        names = [n for n in PARAMETERS if n in values]
    problems = []
    for name in names:
        p = PARAMETERS.get(name)
        if p is None:
            problems.append(f"parameter {name!r} is not known to iavutils.analysis.parameters.PARAMETERS "
                            "(add it to the table with its accepted values)")
            continue
        reason = p.check(values[name], values)
        if reason is not None:
            problems.append(_message(p, values[name], reason))
    if problems:
        raise ParameterError("\n".join(problems))


#: The notebook parameters that are fields of :class:`~iavutils.core.spec.AnalysisSpec`.
SPEC_PARAMETERS: tuple[str, ...] = (
    "num_images", "n_samples", "noise_level", "noise", "seed", "target", "device", "tol", "max_samples",
)


def analysis_spec(values: Mapping[str, Any] | None = None, /, **parameters: Any) -> AnalysisSpec:
    """The analysis specification of a notebook's parameters, checked as :func:`check_parameters` does.

    A chapter builds it in one line after its parameters cell, ``spec = analysis_spec(globals())``,
    and wraps it in the :class:`~iavutils.analysis.study.Study` every chapter function takes; a parameter the notebook does not declare
    takes the default of :class:`~iavutils.core.spec.AnalysisSpec` (the defaults live there only).

    Args:
        values: A notebook's namespace (or any mapping): the names of :data:`SPEC_PARAMETERS`
            found in it are taken, every other name is ignored.
        **parameters: Analysis parameters by name (they override ``values``): the names of
            :data:`SPEC_PARAMETERS`, and ``progress`` (show progress in the terminal).

    Returns:
        The :class:`~iavutils.core.spec.AnalysisSpec`.

    Raises:
        ParameterError: A value is not accepted (the message of :func:`check_parameters`: the
            parameter, the value, what is accepted and what the parameter means).
        TypeError: A keyword that is no analysis parameter.
    """
    unknown = sorted(set(parameters) - {*SPEC_PARAMETERS, "progress"})
    if unknown:
        raise TypeError(f"analysis_spec() got unknown parameter(s) {unknown}; the analysis parameters are "
                        f"{', '.join(SPEC_PARAMETERS)} and progress")
    chosen = {k: v for k, v in (values or {}).items() if k in SPEC_PARAMETERS}
    chosen.update(parameters)
    check_parameters(chosen, names=[n for n in SPEC_PARAMETERS if n in chosen])
    from ..core.spec import AnalysisSpec  # light: a dataclass, no torch

    return AnalysisSpec(**chosen)
