"""The model presets: what each of the paper's four hub ViT-B/16 and the four tiny, shipped ViTs is.

:data:`PRESETS` maps a preset name to its :class:`ModelInfo` (timm name, input size, mean/std,
pretraining type, method and source, patch geometry, hub repository); :data:`TINY_CONFIG` is the
architecture the four tiny presets share, and :data:`WEIGHTS_DIR` where their weights ship.
Nothing here builds a model or touches a file: :mod:`iavutils.world.models` does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

__all__ = [
    "ModelInfo",
    "PRESETS",
    "TINY_PRESETS",
    "REAL_PRESETS",
    "EXTRA_PRESETS",
    "TINY_CONFIG",
    "WEIGHTS_DIR",
    "WeightsNotAvailableError",
]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"  # package data: iavutils/weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

# Shared by the four tiny presets so that they differ only in how they were pretrained.
TINY_CONFIG: dict = {
    "img_size": 32,
    "patch_size": 4,
    "embed_dim": 64,
    "depth": 6,
    "num_heads": 4,
    "mlp_ratio": 2.0,  # half the MLP FLOPs: the book runs everything on 2 CPU cores
}


class WeightsNotAvailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable (offline), or not shipped."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a preset is: architecture, preprocessing and pretraining.

    Attributes:
        preset: Preset name (``"tiny-dino"``, ``"deit"``, ...).
        timm_name: timm model name (with pretrained tag for hub presets, ``"beit_base_patch16_224"``
            for the converted BEiT; the tiny presets name their timm class).
        arch: timm class name, ``"VisionTransformer"`` or ``"Beit"``.
        input_size: ``(H, W)`` the model expects.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        pretraining: ``"supervised"`` or ``"self-supervised"``.
        method: Pretraining method in words (``"masked image modelling"``, ...).
        source: Pretraining data (``"ImageNet-22k"``, ``"embedded source-large"``, ...).
        num_prefix_tokens: Tokens before the patches (1: CLS).
        patch_size: Patch side in pixels.
        grid: Patch grid ``(gh, gw)``.
        hub_id: Where the weights come from (hub repository, or ``None`` for shipped weights).
        num_classes: Classifier outputs of the loaded model (0: no head).
    """

    preset: str
    timm_name: str
    arch: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretraining: str
    method: str
    source: str
    num_prefix_tokens: int = 1
    patch_size: int = 16
    grid: tuple[int, int] = (14, 14)
    hub_id: str | None = None
    num_classes: int | None = None

    @property
    def is_tiny(self) -> bool:
        """Whether this is an embedded (shipped, CPU-sized) preset."""
        return self.preset in TINY_PRESETS

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (3, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Maps pixels in [0, 1] (``[..., 3, H, W]``) to the model's normalised input."""
        mean, std = self._stats(x01)
        return (x01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Maps a model-normalised input (``[..., 3, H, W]``) back to [0, 1] pixel space."""
        mean, std = self._stats(x)
        return x * std + mean


def _real(
    preset: str, timm_name: str, arch: str, mean, std, pretraining: str, method: str, source: str,
    hub_id: str | None, *, img_size: int = 224, patch_size: int = 16,
) -> ModelInfo:
    """A preset's :class:`ModelInfo`: a square input cut into a square grid, one CLS token.

    The defaults are the paper's ViT-B/16 at 224 pixels; :func:`_tiny` passes the tiny ones.
    """
    grid = img_size // patch_size
    return ModelInfo(
        preset=preset,
        timm_name=timm_name,
        arch=arch,
        input_size=(img_size,) * 2,
        mean=mean,
        std=std,
        pretraining=pretraining,
        method=method,
        source=source,
        num_prefix_tokens=1,
        patch_size=patch_size,
        grid=(grid, grid),
        hub_id=hub_id,
    )


def _tiny(preset: str, arch: str, pretraining: str, method: str, source: str) -> ModelInfo:
    """A tiny preset: the shared :data:`TINY_CONFIG` geometry, weights shipped (no hub)."""
    return _real(preset, f"{arch}(tiny)", arch, HALF, HALF, pretraining, method, source, None,
                 img_size=TINY_CONFIG["img_size"], patch_size=TINY_CONFIG["patch_size"])


TINY_PRESETS = ("tiny-mim", "tiny-dino", "tiny-sup", "tiny-sup21k")
REAL_PRESETS = ("beit", "dino", "deit", "in21k")
EXTRA_PRESETS = ("beit-in22k-ft",)

PRESETS: dict[str, ModelInfo] = {
    "tiny-mim": _tiny("tiny-mim", "Beit", "self-supervised", "masked image modelling", "embedded source-large (unlabelled)"),
    "tiny-dino": _tiny("tiny-dino", "VisionTransformer", "self-supervised", "self-distillation (DINO)", "embedded source-small (unlabelled)"),
    "tiny-sup": _tiny("tiny-sup", "VisionTransformer", "supervised", "supervised classification", "embedded source-small"),
    "tiny-sup21k": _tiny("tiny-sup21k", "VisionTransformer", "supervised", "supervised classification", "embedded source-large"),
    "beit": _real(
        "beit", "beit_base_patch16_224", "Beit", HALF, HALF, "self-supervised",
        "masked image modelling (BEiT)", "ImageNet-22k (unlabelled)", "microsoft/beit-base-patch16-224-pt22k",
    ),
    "dino": _real(
        "dino", "vit_base_patch16_224.dino", "VisionTransformer", IMAGENET_MEAN, IMAGENET_STD,
        "self-supervised", "self-distillation (DINO)", "ImageNet-1k (unlabelled)", "timm/vit_base_patch16_224.dino",
    ),
    "deit": _real(
        "deit", "deit_base_patch16_224.fb_in1k", "VisionTransformer", IMAGENET_MEAN, IMAGENET_STD,
        "supervised", "supervised classification (DeiT)", "ImageNet-1k", "timm/deit_base_patch16_224.fb_in1k",
    ),
    "in21k": _real(
        "in21k", "vit_base_patch16_224.augreg_in21k", "VisionTransformer", HALF, HALF,
        "supervised", "supervised classification (AugReg)", "ImageNet-21k", "timm/vit_base_patch16_224.augreg_in21k",
    ),
    "beit-in22k-ft": _real(
        "beit-in22k-ft", "beit_base_patch16_224.in22k_ft_in22k", "Beit", HALF, HALF, "supervised",
        "masked image modelling, then supervised ImageNet-22k finetuning", "ImageNet-22k",
        "timm/beit_base_patch16_224.in22k_ft_in22k",
    ),
}



def _info(preset: str) -> ModelInfo:
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}") from None
