"""The analysis specification: every knob of an IAV analysis in one frozen value.

A notebook's parameters cell builds one :class:`AnalysisSpec`; the chapter functions pass it on
unchanged to the engine, and the result store keys its cache on :meth:`AnalysisSpec.cache_key`.
The defaults are declared here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

NOISE_MODES = ("gaussian", "antithetic", "quasi")
TARGETS = ("label", "predicted")

# The precision mode (``tol`` set, :mod:`iavutils.core.precision`): antithetic pairs split over
# ``PRECISION_REPLICATES`` jackknife groups. ``PRECISION_RULE`` names the estimator and stopping
# rule in the cache key; change it whenever either changes the numbers.
PRECISION_NOISE = "antithetic"
PRECISION_REPLICATES = 8
PRECISION_RULE = "antithetic pairs, 8-group jackknife, t95 + |bias|, v1"


@dataclass(frozen=True)
class AnalysisSpec:
    """What an IAV analysis computes, and on which images.

    Attributes:
        num_images: Held-out images analysed per model: the same seeded subset for every model.
        n_samples: SmoothGrad noisy copies per image.
        noise_level: SmoothGrad noise standard deviation as a fraction of each image's value
            range (``sigma_b = noise_level * (max(x_b) - min(x_b))``); 0 gives the plain gradient.
        noise: ``"gaussian"`` (the documented noise stream), ``"antithetic"`` (pairs ``+eps,
            -eps``) or ``"quasi"`` (randomly shifted scrambled Sobol points).
        seed: Seeds the image subset and the noise; image ``i`` of the dataset gets the noise
            seed ``image_seed(seed, i)`` whatever batch it is computed in.
        target: ``"label"`` (explain the true class) or ``"predicted"`` (the model's class).
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        progress: Show progress in the terminal (never part of the cache key).
        tol: Target precision of every head's global-IAV (e.g. ``0.005``), or ``None``: the
            fixed-n mode (``n_samples`` copies per image, the ``noise`` stream). With ``tol``,
            SmoothGrad draws antithetic pairs in rounds until every head's estimated error is
            within ``tol`` (:mod:`iavutils.core.precision`); ``n_samples`` is then unused and
            ``noise`` must be ``"gaussian"`` (the default) or ``"antithetic"``.
        max_samples: Cap on the noisy copies per image in the precision mode (a warning says
            when it is reached); rounded down to a multiple of ``2 * PRECISION_REPLICATES``.
    """

    num_images: int = 64
    n_samples: int = 25
    noise_level: float = 0.15
    noise: str = "gaussian"
    seed: int = 0
    target: str = "label"
    device: str = "auto"
    progress: bool = True
    tol: float | None = None
    max_samples: int = 400

    def __post_init__(self) -> None:
        def bad(name: str, accepted: str) -> ValueError:
            return ValueError(
                f"AnalysisSpec.{name}={getattr(self, name)!r} is not valid: {name} accepts {accepted}"
            )

        if isinstance(self.num_images, bool) or not isinstance(self.num_images, int) or self.num_images < 1:
            raise bad("num_images", "an int >= 1")
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, int) or self.n_samples < 1:
            raise bad("n_samples", "an int >= 1")
        if isinstance(self.noise_level, bool) or not isinstance(self.noise_level, (int, float)) or not (
            0 <= float(self.noise_level) < float("inf")
        ):
            raise bad("noise_level", "a finite float >= 0 (0.15 is the IAV author's convention)")
        if self.noise not in NOISE_MODES:
            raise bad("noise", f"one of {NOISE_MODES}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", "an int >= 0")
        if self.target not in TARGETS:
            raise bad("target", f"one of {TARGETS}")
        if not isinstance(self.device, str):
            raise bad("device", "a string such as 'auto', 'cpu' or 'cuda'")
        if self.tol is not None:
            if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not 0 < float(self.tol) < 1:
                raise bad("tol", "None (fixed n_samples) or a number strictly between 0 and 1, e.g. 0.005")
            if self.noise not in ("gaussian", PRECISION_NOISE):
                raise ValueError(
                    f"AnalysisSpec.noise={self.noise!r} with tol={self.tol!r}: the precision mode draws "
                    f"antithetic pairs; leave noise at 'gaussian' or set 'antithetic' (or set tol=None)"
                )
        min_cap = 2 * PRECISION_REPLICATES
        if isinstance(self.max_samples, bool) or not isinstance(self.max_samples, int) or self.max_samples < min_cap:
            raise bad("max_samples", f"an int >= {min_cap} (one antithetic pair per jackknife group)")
        # a float-valued knob is stored as a float so that 0 and 0.0 give the same cache key
        object.__setattr__(self, "noise_level", float(self.noise_level))
        if self.tol is not None:
            object.__setattr__(self, "tol", float(self.tol))

    def replace(self, **changes: Any) -> AnalysisSpec:
        """A copy with ``changes`` applied (validated like a new spec)."""
        return dataclasses.replace(self, **changes)

    def cache_key(self) -> dict[str, Any]:
        """The fields that change the numbers (not ``device`` or ``progress``).

        The Gaussian mode keeps the key it had before the mode existed, so results cached by
        earlier versions stay valid; so does the whole fixed-n mode (``tol=None``: neither
        ``tol`` nor ``max_samples`` appears). With ``tol``, the key has ``tol``, ``max_samples``
        and ``precision`` (the estimator and stopping rule, ``PRECISION_RULE``) instead of
        ``n_samples`` and ``noise``, which do not change its numbers.
        """
        key: dict[str, Any] = {
            "num_images": self.num_images,
            "n_samples": self.n_samples,
            "noise_level": self.noise_level,
            "seed": self.seed,
            "target": self.target,
        }
        if self.tol is not None:
            del key["n_samples"]
            key.update(tol=self.tol, max_samples=self.max_samples, precision=PRECISION_RULE)
        elif self.noise != "gaussian":
            key["noise"] = self.noise
        return key
