"""How SmoothGrad's ``B·n`` noisy samples are cut into gradient chunks.

The noisy copies of different images share chunks: they are laid out image-major and cut into
balanced chunks sized for the device (:func:`auto_chunk_size`): a token target per device
(mid-sized on CPU, large on GPU) capped by a memory budget, with the per-sample activation
memory measured on the model. Per-image batches of ``n`` (what captum does) starve
multi-threaded CPUs and GPUs; one batch of all ``B·n`` has no memory bound.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .geometry import UnsupportedModelError, model_geometry
from .hooks import autocast as autocast_ctx
from .hooks import eval_mode, frozen_params

__all__ = ["ChunkPlan", "auto_chunk_size", "resolve_plan", "saved_bytes_per_sample"]

# Tokens per gradient chunk. CPU: keeps the working set in cache — measured on the project's
# 2-core CPU with tiny-dino (65 tokens): 64-sample chunks ran ~10-15 % faster than 128 and
# 256, and far faster than one batch of all B·n (see benchmarks/README.md). CUDA: large enough
# to saturate a datacentre GPU (not measured here). The memory budget caps both.
_TARGET_TOKENS = {"cpu": 4096, "cuda": 65536}


@dataclass(frozen=True)
class ChunkPlan:
    """How the ``B·n`` noisy samples are cut: ``sizes`` sum to ``total``.

    Attributes:
        chunk_size: upper bound on samples per chunk.
        sizes: the balanced chunk sizes (at most two distinct values).
        bytes_per_sample: autograd-saved bytes per sample (measured), the memory driver.
        memory_budget: bytes the chunk's saved activations may take.
    """

    chunk_size: int
    sizes: tuple[int, ...]
    bytes_per_sample: int
    memory_budget: int

    @property
    def peak_bytes_bound(self) -> int:
        """Saved activations + noisy input + its gradient of the largest chunk."""
        return self.chunk_size * self.bytes_per_sample


def _balanced(total: int, chunk: int) -> tuple[int, ...]:
    if total == 0:
        return ()
    k = math.ceil(total / chunk)
    base, extra = divmod(total, k)
    return tuple(base + 1 if i < extra else base for i in range(k))


_SAVED_BYTES_CACHE: dict[tuple, int] = {}


def saved_bytes_per_sample(
    model: nn.Module, image_shape: Sequence[int], device: torch.device | str | None = None, autocast: Any = None
) -> int:
    """Bytes autograd saves for one sample's input-gradient pass (plus input and its gradient).

    Measured once per (model, shape, dtype) with ``saved_tensors_hooks`` on a 2-sample forward,
    parameters frozen, so it is exact for the engine's pass rather than a guess.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    key = (id(model), tuple(image_shape), str(device), str(autocast))
    if key in _SAVED_BYTES_CACHE:
        return _SAVED_BYTES_CACHE[key]
    seen: dict[tuple, int] = {}
    # weights are saved for the input gradient too, but they exist anyway and do not grow with
    # the chunk: leave them out
    resident = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}

    def pack(t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in resident:
            # the same storage is often saved by several ops; count it once
            seen[(ptr, t.device.type)] = t.untyped_storage().nbytes()
        return t

    xs = torch.zeros(2, *image_shape, device=device, requires_grad=True)
    with eval_mode(model), frozen_params(model), torch.enable_grad(), autocast_ctx(device, autocast):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(xs)
    del out
    per = sum(seen.values()) // 2 + 3 * xs[0].numel() * xs.element_size()
    _SAVED_BYTES_CACHE[key] = int(per)
    return int(per)


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.6 * free)
    try:
        import psutil

        avail = psutil.virtual_memory().available
    except ImportError:  # pragma: no cover - psutil ships with the dev environment
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    # a shared CPU box: never take more than a quarter of what is free, nor more than 2 GiB
    return int(min(2 * 2**30, 0.25 * avail))


def auto_chunk_size(
    model: nn.Module,
    image_shape: Sequence[int],
    total: int | None = None,
    device: torch.device | str | None = None,
    memory_budget: int | None = None,
    autocast: Any = None,
) -> ChunkPlan:
    """Chooses the gradient chunk size: a device token target, capped by a memory budget.

    ``chunk = min(target_tokens // N, memory_budget // saved_bytes_per_sample)``, at least 1.
    The peak extra memory of the gradient passes is then bounded by
    ``chunk × saved_bytes_per_sample`` (reported as ``ChunkPlan.peak_bytes_bound``).

    Args:
        model: the ViT.
        image_shape: ``(3,H,W)``.
        total: number of samples to plan for (``B·n``); chunk sizes are balanced over it.
        device: defaults to the model's.
        memory_budget: bytes; default 60 % of free GPU memory, or min(2 GiB, 25 % of free RAM).
        autocast: autocast dtype, if used (changes the saved bytes).

    Returns:
        The :class:`ChunkPlan`.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    budget = int(memory_budget) if memory_budget is not None else _default_budget(device)
    per = saved_bytes_per_sample(model, image_shape, device, autocast)
    try:
        tokens = model_geometry(model).num_tokens
    except UnsupportedModelError:
        # not a ViT (SmoothGrad takes any classifier): count one token per 16×16 pixels, the
        # ViT-B/16 rate, so the device target stays meaningful; the memory budget still caps it
        tokens = max(1, math.prod(image_shape[-2:]) // 256)
    target = _TARGET_TOKENS.get(device.type, _TARGET_TOKENS["cuda"])
    chunk = max(1, min(max(1, target // tokens), budget // max(per, 1)))
    if total is not None:
        chunk = max(1, min(chunk, total))
    sizes = _balanced(total, chunk) if total is not None else ()
    return ChunkPlan(chunk_size=chunk, sizes=sizes, bytes_per_sample=per, memory_budget=budget)


def resolve_plan(
    model: nn.Module,
    image_shape: Sequence[int],
    total: int,
    device: torch.device,
    chunk_size: int | str | None,
    memory_budget: int | None,
    autocast: Any,
) -> ChunkPlan:
    """The plan for an explicit ``chunk_size`` (balanced chunks of at most that many samples), or
    :func:`auto_chunk_size`'s for ``None`` / ``"auto"``."""
    if chunk_size in (None, "auto"):
        return auto_chunk_size(model, image_shape, total, device, memory_budget, autocast)
    chunk = max(1, min(int(chunk_size), max(total, 1)))
    return ChunkPlan(chunk, _balanced(total, chunk), 0, int(memory_budget or 0))

