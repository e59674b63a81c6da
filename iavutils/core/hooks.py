"""Attention recording for timm ViT-family models, model geometry and model checks.

This is the only module that touches hooks. Every switch it flips (``attn.fused_attn``,
train/eval mode) is saved and restored, and every hook is removed in ``finally`` — also when
the forward raises.

Supported: timm ``VisionTransformer`` (ViT, DeiT, DINO, MAE, register models),
``VisionTransformerDistilled`` and ``Beit``, i.e. models with ``patch_embed``, a class token
(``cls_token``) at index 0 and ``blocks[i].attn`` modules that apply ``attn_drop`` to the
post-softmax attention in their eager (non-fused) path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "AttentionRecorder",
    "ModelGeometry",
    "UnsupportedModelError",
    "check_grad_mode",
    "check_input",
    "check_dtype_device",
    "check_model",
    "eval_mode",
    "grad_input",
    "model_geometry",
    "record_attention",
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


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each module's own flag afterwards.

    Args:
        model: Model to switch.

    Yields:
        The same model, in eval mode.
    """
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


class AttentionRecorder:
    """Record the post-softmax attention of every block during a forward.

    Inside the context, each block's attention runs its eager path (``fused_attn = False``,
    numerically equal to the fused path) and a forward hook on ``attn.attn_drop`` keeps its
    input: the softmax probabilities, after BEiT's relative position bias and before dropout.
    Every forward resets the record, so ``maps`` always belongs to the latest forward.

    Example:
        >>> with AttentionRecorder(model) as rec:
        ...     logits = model(x)
        >>> rec.attention.shape  # [B, L, H, N, N]

    Args:
        model: A supported timm ViT-family model (see module docstring).
        keep_graph: Keep the maps attached to the autograd graph so that gradients with
            respect to them can be taken (GMAR, gradient rollout). Otherwise maps are detached.
        eval: Run in eval mode inside the context (dropout off); every module's own
            train/eval flag is restored on exit.
    """

    def __init__(self, model: nn.Module, keep_graph: bool = False, eval: bool = True) -> None:
        check_model(model)
        self.model = model
        self.keep_graph = keep_graph
        self.eval = eval
        self.geometry = model_geometry(model)
        self._maps: list[Tensor | None] = [None] * self.geometry.num_layers
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._saved_fused: list[tuple[nn.Module, bool, bool]] = []
        self._saved_training: list[tuple[nn.Module, bool]] = []
        self._active = False

    def __enter__(self) -> AttentionRecorder:
        if self._active:
            raise RuntimeError("AttentionRecorder is not re-entrant")
        self._active = True
        try:
            self._saved_training = [(m, m.training) for m in self.model.modules()]
            if self.eval:
                self.model.eval()
            for layer, blk in enumerate(self.model.blocks):
                attn = blk.attn
                # Remember whether the attribute was set on the instance or came from the class.
                had = "fused_attn" in attn.__dict__
                self._saved_fused.append((attn, had, getattr(attn, "fused_attn", False)))
                attn.fused_attn = False
                self._handles.append(attn.attn_drop.register_forward_hook(self._make_hook(layer)))
            self._handles.append(self.model.register_forward_pre_hook(self._reset))
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def release(self) -> None:
        """Remove hooks and restore flags (what ``__exit__`` does); safe to call twice."""
        self._restore()

    def _restore(self) -> None:
        try:
            for h in self._handles:
                h.remove()
            for attn, had, value in self._saved_fused:
                if had:
                    attn.fused_attn = value
                else:
                    attn.__dict__.pop("fused_attn", None)
            for m, flag in self._saved_training:
                m.training = flag
        finally:
            self._handles = []
            self._saved_fused = []
            self._saved_training = []
            self._active = False

    def _reset(self, module: nn.Module, args: object) -> None:
        self._maps = [None] * self.geometry.num_layers

    def _make_hook(self, layer: int):  # noqa: ANN202 - hook closure
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            a = inputs[0]
            self._maps[layer] = a if self.keep_graph else a.detach()

        return hook

    def clear(self) -> None:
        """Forget the maps recorded so far."""
        self._maps = [None] * self.geometry.num_layers

    @property
    def maps(self) -> list[Tensor]:
        """Attention of each block, a list of ``L`` tensors ``[B,H,N,N]`` in block order.

        Raises:
            RuntimeError: Nothing (or not every block) was recorded.
        """
        missing = [i for i, m in enumerate(self._maps) if m is None]
        if len(missing) == len(self._maps):
            raise RuntimeError(
                f"no attention was recorded for {type(self.model).__name__}: run the model "
                f"inside the recorder, and make sure its blocks' attention passes the softmax "
                f"through `attn.attn_drop` in the non-fused path; {_SUPPORTED}."
            )
        if missing:
            raise RuntimeError(
                f"attention was not recorded for blocks {missing} of {type(self.model).__name__}: "
                f"their attention bypasses `attn.attn_drop`; {_SUPPORTED}."
            )
        return list(self._maps)  # type: ignore[arg-type]

    @property
    def attention(self) -> Tensor:
        """All maps stacked, ``[B,L,H,N,N]``."""
        return torch.stack(self.maps, dim=1)


def record_attention(model: nn.Module, x: Tensor, *, grad: bool = False) -> tuple[Tensor, Tensor]:
    """Run ``model(x)`` in eval mode and return its logits and every block's attention.

    Args:
        model: A supported timm ViT-family model (see module docstring).
        x: Model-normalised images ``[B,3,H,W]`` of the size the model was built for.
        grad: Keep the autograd graph (logits and attention stay differentiable with respect to
            ``x`` and the parameters); otherwise runs under ``torch.no_grad``.

    Returns:
        ``(logits [B,C], attn [B,L,H,N,N])``; ``attn`` holds post-softmax probabilities.

    Raises:
        UnsupportedModelError: Unsupported model (e.g. no class token).
        ValueError: Wrong image size, NaN input, input dtype/device differs from the model's.
        RuntimeError: Nothing was recorded, or ``grad=True`` under ``torch.inference_mode()``.
    """
    check_model(model)
    check_input(model, x)
    if grad:
        check_grad_mode("record_attention(grad=True)")
        if x.is_inference():
            x = x.clone()  # an inference tensor cannot join the graph; a copy can
    with torch.set_grad_enabled(grad):
        with AttentionRecorder(model, keep_graph=grad) as rec:
            logits = model(x)
            attn = rec.attention
    return logits, attn
