"""Model geometry and input checks: what every entry point verifies before it runs.

The token layout (prefix tokens, patch grid, layers, heads) is read from the model itself,
never hard-coded. The checks raise early, with a message that says what to do, instead of
letting a bare torch error surface deep inside a forward.

Supported: timm ``VisionTransformer`` (ViT, DeiT, DINO, MAE, register models),
``VisionTransformerDistilled`` and ``Beit``, i.e. models with ``patch_embed``, a class token
(``cls_token``) at index 0 and ``blocks[i].attn`` modules that apply ``attn_drop`` to the
post-softmax attention in their eager (non-fused) path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "ModelGeometry",
    "UnsupportedModelError",
    "blocks",
    "check_dtype_device",
    "check_grad_mode",
    "check_input",
    "check_model",
    "grad_input",
    "model_geometry",
]

_SUPPORTED = (
    "supported: timm VisionTransformer (ViT/DeiT/DINO/MAE/register models) with a class token, "
    "VisionTransformerDistilled and Beit"
)


class UnsupportedModelError(TypeError):
    """The model is not a ViT-family model with a class token that we can record."""


@dataclass(frozen=True)
class ModelGeometry:
    """Token layout of a ViT-family model, read from the model itself.

    Attributes:
        num_prefix_tokens: Tokens before the patches (class, distillation, register tokens).
        grid: Patch grid ``(gh, gw)``; ``P = gh * gw``.
        num_layers: Number of transformer blocks ``L``.
        num_heads: Heads per block ``H``.
        patch_size: Patch size ``(ph, pw)`` in pixels.
        img_size: Input size ``(H, W)`` in pixels the model expects.
    """

    num_prefix_tokens: int
    grid: tuple[int, int]
    num_layers: int
    num_heads: int
    patch_size: tuple[int, int]
    img_size: tuple[int, int]

    @property
    def num_patches(self) -> int:
        """Number of patch tokens ``P``."""
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        """Sequence length ``N = T + P``."""
        return self.num_prefix_tokens + self.num_patches


def _pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def check_model(model: nn.Module) -> None:
    """Raise a clear error unless ``model`` is a supported ViT-family model with a class token.

    Args:
        model: The model to check.

    Raises:
        UnsupportedModelError: No ``patch_embed``/``blocks``, blocks without a recordable
            attention module, or no class token.
    """
    name = type(model).__name__
    blocks = getattr(model, "blocks", None)
    if getattr(model, "patch_embed", None) is None or not isinstance(blocks, nn.Sequential | nn.ModuleList):
        raise UnsupportedModelError(
            f"{name} is not a ViT-family model (no `patch_embed` and `blocks`); {_SUPPORTED}."
        )
    if len(blocks) == 0:
        raise UnsupportedModelError(f"{name} has no transformer blocks; {_SUPPORTED}.")
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        if attn is None or not isinstance(getattr(attn, "attn_drop", None), nn.Module):
            raise UnsupportedModelError(
                f"{name}.blocks[{i}] has no `attn.attn_drop` through which the post-softmax "
                f"attention passes, so it cannot be recorded; {_SUPPORTED}."
            )
    # The IA-Score reads the class token's row; without one there is nothing to read.
    if getattr(model, "cls_token", None) is None:
        raise UnsupportedModelError(
            f"{name} has no class token (cls_token is None, e.g. class_token=False / "
            f"global-pool-only); the IA-Score needs the class token's attention row; {_SUPPORTED}."
        )
    if int(getattr(model, "num_prefix_tokens", 0)) < 1:
        raise UnsupportedModelError(f"{name}.num_prefix_tokens < 1; {_SUPPORTED}.")


def model_geometry(model: nn.Module) -> ModelGeometry:
    """Read the token layout of a supported model.

    Args:
        model: A supported timm ViT-family model (see module docstring).

    Returns:
        The model's :class:`ModelGeometry`.

    Raises:
        UnsupportedModelError: The model is not supported (see :func:`check_model`).
    """
    check_model(model)
    pe = model.patch_embed
    return ModelGeometry(
        num_prefix_tokens=int(model.num_prefix_tokens),
        grid=_pair(pe.grid_size),
        num_layers=len(model.blocks),
        num_heads=int(model.blocks[0].attn.num_heads),
        patch_size=_pair(pe.patch_size),
        img_size=_pair(pe.img_size),
    )


def check_input(model: nn.Module, x: Tensor) -> None:
    """Raise a clear error for an input the model cannot be explained on.

    Checks a ``[B,C,H,W]`` floating tensor with finite values, on the model's device and in its
    dtype; for ViT-family models (those with ``patch_embed``) also the image size the model was
    built for.

    Args:
        model: The model ``x`` is meant for.
        x: Input batch ``[B,C,H,W]``.

    Raises:
        ValueError: Wrong rank/dtype/size, non-finite values, or an input whose dtype or
            device differs from the model's (:func:`check_dtype_device`).
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected a floating-point image batch [B,C,H,W], got {shape}")
    if x.shape[0] == 0:
        raise ValueError("empty batch")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise ValueError(f"input contains NaN or Inf values ({bad} of {x.shape[0]} images)")
    pe = getattr(model, "patch_embed", None)
    if pe is not None and hasattr(pe, "img_size") and pe.img_size is not None:
        expected = _pair(pe.img_size)
        if tuple(x.shape[-2:]) != expected:
            raise ValueError(
                f"wrong image size {tuple(x.shape[-2:])}: {type(model).__name__} expects "
                f"{expected} (patch grid {_pair(pe.grid_size)})"
            )
        proj = getattr(pe, "proj", None)
        in_chans = getattr(proj, "in_channels", None)
        if in_chans is not None and x.shape[1] != in_chans:
            raise ValueError(f"expected {in_chans} input channels, got {x.shape[1]}")
    check_dtype_device(model, x)


def _model_param(model: nn.Module) -> Tensor | None:
    # The first floating-point parameter (or buffer) stands for the model's dtype and device.
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t
    return None


def check_dtype_device(model: nn.Module, x: Tensor) -> None:
    """Raise a clear error when ``x`` and the model differ in dtype or device.

    A half-precision input into a float32 model, or a CPU input into a CUDA model, otherwise
    fails deep inside the forward with a bare torch error. Mixed precision is done with
    ``torch.autocast`` (float32 model and input), not by casting the input.

    Args:
        model: The model ``x`` is meant for.
        x: Input batch.

    Raises:
        ValueError: The dtypes or the devices differ.
    """
    p = _model_param(model)
    if p is None:
        return
    problems = []
    if x.device != p.device:
        problems.append(f"the input is on {x.device} but the model is on {p.device}")
    if x.dtype != p.dtype:
        problems.append(f"the input is {x.dtype} but the model's weights are {p.dtype}")
    if problems:
        raise ValueError(
            f"{' and '.join(problems)}. Move the input to the model: x = x.to(device={str(p.device)!r}, "
            f"dtype={p.dtype}) (or move the model with model.to(...)); for mixed precision keep both in "
            f"float32 and use the `autocast` argument / torch.autocast instead of casting the input."
        )


def check_grad_mode(method: str) -> None:
    """Raise a clear error when a gradient method is called under ``torch.inference_mode()``.

    ``torch.no_grad()`` is fine: the gradient methods switch gradients back on themselves with
    ``torch.enable_grad()``, which inference mode does not allow.

    Args:
        method: Name of the calling function, for the message.

    Raises:
        RuntimeError: Inference mode is on.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{method} needs gradients, but it was called inside torch.inference_mode(), where "
            f"autograd cannot be switched back on. Call {method} outside the inference_mode block "
            f"(inside torch.no_grad() is fine: {method} enables gradients itself)."
        )


def grad_input(x: Tensor) -> Tensor:
    """``x`` detached, as a tensor autograd may record (a copy if it is an inference tensor).

    Tensors created under ``torch.inference_mode()`` cannot take part in autograd later; a copy
    made outside inference mode can.
    """
    x = x.detach()
    return x.clone() if x.is_inference() else x



def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks, in forward order.

    Raises:
        TypeError: The model has no (or an empty) ``blocks``; a timm ViT/DeiT/BEiT is expected.
    """
    found = getattr(model, "blocks", None)
    if found is None or len(found) == 0:
        raise TypeError(f"{type(model).__name__} has no `blocks`; expected a timm ViT/DeiT/BEiT")
    return list(found)
