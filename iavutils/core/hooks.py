"""Every hook and every switch of the package: attention recording, taps, and flags restored on exit.

This is the only module that registers hooks (``register_*hook``) or flips a model flag
(``attn.fused_attn``, train/eval mode, ``requires_grad``, torch's thread count). Every switch it
flips is saved and restored, and every hook is removed in ``finally`` — also when the forward
raises. The maths the hooks call (e.g. :func:`~iavutils.core.cls_rows.cls_rows_from_block_input`)
lives elsewhere.

Supported models: see :mod:`iavutils.core.geometry` (whose names stay importable from here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .cls_rows import cls_rows_from_block_input, supports_cls_tap
from .geometry import (
    _SUPPORTED,
    ModelGeometry,
    UnsupportedModelError,
    blocks,
    check_dtype_device,
    check_grad_mode,
    check_input,
    check_model,
    grad_input,
    model_geometry,
)

__all__ = [
    "AttentionRecorder",
    "ClsRowTap",
    "ModelGeometry",
    "UnsupportedModelError",
    "autocast",
    "check_grad_mode",
    "check_input",
    "check_dtype_device",
    "check_model",
    "eval_mode",
    "frozen_params",
    "grad_input",
    "head_mask",
    "model_geometry",
    "record_attention",
    "record_output",
    "tap_inputs",
    "threads",
]


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


class _Installed:
    """What the hook classes share: ``__enter__`` installs their hooks and switches, and undoes
    a partial install when it fails; ``__exit__`` (and ``release``) undoes it.

    A subclass defines ``_install`` and ``release`` (which must undo any part of an install).
    """

    def _install(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        try:
            self._install()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class AttentionRecorder(_Installed):
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
        return super().__enter__()

    def _install(self) -> None:
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


# --------------------------------------------------------------------------------------------
# the CLS-row tap of the clean pass


class ClsRowTap(_Installed):
    """Forward pre-hooks that compute each block's CLS row from the attention input.

    The model keeps its fused attention; each hook hands the attention module's input to
    :func:`~iavutils.core.cls_rows.cls_rows_from_block_input`. Use as a context manager; hooks
    are removed on exit, also after an exception.

    Args:
        model: A timm ViT / DeiT (distilled) / BEiT whose attention modules pass
            :func:`~iavutils.core.cls_rows.supports_cls_tap`.
        num_prefix_tokens: ``T``; rows are kept over tokens ``T..N-1``.
    """

    def __init__(self, model: nn.Module, num_prefix_tokens: int) -> None:
        self.attns = [blk.attn for blk in blocks(model)]
        for a in self.attns:
            if not supports_cls_tap(a):
                raise NotImplementedError(f"CLS-row tap does not support {type(a).__name__}")
        self.num_prefix_tokens = num_prefix_tokens
        self.rows: list[Tensor] = []
        self._handles: list[Any] = []

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if kwargs.get("attn_mask") is not None or kwargs.get("is_causal"):
            raise NotImplementedError("masked/causal attention is not supported by the CLS tap")
        shared = kwargs.get("shared_rel_pos_bias", args[1] if len(args) > 1 else None)
        self.rows.append(cls_rows_from_block_input(module, args[0], self.num_prefix_tokens, shared))

    def __enter__(self) -> ClsRowTap:
        self.rows = []
        return super().__enter__()

    def _install(self) -> None:
        for a in self.attns:
            self._handles.append(a.register_forward_pre_hook(self._hook, with_kwargs=True))

    def release(self) -> None:
        """Removes every hook this tap registered."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def pop(self) -> Tensor:
        """``[B,L,H,P]`` from the rows recorded by the last forward; clears them."""
        out = torch.stack(self.rows, dim=1)
        self.rows = []
        return out


# --------------------------------------------------------------------------------------------
# switches, restored on exit


@contextmanager
def frozen_params(model: nn.Module) -> Iterator[None]:
    """Switch every parameter's ``requires_grad`` off; each flag is restored on exit.

    Gradients w.r.t. the input only: autograd then saves nothing for the weights and skips
    their backward.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def autocast(device: torch.device, dtype: torch.dtype | str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` for ``dtype`` (``"bf16"``, ``"fp16"`` or a dtype); ``None``: off."""
    if dtype is None:
        return contextlib.nullcontext()
    if isinstance(dtype, str):
        dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16}[dtype]
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextmanager
def threads(num_threads: int | None) -> Iterator[None]:
    """Torch's intra-op thread count for the block (``None`` or 0: unchanged); restored on exit.

    On an oversubscribed (shared) CPU one thread per process avoids OpenMP barrier stalls —
    measured up to ~4x faster here (benchmarks/README.md).
    """
    if not num_threads:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(saved)


# --------------------------------------------------------------------------------------------
# taps and replacements used by GradCAM and head ablation


@contextmanager
def record_output(module: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Keep ``module``'s latest output, graph attached, in the yielded dict under ``"output"``."""
    store: dict[str, Tensor] = {}

    def hook(mod: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        store["output"] = output

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@contextmanager
def tap_inputs(modules: Sequence[nn.Module], fn: Callable[[int, Tensor], None]) -> Iterator[None]:
    """Call ``fn(i, x)`` with the first positional input ``x`` of ``modules[i]`` at every forward.

    Inputs that are not tensors are skipped. The hooks are removed on exit.
    """

    def make(i: int) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], Tensor):
                fn(i, args[0])

        return hook

    handles = []
    try:
        for i, m in enumerate(modules):
            handles.append(m.register_forward_pre_hook(make(i)))
        yield
    finally:
        for h in handles:
            h.remove()


def _mask_hook(keep: Tensor, fill: Tensor | None) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        inp = args[0]
        k = keep.to(device=inp.device, dtype=inp.dtype)
        # Multiplying instead of writing in place keeps autograd through the other heads intact.
        out = inp * k
        if fill is not None:
            f = fill.to(device=inp.device, dtype=inp.dtype)
            if f.dim() == 2 and f.shape[0] != inp.shape[-2]:
                raise ValueError(f"mean has {f.shape[0]} token positions, input has {inp.shape[-2]}")
            out = out + (1.0 - k) * f
        return (out, *args[1:])

    return hook


@contextmanager
def head_mask(model: nn.Module, masks: Mapping[int, tuple[Tensor, Tensor | None]]) -> Iterator[nn.Module]:
    """Replace chosen channels of ``blocks[l].attn.proj``'s input (the heads' outputs).

    Inside the context, the input ``z`` of layer ``l``'s output projection becomes
    ``z·keep + (1 − keep)·fill`` (``fill=None``: zeros), for head ablation.

    Args:
        model: A timm ViT-family model.
        masks: ``{layer: (keep [C], fill)}``; ``keep`` is 1 on kept channels and 0 on replaced
            ones; ``fill`` is ``[N,C]`` (per token position), ``[C]`` or ``None``.

    Yields:
        The model (hooks installed; removed on exit, also after an exception).
    """
    blks = blocks(model)
    handles = []
    try:
        for layer, (keep, fill) in masks.items():
            handles.append(blks[layer].attn.proj.register_forward_pre_hook(_mask_hook(keep, fill)))
        yield model
    finally:
        for handle in handles:
            handle.remove()
