"""Fast IAV engine: the same numbers as ``iavutils.iav``, computed with fewer wasted FLOPs.

What makes it fast (and why each step is safe):

* **One clean pass gives both the prediction and the CLS rows.** A forward pre-hook on every
  block's attention module sees the block's attention input ``x`` and computes only the class
  token's attention row from it — ``softmax(scale · q₀·kⱼ + bias₀ⱼ)`` — while the model itself keeps
  its fused (``scaled_dot_product_attention``) path. With no ``k_norm``, ``q₀·kⱼ = (W_kᵀq₀)·xⱼ + q₀·b_k``
  and the constant ``q₀·b_k`` cancels in the softmax, so the row costs ``O(D² + N·D)`` per head
  instead of the ``O(N·D²)`` key projection. BEiT's relative position bias row and
  ``q_bias``/``v_bias`` are honoured. The pass runs under ``torch.inference_mode``.
* **SmoothGrad samples of different images share chunks.** The ``B·n`` noisy copies are laid
  out image-major and cut into balanced chunks sized for the device (see ``auto_chunk_size``): a
  token target per device (mid-sized on CPU, large on GPU) capped by a memory budget, with the
  per-sample activation memory measured on the model. Per-image batches of ``n`` (what captum
  does) starve multi-threaded CPUs and GPUs; one batch of all ``B·n`` has no memory bound.
* **The last block runs on the prefix rows only** in the gradient passes of token-pooled timm
  ViTs (ViT, DINO, DeiT, distilled DeiT, registers): the logits read nothing else, so queries,
  projection and MLP of the patch rows of the last block are skipped (keys/values still see
  every token). BEiT mean-pools the patches, so it runs the full model.
* **Gradients only w.r.t. the input.** Parameters' ``requires_grad`` is switched off for the
  duration (restored in ``finally``), so autograd neither saves weight-grad inputs nor computes
  weight gradients; the attribution is pooled to patches per chunk, so nothing pixel-sized and
  ``B·n``-sized is ever held.
* **Noise.** The default ``noise="gaussian"`` follows the SmoothGrad noise-stream contract of
  ``ARCHITECTURE.md`` bit for bit (per-image CPU generators seeded from
  ``randint(0, 2**62, (B,), generator)``), so the result equals ``iavutils.smoothgrad`` +
  ``ia_score`` up to float summation order, whatever the chunking. ``"antithetic"`` (pairs
  ``±ε``) and ``"quasi"`` (randomly shifted scrambled Sobol points mapped through the inverse
  normal CDF) are explicit, non-default variance-reduction modes.

Options for accelerators: ``autocast=torch.bfloat16`` (scores stay within
``BF16_TOLERANCE`` of fp32 — checked by ``autocast_deviation``) and ``compile=True``
(``torch.compile`` of the gradient-pass forward; the clean pass stays eager because of its hooks),
and ``num_threads`` for CPUs (on an oversubscribed, shared CPU one intra-op thread per process
avoids OpenMP barrier stalls; measured 2-7x faster than two threads on the project machine).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attribution import check_target, noise_seeds, resolve_target
from .hooks import ModelGeometry, check_dtype_device, check_grad_mode, check_input, eval_mode, model_geometry
from .scores import cls_attention, ia_score

__all__ = [
    "BF16_TOLERANCE",
    "ChunkPlan",
    "NOISE_MODES",
    "auto_chunk_size",
    "autocast_deviation",
    "cls_rows_from_block_input",
    "engine_cls_attention",
    "image_seed",
    "iav_dataset",
    "iav_fast",
    "saved_bytes_per_sample",
    "smoothgrad_fast",
]

NoiseMode = Literal["gaussian", "antithetic", "quasi"]
NOISE_MODES: tuple[str, ...] = ("gaussian", "antithetic", "quasi")

# Largest |Δ IA-Score| we accept between bf16 autocast and fp32 (stated in the docs, checked by
# ``autocast_deviation`` and the benchmark). bf16 keeps 8 mantissa bits (~0.4 % relative); a
# cosine of two 64..196-long non-negative vectors moves by far less than that in practice.
BF16_TOLERANCE = 0.02

# Tokens per gradient chunk. CPU: keeps the working set in cache — measured on the project's
# 2-core CPU with tiny-dino (65 tokens): 64-sample chunks ran ~10-15 % faster than 128 and
# 256, and far faster than one batch of all B·n (see benchmarks/README.md). CUDA: large enough
# to saturate a datacentre GPU (not measured here). The memory budget caps both.
_TARGET_TOKENS = {"cpu": 4096, "cuda": 65536}

_SOBOL_MAXDIM = torch.quasirandom.SobolEngine.MAXDIM


# --------------------------------------------------------------------------------------------
# geometry


def _geometry(model: nn.Module) -> ModelGeometry:
    """Reads the token layout from the model (never hard-coded); raises for unsupported models."""
    return model_geometry(model)


def _blocks(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise TypeError(f"{type(model).__name__} has no `blocks`; expected a timm ViT/DeiT/BEiT")
    return list(blocks)


# --------------------------------------------------------------------------------------------
# CLS attention rows without materialising N×N attention


def _supports_cls_tap(attn: nn.Module) -> bool:
    qkv = getattr(attn, "qkv", None)
    return (
        isinstance(qkv, nn.Linear)
        and hasattr(attn, "num_heads")
        and hasattr(attn, "scale")
        # attention variants with rotary embeddings / grouped KV / separate projections are not
        # the timm ViT/BEiT layout this shortcut is derived for
        and not hasattr(attn, "rope")
        and qkv.out_features % 3 == 0
    )


def cls_rows_from_block_input(
    attn: nn.Module,
    x: Tensor,
    num_prefix_tokens: int,
    shared_rel_pos_bias: Tensor | None = None,
) -> Tensor:
    """The class token's attention row over the patches, from an attention module's input.

    Equals ``softmax(q kᵀ·scale + bias)[:, :, 0, T:]`` of a timm ``Attention`` (ViT, DeiT,
    registers) or BEiT ``Attention`` (q/v bias, relative position bias, shared bias) without
    forming the ``N×N`` map or the full key projection (unless the module normalises keys).

    Args:
        attn: the block's attention module (``block.attn``).
        x: its input, the ``norm1`` output, ``[B,N,D]``.
        num_prefix_tokens: ``T``; the row is returned over tokens ``T..N-1``.
        shared_rel_pos_bias: BEiT's model-level relative position bias ``[1|B,H,N,N]`` if used.

    Returns:
        ``[B,H,P]`` attention probabilities of token 0 over the patch tokens.
    """
    B, N, D = x.shape
    H = int(attn.num_heads)
    weight = attn.qkv.weight  # [3A, D]
    A = weight.shape[0] // 3
    dh = A // H
    w_q, w_k = weight[:A], weight[A : 2 * A]
    q_bias = getattr(attn, "q_bias", None)
    if q_bias is None and attn.qkv.bias is not None:
        q_bias = attn.qkv.bias[:A]
    k_bias = getattr(attn, "k_bias", None) if hasattr(attn, "q_bias") else None
    if k_bias is None and not hasattr(attn, "q_bias") and attn.qkv.bias is not None:
        k_bias = attn.qkv.bias[A : 2 * A]

    q0 = F.linear(x[:, 0], w_q, q_bias).view(B, H, dh)
    q_norm = getattr(attn, "q_norm", None)
    if q_norm is not None and not isinstance(q_norm, nn.Identity):
        q0 = q_norm(q0)
    k_norm = getattr(attn, "k_norm", None)
    if k_norm is not None and not isinstance(k_norm, nn.Identity):
        # a non-linear key norm rules out folding W_k into q₀: project the keys
        k = k_norm(F.linear(x, w_k, k_bias).view(B, N, H, dh))
        logits = torch.einsum("bhd,bnhd->bhn", q0, k)
    else:
        # q₀·(W_k x + b_k) = (W_kᵀ q₀)·x + q₀·b_k; the last term is constant over keys and
        # cancels in the softmax
        u = torch.einsum("bhd,hdc->bhc", q0, w_k.view(H, dh, D))
        logits = torch.einsum("bhc,bnc->bhn", u, x)
    logits = logits * attn.scale
    table = getattr(attn, "relative_position_bias_table", None)
    if table is not None:
        logits = logits + attn._get_rel_pos_bias()[..., 0, :]
    if shared_rel_pos_bias is not None:
        logits = logits + shared_rel_pos_bias[..., 0, :]
    return logits.float().softmax(dim=-1)[:, :, num_prefix_tokens:]


class _ClsRowTap:
    """Forward pre-hooks that compute each block's CLS row from the attention input.

    Use as a context manager; hooks are removed on exit, also after an exception.
    """

    def __init__(self, model: nn.Module, num_prefix_tokens: int) -> None:
        self.attns = [blk.attn for blk in _blocks(model)]
        for a in self.attns:
            if not _supports_cls_tap(a):
                raise NotImplementedError(f"CLS-row tap does not support {type(a).__name__}")
        self.num_prefix_tokens = num_prefix_tokens
        self.rows: list[Tensor] = []
        self._handles: list[Any] = []

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if kwargs.get("attn_mask") is not None or kwargs.get("is_causal"):
            raise NotImplementedError("masked/causal attention is not supported by the CLS tap")
        shared = kwargs.get("shared_rel_pos_bias", args[1] if len(args) > 1 else None)
        self.rows.append(cls_rows_from_block_input(module, args[0], self.num_prefix_tokens, shared))

    def __enter__(self) -> _ClsRowTap:
        self.rows = []
        try:
            for a in self.attns:
                self._handles.append(a.register_forward_pre_hook(self._hook, with_kwargs=True))
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

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


def engine_cls_attention(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Clean forward (inference mode) giving logits and the CLS rows of every block.

    Args:
        model: timm ViT / DeiT (distilled) / BEiT in eval mode.
        x: ``[B,3,H,W]`` model-normalised images.

    Returns:
        ``(logits [B,C], cls_attn [B,L,H,P])``.
    """
    geo = _geometry(model)
    check_dtype_device(model, x)
    with eval_mode(model), torch.inference_mode(), _ClsRowTap(model, geo.num_prefix_tokens) as tap:
        logits = model(x)
        rows = tap.pop()
    return logits, rows


# --------------------------------------------------------------------------------------------
# switches, restored on exit


@contextlib.contextmanager
def _frozen_params(model: nn.Module) -> Iterator[None]:
    # no weight gradients: autograd then saves nothing for them and skips their backward
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def _autocast_ctx(device: torch.device, dtype: torch.dtype | str | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    if isinstance(dtype, str):
        dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16}[dtype]
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def _threads(num_threads: int | None) -> Iterator[None]:
    # intra-op threads for CPU passes; on an oversubscribed (shared) CPU one thread per process
    # avoids OpenMP barrier stalls — measured up to ~4x faster here (benchmarks/README.md)
    if not num_threads:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(saved)


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _forward_fn(model: nn.Module, compile: bool | str) -> Callable[[Tensor], Tensor]:
    base: Callable[[Tensor], Tensor] = model
    if _can_trim_last_block(model):
        base = functools.partial(_prefix_only_forward, model)
    if not compile:
        return base
    backend = "inductor" if compile is True else str(compile)
    per_model = _COMPILED.setdefault(model, {})
    fn = per_model.get(backend)
    if fn is None:
        # static shapes: the chunk plan produces at most two distinct chunk sizes
        fn = torch.compile(base, dynamic=False, backend=backend)
        per_model[backend] = fn
    return fn


def _can_trim_last_block(model: nn.Module) -> bool:
    """True for timm ViTs whose logits read only the prefix tokens of the last block.

    With ``global_pool="token"`` (ViT, DINO, DeiT, registers) or the distilled head, the logits
    depend on the last block's output at the prefix tokens only, so its attention needs queries
    for those rows alone and its MLP runs on ``T`` tokens instead of ``N``. Only the unmodified
    timm classes qualify (a subclass may override any of these methods).
    """
    try:
        from timm.layers import Attention as TimmAttention
        from timm.models.deit import VisionTransformerDistilled
        from timm.models.vision_transformer import Block, VisionTransformer
    except ImportError:  # pragma: no cover
        return False
    if type(model) not in (VisionTransformer, VisionTransformerDistilled):
        return False
    if getattr(model, "global_pool", None) != "token" or getattr(model, "attn_pool", None) is not None:
        return False
    if getattr(model, "grad_checkpointing", False):
        return False
    blk = model.blocks[-1]
    return type(blk) is Block and type(blk.attn) is TimmAttention


def _prefix_only_forward(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)`` for a ``_can_trim_last_block`` model, computing the last block on prefix rows."""
    T = model.num_prefix_tokens
    h = model.patch_embed(x)
    h = model._pos_embed(h)
    h = model.patch_drop(h)
    h = model.norm_pre(h)
    blocks = model.blocks
    for blk in blocks[:-1]:
        h = blk(h)
    blk = blocks[-1]
    a = blk.attn
    B, N, D = h.shape
    H, dh, A = a.num_heads, a.head_dim, a.attn_dim
    n1 = blk.norm1(h)
    w, b = a.qkv.weight, a.qkv.bias
    q = F.linear(n1[:, :T], w[:A], None if b is None else b[:A]).view(B, T, H, dh).transpose(1, 2)
    kv = F.linear(n1, w[A:], None if b is None else b[A:]).view(B, N, 2, H, dh).permute(2, 0, 3, 1, 4)
    k, v = kv.unbind(0)
    q, k = a.q_norm(q), a.k_norm(k)
    o = F.scaled_dot_product_attention(q, k, v)  # [B,H,T,dh]; same maths as the fused path
    o = a.norm(o.transpose(1, 2).reshape(B, T, A))
    if a.gate is not None:
        o = o * a.gate(n1[:, :T]).sigmoid()
    o = a.proj(o)
    y = h[:, :T] + blk.drop_path1(blk.ls1(o))
    y = y + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(y))))
    return model.forward_head(model.norm(y))


# --------------------------------------------------------------------------------------------
# noise streams


class _NoiseStream:
    """Standard-normal noise for sample ``k`` of image ``b``, generated lazily per image.

    ``gaussian``: the ``k``-th ``randn(3,H,W)`` draw of a CPU generator seeded with ``seeds[b]``.
    ``antithetic``: even ``k`` draw from that stream, odd ``k`` reuse ``-ε_{k-1}``.
    ``quasi``: ``n`` points of a scrambled Sobol sequence, randomly shifted per image (shift
    seeded from ``seeds[b]``), through ``Φ⁻¹``; inputs with more than ``SobolEngine.MAXDIM``
    values use independently scrambled blocks of dimensions.
    Draws must be requested in increasing ``k`` per image (the engine's image-major order).
    """

    def __init__(self, seeds: Tensor, shape: tuple[int, ...], n: int, mode: str) -> None:
        if mode not in NOISE_MODES:
            raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")
        self.seeds = [int(s) for s in seeds.tolist()]
        self.shape = shape
        self.n = n
        self.mode = mode
        self._state: dict[int, Any] = {}
        self._next: dict[int, int] = {}

    def take(self, b: int, k: int) -> Tensor:
        expected = self._next.get(b, 0)
        if k != expected:
            raise RuntimeError(f"noise for image {b} requested out of order ({k} != {expected})")
        self._next[b] = k + 1
        if self.mode == "gaussian":
            g = self._state.get(b)
            if g is None:
                g = self._state[b] = torch.Generator().manual_seed(self.seeds[b])
            eps = torch.randn(self.shape, generator=g)
        elif self.mode == "antithetic":
            if k % 2 == 0:
                g = self._state.get(b)
                if g is None:
                    g = self._state[b] = [torch.Generator().manual_seed(self.seeds[b]), None]
                g[1] = torch.randn(self.shape, generator=g[0])
                eps = g[1]
            else:
                eps = -self._state[b][1]
        else:
            pts = self._state.get(b)
            if pts is None:
                pts = self._state[b] = _sobol_normals(self.seeds[b], self.n, self.shape)
            eps = pts[k]
        if k == self.n - 1:
            self._state.pop(b, None)  # free the image's state as soon as its samples are done
        return eps


@functools.lru_cache(maxsize=8)
def _sobol_base(n: int, dim: int) -> Tensor:
    """The first ``n`` points of one fixed scrambled Sobol sequence in ``dim`` dimensions.

    Scrambling costs ~1 s per 3 000 dimensions, so it is done once per shape and every image
    gets its own random shift instead (see ``_sobol_normals``). Prefixes of the cached points
    are the points of a shorter run, so ``n`` and ``n' < n`` agree on the first ``n'``.
    """
    blocks = math.ceil(dim / _SOBOL_MAXDIM)
    width = math.ceil(dim / blocks)
    parts = []
    for i in range(blocks):
        d = min(width, dim - i * width)
        parts.append(torch.quasirandom.SobolEngine(d, scramble=True, seed=i).draw(n, dtype=torch.float64))
    return torch.cat(parts, dim=1)


def _sobol_normals(seed: int, n: int, shape: tuple[int, ...]) -> Tensor:
    """``n`` quasi-random standard normal tensors of ``shape`` for one image.

    Randomised QMC by a Cranley–Patterson rotation: ``u = frac(sobol + U)`` with ``U`` uniform
    per dimension drawn from a CPU generator seeded with ``seed``, so every ``u`` is uniform
    (the estimate stays unbiased) and images are independent; then ``z = Φ⁻¹(u)``. Inputs with
    more than ``SobolEngine.MAXDIM`` values use independently scrambled blocks of dimensions.
    """
    dim = math.prod(shape)
    # the cached base is computed for at least 64 points so short runs share it with long ones
    base = _sobol_base(max(64, 1 << max(0, n - 1).bit_length()), dim)[:n]
    shift = torch.rand(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u = torch.remainder(base + shift, 1.0)
    # a shifted point can land exactly on 0; keep the inverse CDF finite
    u = u.clamp(1e-12, 1 - 1e-12)
    z = math.sqrt(2.0) * torch.special.erfinv(2.0 * u - 1.0)
    return z.to(torch.float32).view(n, *shape)


# --------------------------------------------------------------------------------------------
# chunk size


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
    with eval_mode(model), _frozen_params(model), torch.enable_grad(), _autocast_ctx(device, autocast):
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
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    budget = int(memory_budget) if memory_budget is not None else _default_budget(device)
    per = saved_bytes_per_sample(model, image_shape, device, autocast)
    geo = _geometry(model)
    tokens = geo.num_prefix_tokens + geo.grid[0] * geo.grid[1]
    target = _TARGET_TOKENS.get(device.type, _TARGET_TOKENS["cuda"])
    chunk = max(1, min(max(1, target // tokens), budget // max(per, 1)))
    if total is not None:
        chunk = max(1, min(chunk, total))
    sizes = _balanced(total, chunk) if total is not None else ()
    return ChunkPlan(chunk_size=chunk, sizes=sizes, bytes_per_sample=per, memory_budget=budget)


def _resolve_plan(
    model: nn.Module,
    image_shape: Sequence[int],
    total: int,
    device: torch.device,
    chunk_size: int | str | None,
    memory_budget: int | None,
    autocast: Any,
) -> ChunkPlan:
    if chunk_size in (None, "auto"):
        return auto_chunk_size(model, image_shape, total, device, memory_budget, autocast)
    chunk = max(1, min(int(chunk_size), max(total, 1)))
    return ChunkPlan(chunk, _balanced(total, chunk), 0, int(memory_budget or 0))


# --------------------------------------------------------------------------------------------
# SmoothGrad


def smoothgrad_fast(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    n_samples: int = 25,
    noise_level: float = 0.15,
    generator: torch.Generator | None = None,
    *,
    seeds: Tensor | None = None,
    noise: str = "gaussian",
    chunk_size: int | str | None = "auto",
    memory_budget: int | None = None,
    autocast: Any = None,
    compile: bool | str = False,
    grid: tuple[int, int] | None = None,
    checkpoints: Sequence[int] | None = None,
    return_pixels: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """SmoothGrad of ``target`` logits, chunked across images, optionally pooled to patches.

    Args:
        model: the ViT (left in the train/eval mode and ``requires_grad`` state it came in).
        x: ``[B,3,H,W]`` model-normalised images.
        target: ``[B]`` long class indices.
        n_samples: noisy copies per image.
        noise_level: ``σ_b = noise_level·(max(x_b) − min(x_b))``; 0 gives the plain gradient.
        generator: draws the per-image seeds (contract of ``ARCHITECTURE.md``).
        seeds: ``[B]`` per-image seeds, overriding ``generator`` (used by sweeps so that the
            noise of an image depends only on its dataset index).
        noise: ``"gaussian"`` (default, the reference stream), ``"antithetic"`` or ``"quasi"``.
        chunk_size: samples per gradient chunk, or ``"auto"`` (``auto_chunk_size``).
        memory_budget: bytes for ``"auto"``.
        autocast: e.g. ``torch.bfloat16`` to run the passes under autocast.
        compile: ``torch.compile`` the forward used by the gradient passes (``True`` = inductor,
            or a backend name such as ``"eager"``). Compilation is cached per model; on CPU it
            took minutes here for ~15 % gain, so it pays only for long sweeps.
        grid: patch grid for pooling; defaults to the model's.
        checkpoints: sample counts (each ≤ ``n_samples``) at which to also report the running
            mean — the estimate that ``n=k`` would give (prefixes of every noise mode are valid
            samples of that mode), for convergence studies.
        return_pixels: also return the ``[B,H,W]`` pixel attribution.
        progress: tqdm over chunks.

    Returns:
        dict with ``patches`` ``[B,P]``, optionally ``pixels`` ``[B,H,W]``, ``checkpoints``
        ``{k: [B,P]}`` and the ``plan`` used.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    check_input(model, x)
    check_grad_mode("smoothgrad_fast")
    B, C_in, Hh, Ww = x.shape
    device = x.device
    grid = grid or _geometry(model).grid
    spec = check_target(target, B)
    if spec is None:
        raise ValueError(
            "smoothgrad_fast needs explicit target classes (an int or an integer [B] tensor); "
            "iav_fast(target=None) uses the predicted class"
        )
    target = torch.full((B,), spec, dtype=torch.long, device=device) if isinstance(spec, int) else spec.to(device)
    ph, pw = Hh // grid[0], Ww // grid[1]
    seeds = noise_seeds(B, generator) if seeds is None else torch.as_tensor(seeds, dtype=torch.long)
    if seeds.numel() != B:
        raise ValueError("need one seed per image")
    xd = x.detach()
    sigma = noise_level * (xd.flatten(1).amax(1) - xd.flatten(1).amin(1))  # [B]
    total = B * n_samples
    plan = _resolve_plan(model, (C_in, Hh, Ww), total, device, chunk_size, memory_budget, autocast)
    stream = _NoiseStream(seeds, (C_in, Hh, Ww), n_samples, noise)
    marks = sorted(set(int(k) for k in (checkpoints or ()) if 0 < int(k) <= n_samples))

    P = grid[0] * grid[1]
    acc = torch.zeros(B, P, dtype=torch.float32, device=device)
    acc_pix = torch.zeros(B, Hh, Ww, dtype=torch.float32, device=device) if return_pixels else None
    snaps: dict[int, Tensor] = {}
    if marks:
        # running sums per checkpoint: sample k contributes to every mark > k
        mark_t = torch.tensor(marks, device=device)
        snap_acc = torch.zeros(len(marks), B, P, dtype=torch.float32, device=device)

    fwd = _forward_fn(model, compile)
    it = range(len(plan.sizes))
    if progress:
        from .progress import tqdm  # one progress helper: widgets, terminal, or the book runner

        it = tqdm(it, desc="smoothgrad chunks", leave=False)
    start = 0
    with eval_mode(model), _frozen_params(model):
        for ci in it:
            size = plan.sizes[ci]
            flat = torch.arange(start, start + size)
            start += size
            img = flat // n_samples
            smp = flat % n_samples
            eps = torch.stack([stream.take(int(b), int(k)) for b, k in zip(img.tolist(), smp.tolist())])
            img_d = img.to(device)
            xs = xd[img_d] + sigma[img_d].view(-1, 1, 1, 1) * eps.to(device)
            xs.requires_grad_(True)
            tgt = target[img_d]
            with torch.enable_grad():
                with _autocast_ctx(device, autocast):
                    logits = fwd(xs)
                sel = logits.float().gather(1, tgt[:, None]).sum()
                (g,) = torch.autograd.grad(sel, xs)
            a = g.float().abs().mean(dim=1)  # [C,H,W], channel mean of |∂f/∂x|
            pooled = F.avg_pool2d(a[:, None], kernel_size=(ph, pw)).flatten(1)  # [C,P]
            acc.index_add_(0, img_d, pooled)
            if acc_pix is not None:
                acc_pix.index_add_(0, img_d, a)
            if marks:
                smp_d = smp.to(device)
                for mi in range(len(marks)):
                    sel_m = smp_d < mark_t[mi]
                    if bool(sel_m.any()):
                        snap_acc[mi].index_add_(0, img_d[sel_m], pooled[sel_m])
            del g, a, xs, logits, eps
    out: dict[str, Any] = {"patches": acc / n_samples, "plan": plan, "seeds": seeds}
    if acc_pix is not None:
        out["pixels"] = acc_pix / n_samples
    if marks:
        out["checkpoints"] = {k: snap_acc[i] / k for i, k in enumerate(marks)}
    return out


# --------------------------------------------------------------------------------------------
# IA-Scores


def iav_fast(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    n_samples: int = 25,
    noise_level: float = 0.15,
    generator: torch.Generator | None = None,
    chunk_size: int | str | None = "auto",
    memory_budget: int | None = None,
    autocast: Any = None,
    compile: bool | str = False,
    *,
    seeds: Tensor | None = None,
    noise: str = "gaussian",
    num_threads: int | None = None,
    return_details: bool = False,
    progress: bool = False,
) -> Tensor | dict[str, Any]:
    """IAV of a batch: IA-Scores of every block and head (the fast path of ``iavutils.iav``).

    With ``noise="gaussian"`` and the same ``generator`` state this equals
    ``iavutils.iav(model, x, target, n_samples=..., noise_level=..., generator=...)`` up to float
    summation order (chunking changes only which samples share a matmul).

    Args:
        model: timm ``VisionTransformer`` / ``VisionTransformerDistilled`` / ``Beit``.
        x: ``[B,3,H,W]`` model-normalised images.
        target: ``None`` (predicted class), an int, or a ``[B]`` long tensor.
        n_samples: SmoothGrad samples per image.
        noise_level: SmoothGrad σ as a fraction of each image's value range.
        generator: CPU generator for the per-image seeds (``None``: torch's global RNG).
        chunk_size: samples per gradient chunk or ``"auto"``.
        memory_budget: bytes for the ``"auto"`` chunk (see ``auto_chunk_size``).
        autocast: autocast dtype (``torch.bfloat16`` on GPU); ``None`` = fp32.
        compile: ``torch.compile`` the gradient-pass forward (``True`` or a backend name).
        seeds: explicit ``[B]`` per-image seeds (overrides ``generator``).
        noise: ``"gaussian"`` | ``"antithetic"`` | ``"quasi"``.
        num_threads: CPU intra-op threads for this call (``torch.set_num_threads``, restored
            afterwards); ``None`` keeps the current setting.
        return_details: return a dict with ``iav``, ``target``, ``logits``, ``cls_attention``,
            ``attribution`` (``[B,P]``) and ``plan`` instead of the tensor.
        progress: tqdm over gradient chunks.

    Returns:
        ``[B,L,H]`` IA-Scores (or the dict above).
    """
    geo = _geometry(model)
    check_input(model, x)
    check_grad_mode("iav_fast")
    check_target(target, x.shape[0])
    device = x.device
    with _threads(num_threads):
        with _autocast_ctx(device, autocast):
            logits, rows = _clean_pass(model, x, geo)
        tgt = resolve_target(target, logits)
        sg = smoothgrad_fast(
            model, x, tgt, n_samples, noise_level, generator, seeds=seeds, noise=noise,
            chunk_size=chunk_size, memory_budget=memory_budget, autocast=autocast, compile=compile,
            grid=geo.grid, progress=progress,
        )
    scores = ia_score(sg["patches"], rows)
    if not return_details:
        return scores
    return {
        "iav": scores, "target": tgt, "logits": logits, "cls_attention": rows,
        "attribution": sg["patches"], "plan": sg["plan"], "seeds": sg["seeds"],
    }


def _clean_pass(model: nn.Module, x: Tensor, geo: ModelGeometry) -> tuple[Tensor, Tensor]:
    attns = [blk.attn for blk in _blocks(model)]
    if all(_supports_cls_tap(a) for a in attns):
        return engine_cls_attention(model, x)
    # unknown attention module: fall back to the reference recorder (unfused, full maps)
    from .hooks import record_attention

    with torch.inference_mode():
        logits, attn = record_attention(model, x)
    return logits, cls_attention(attn, geo.num_prefix_tokens)


# --------------------------------------------------------------------------------------------
# datasets


def image_seed(base_seed: int, index: int) -> int:
    """Seed of the image at dataset ``index``: depends only on ``(base_seed, index)``.

    ``(base_seed << 32) + index`` keeps different base seeds from sharing streams for any
    dataset below 2³² images.
    """
    return ((int(base_seed) << 32) + int(index)) % (2**62)


def _item(ds: Any, i: int) -> tuple[Tensor, int | None]:
    item = ds[i]
    if isinstance(item, (tuple, list)):
        x = item[0]
        y = item[1] if len(item) > 1 else None
    else:
        x, y = item, None
    return torch.as_tensor(x), (None if y is None else int(y))


def _iter_batches(
    dataset_or_loader: Any, indices: Sequence[int] | None, group: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yields ``(x [G,3,H,W], y [G] (-1 = none), idx [G])`` groups in index order."""
    if isinstance(dataset_or_loader, torch.utils.data.DataLoader):
        pos = 0
        for batch in dataset_or_loader:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            y = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
            n = x.shape[0]
            idx = torch.arange(pos, pos + n)
            pos += n
            y = torch.full((n,), -1, dtype=torch.long) if y is None else torch.as_tensor(y).long()
            if indices is not None:
                keep = torch.isin(idx, torch.as_tensor(list(indices)))
                x, y, idx = x[keep], y[keep], idx[keep]
            if len(idx):
                yield x, y, idx
        return
    ds = dataset_or_loader
    idx_all = list(range(len(ds))) if indices is None else [int(i) for i in indices]
    for s in range(0, len(idx_all), group):
        ids = idx_all[s : s + group]
        items = [_item(ds, i) for i in ids]
        x = torch.stack([it[0] for it in items])
        y = torch.tensor([-1 if it[1] is None else it[1] for it in items], dtype=torch.long)
        yield x, y, torch.tensor(ids, dtype=torch.long)


def iav_dataset(
    model: nn.Module,
    dataset_or_loader: Any,
    *,
    indices: Sequence[int] | None = None,
    num_images: int | None = None,
    target: Literal["pred", "predicted", "label"] = "pred",
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    noise: str = "gaussian",
    chunk_size: int | str | None = "auto",
    memory_budget: int | None = None,
    autocast: Any = None,
    compile: bool | str = False,
    device: torch.device | str | None = None,
    images_per_call: int | None = None,
    num_threads: int | None = None,
    keep_cls_attention: bool = False,
    progress: bool = True,
) -> dict[str, Tensor]:
    """IAVs of a whole dataset (or the listed indices), for sweeps.

    The noise of the image at dataset index ``i`` is seeded by ``image_seed(seed, i)``, so the
    result of an image does not depend on which other images share its batch or process
    (``iavutils.analysis.distributed`` relies on this).

    Args:
        model: the ViT (moved to ``device`` by the caller).
        dataset_or_loader: a map-style dataset returning ``(x, y, ...)`` or ``x``, or a
            non-shuffling ``DataLoader`` (indices are then positions in iteration order).
        indices: dataset indices to process (default: all, or the first ``num_images``).
        num_images: cap on the number of images.
        target: ``"pred"`` / ``"predicted"`` (predicted class, the paper's ``ŷ``) or ``"label"``.
        n_samples, noise_level, noise, chunk_size, memory_budget, autocast, compile: as
            ``iav_fast``.
        seed: base seed.
        device: where to compute; default the model's device.
        images_per_call: images handed to one engine call (default: enough for ~4 chunks).
        num_threads: CPU threads for the engine calls (restored afterwards).
        keep_cls_attention: also return the ``[N,L,H,P]`` CLS rows (large for big sweeps).
        progress: tqdm over images.

    Returns:
        dict with ``iav [N,L,H]``, ``targets [N]``, ``preds [N]``, ``labels [N]`` (-1 if the
        dataset has none), ``indices [N]``, ``seeds [N]``, ``cls_attention [N,L,H,P]``,
        ``attribution [N,P]``.
    """
    if target not in ("pred", "predicted", "label"):
        raise ValueError(f"target must be 'pred' (alias 'predicted': the predicted class) or 'label', got {target!r}")
    check_grad_mode("iav_dataset")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if indices is None and num_images is not None and not isinstance(dataset_or_loader, torch.utils.data.DataLoader):
        indices = range(min(num_images, len(dataset_or_loader)))
    elif indices is not None and num_images is not None:
        indices = list(indices)[:num_images]
    if images_per_call is None:
        probe_x = None
        if not isinstance(dataset_or_loader, torch.utils.data.DataLoader):
            first = (list(indices)[0] if indices is not None else 0)
            probe_x = _item(dataset_or_loader, first)[0]
        if probe_x is not None:
            plan = auto_chunk_size(model, tuple(probe_x.shape), None, device, memory_budget, autocast)
            images_per_call = max(1, (4 * plan.chunk_size) // max(n_samples, 1))
        else:
            images_per_call = 32
    total = len(indices) if indices is not None else (
        len(dataset_or_loader.dataset) if isinstance(dataset_or_loader, torch.utils.data.DataLoader) else len(dataset_or_loader)
    )
    if num_images is not None:
        total = min(total, num_images)
    bar = None
    if progress:
        from .progress import tqdm  # one progress helper: widgets, terminal, or the book runner

        bar = tqdm(total=total, desc="IAV", unit="img")
    keys = ["iav", "targets", "preds", "labels", "indices", "seeds", "attribution"]
    outs: dict[str, list[Tensor]] = {k: [] for k in keys + (["cls_attention"] if keep_cls_attention else [])}
    done = 0
    try:
        for xb, yb, ib in _iter_batches(dataset_or_loader, indices, images_per_call):
            if num_images is not None and done >= num_images:
                break
            if num_images is not None and done + len(ib) > num_images:
                keep = num_images - done
                xb, yb, ib = xb[:keep], yb[:keep], ib[:keep]
            xb = xb.to(device)
            seeds = torch.tensor([image_seed(seed, int(i)) for i in ib], dtype=torch.long)
            tgt = None
            if target == "label":
                if bool((yb < 0).any()):
                    raise ValueError("target='label' needs labelled items")
                tgt = yb.to(device)

            det = iav_fast(
                model, xb, tgt, n_samples, noise_level, None, chunk_size, memory_budget, autocast, compile,
                seeds=seeds, noise=noise, num_threads=num_threads, return_details=True,
            )
            outs["iav"].append(det["iav"].cpu())
            outs["targets"].append(det["target"].cpu())
            outs["preds"].append(det["logits"].argmax(-1).cpu())
            outs["labels"].append(yb.cpu())
            outs["indices"].append(ib.cpu())
            outs["seeds"].append(seeds)
            if keep_cls_attention:
                outs["cls_attention"].append(det["cls_attention"].float().cpu())
            outs["attribution"].append(det["attribution"].cpu())
            done += len(ib)
            if bar is not None:
                bar.update(len(ib))
    finally:
        if bar is not None:
            bar.close()
    if not outs["iav"]:
        raise ValueError("no images to process")
    return {k: torch.cat(v) for k, v in outs.items()}


# --------------------------------------------------------------------------------------------
# bf16 check


def autocast_deviation(
    model: nn.Module,
    x: Tensor,
    dtype: torch.dtype = torch.bfloat16,
    n_samples: int = 8,
    noise_level: float = 0.15,
    seed: int = 0,
) -> float:
    """Max |IA-Score(autocast) − IA-Score(fp32)| on the same noise (compare with ``BF16_TOLERANCE``)."""
    ref = iav_fast(model, x, None, n_samples, noise_level, torch.Generator().manual_seed(seed), return_details=True)
    low = iav_fast(
        model, x, ref["target"], n_samples, noise_level, torch.Generator().manual_seed(seed), autocast=dtype
    )
    return float((low.float() - ref["iav"]).abs().nan_to_num(0.0).max())
