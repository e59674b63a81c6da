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
    """

    num_images: int = 64
    n_samples: int = 25
    noise_level: float = 0.15
    noise: str = "gaussian"
    seed: int = 0
    target: str = "label"
    device: str = "auto"
    progress: bool = True

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
        # a float-valued knob is stored as a float so that 0 and 0.0 give the same cache key
        object.__setattr__(self, "noise_level", float(self.noise_level))

    def replace(self, **changes: Any) -> AnalysisSpec:
        """A copy with ``changes`` applied (validated like a new spec)."""
        return dataclasses.replace(self, **changes)

    def cache_key(self) -> dict[str, Any]:
        """The fields that change the numbers (not ``device`` or ``progress``).

        The Gaussian mode keeps the key it had before the mode existed, so results cached by
        earlier versions stay valid.
        """
        key: dict[str, Any] = {
            "num_images": self.num_images,
            "n_samples": self.n_samples,
            "noise_level": self.noise_level,
            "seed": self.seed,
            "target": self.target,
        }
        if self.noise != "gaussian":
            key["noise"] = self.noise
        return key
