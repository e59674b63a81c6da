"""What a chapter analyses, as one frozen value: the models, their dataset, the run and the spec.

:class:`~iavutils.core.spec.AnalysisSpec` says *how* an analysis is computed; :class:`Study`
says *what* it is computed on. A notebook's setup cell builds one from its parameters
(``study = Study(models, dataset, run, spec)``) and passes it to every chapter function of
:mod:`iavutils.analysis`, which therefore declare none of these four arguments themselves.
Cache keys are built from the same fields as before (``dataset``, ``run_dir`` and
``spec.cache_key()``), so a study changes no cached result. No torch is imported here: the
setup cell builds the study before the heavy imports.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.spec import AnalysisSpec

__all__ = ["Study"]


@dataclass(frozen=True)
class Study:
    """The finetuned models a chapter analyses, and with which analysis specification.

    Attributes:
        presets: Preset names, in the order of the tables and figures (a tuple; any sequence
            of names is converted). May be empty for the per-preset functions, which take the
            preset as their own argument.
        dataset: Dataset the presets were finetuned on (``"embedded"``, ``"cifar10"``...).
        run_dir: Run directory (``""``: ``$IAV_RUN_DIR``, else the repository's ``runs``;
            see :func:`~iavutils.analysis.run_dirs.resolve_run_dir`). Kept as given, because
            cache keys hold it as given.
        spec: How each checkpoint is analysed (``None`` is taken as the
            :class:`~iavutils.core.spec.AnalysisSpec` defaults); its ``progress`` shows the
            chapter's bars.
    """

    presets: tuple[str, ...]
    dataset: str = "embedded"
    run_dir: str | os.PathLike | None = ""
    spec: AnalysisSpec = field(default_factory=AnalysisSpec)

    def __post_init__(self) -> None:
        def bad(name: str, accepted: str) -> ValueError:
            return ValueError(f"Study.{name}={getattr(self, name)!r} is not valid: {name} accepts {accepted}")

        # A lone string would iterate as its letters: refuse it rather than guess.
        if isinstance(self.presets, str) or not isinstance(self.presets, Sequence):
            raise bad("presets", "a sequence of preset names, e.g. ('tiny-sup', 'tiny-dino')")
        if not all(isinstance(p, str) and p for p in self.presets):
            raise bad("presets", "non-empty preset names (strings)")
        object.__setattr__(self, "presets", tuple(self.presets))
        if not isinstance(self.dataset, str) or not self.dataset:
            raise bad("dataset", "a dataset name such as 'embedded' or 'cifar10'")
        if self.run_dir is not None and not isinstance(self.run_dir, (str, os.PathLike)):
            raise bad("run_dir", "a path (str or os.PathLike), '' or None")
        if self.spec is None:
            object.__setattr__(self, "spec", AnalysisSpec())
        elif not isinstance(self.spec, AnalysisSpec):
            raise bad("spec", "an AnalysisSpec (or None for its defaults)")

    def replace(self, **changes: Any) -> Study:
        """A copy with ``changes`` applied (validated like a new study)."""
        return dataclasses.replace(self, **changes)
