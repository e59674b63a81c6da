"""Input attributions: SmoothGrad (and plain saliency), GradCAM for ViTs, patch pooling.

:func:`smoothgrad` is the one SmoothGrad implementation, built for throughput without changing
the numbers (why each step is safe):

* **Samples of different images share chunks** (:mod:`iavutils.core.chunking`): the ``B·n``
  noisy copies are laid out image-major and cut into balanced chunks sized for the device.
* **The last block runs on the prefix rows only** for token-pooled timm ViTs
  (:mod:`iavutils.core.forward`).
* **Gradients only w.r.t. the input.** Parameters' ``requires_grad`` is switched off for the
  duration (:func:`~iavutils.core.hooks.frozen_params`), so autograd neither saves weight-grad
  inputs nor computes weight gradients; the attribution is pooled to patches per chunk, so
  nothing pixel-sized and ``B·n``-sized is ever held.
* **Noise** comes from :class:`~iavutils.core.noise.NoiseStream`: ``"gaussian"`` (default) follows
  the SmoothGrad noise-stream contract of ``ARCHITECTURE.md`` bit for bit, so the result does
  not depend on the chunking beyond float summation order.

Gradients come from ``torch.autograd.grad`` only (parameters' ``.grad`` is never touched);
the model runs in eval mode and every module's train/eval flag is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .chunking import resolve_plan
from .forward import gradient_forward
from .geometry import UnsupportedModelError, check_grad_mode, check_input, grad_input, model_geometry
from .hooks import autocast as autocast_ctx
from .hooks import eval_mode, frozen_params, record_output
from .noise import NoiseStream, noise_seeds, noise_stream
from .spec import AnalysisSpec

__all__ = [
    "ENGINE_OPTIONS",
    "check_target",
    "gradcam",
    "noise_seeds",
    "noise_stream",
    "patch_pool",
    "resolve_target",
    "smoothgrad",
    "smoothgrad_passes",
]

# the defaults are declared once, in the analysis specification
_D = AnalysisSpec()


_TARGET_FORMS = "None or 'predicted' (the predicted class), an int class index, or an integer tensor of shape [B]"


def _describe(obj: object) -> str:
    if isinstance(obj, Tensor):
        return f"a {obj.dtype} tensor of shape {tuple(obj.shape)}"
    return f"{obj!r} ({type(obj).__name__})"


def check_target(target: object, batch_size: int | None = None) -> int | Tensor | None:
    """Validate a target specification, the one check every entry point shares.

    Accepted: ``None`` or ``"predicted"`` (the predicted class), an int (a Python or NumPy
    integer, not a bool), or integers in a tensor / array / list of shape ``[B]`` (a single
    element is broadcast over the batch). Floats and bools are rejected rather than cast: a
    silently truncated ``3.7`` or a ``True`` read as class 1 would explain the wrong class.

    Args:
        target: The specification.
        batch_size: ``B``, to check a tensor's length (``None``: not checked).

    Returns:
        ``None`` (predicted class), an ``int``, or a long tensor ``[B]`` (``[1]`` when
        ``batch_size`` is ``None`` and one element was given).

    Raises:
        TypeError: Not one of the accepted forms (float, bool, string other than
            ``"predicted"``, floating-point or bool tensor).
        ValueError: A tensor of the wrong shape.
    """
    import numbers

    import numpy as np

    if target is None:
        return None
    if isinstance(target, str):
        if target in ("predicted", "pred"):
            return None
        raise TypeError(
            f"target must be {_TARGET_FORMS}; got the string {target!r}. (Labels are passed as a "
            f"tensor of class indices; only dataset-level entry points take target='label'.)"
        )
    if isinstance(target, (bool, np.bool_)):
        raise TypeError(f"target must be {_TARGET_FORMS}; got the bool {target!r}, which is not a class index")
    if isinstance(target, numbers.Integral):
        return int(target)
    if isinstance(target, numbers.Number):
        raise TypeError(
            f"target must be {_TARGET_FORMS}; got {_describe(target)}. Class indices are integers; "
            f"convert it yourself (e.g. int(target)) if that is what you mean."
        )
    if isinstance(target, (list, tuple, np.ndarray)):
        try:
            target = torch.as_tensor(np.asarray(target))
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"target must be {_TARGET_FORMS}; got {_describe(target)} ({err})") from None
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be {_TARGET_FORMS}; got {_describe(target)}")
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise TypeError(
            f"target must be {_TARGET_FORMS}; got {_describe(target)}. Convert class indices with "
            f"target.long() (floating-point or bool targets are not cast silently)."
        )
    if target.dim() > 1:
        raise ValueError(f"target must be None, an int or a [B] tensor, got shape {tuple(target.shape)}")
    t = target.long().reshape(-1)
    if batch_size is not None:
        if t.numel() == 1 and batch_size != 1:
            t = t.expand(batch_size)
        if t.shape != (batch_size,):
            raise ValueError(f"target must be None, an int or a [B]={batch_size} tensor, got shape {tuple(target.shape)}")
    return t


def resolve_target(target: int | Tensor | None, logits: Tensor) -> Tensor:
    """Turn ``None`` (predicted class), an int or a ``[B]`` tensor into a ``[B]`` long tensor.

    The specification is checked by :func:`check_target` (floats and bools are rejected).

    Args:
        target: Class index specification.
        logits: Logits ``[B,C]`` of the clean images (used for ``None`` and range checks).

    Returns:
        Target classes ``[B]`` on ``logits.device``.

    Raises:
        TypeError: Not an accepted form (see :func:`check_target`).
        ValueError: Wrong shape or a class index out of range.
    """
    B, C = logits.shape
    spec = check_target(target, B)
    if spec is None:
        t = logits.detach().argmax(dim=1)
    elif isinstance(spec, int):
        t = torch.full((B,), spec, dtype=torch.long, device=logits.device)
    else:
        t = spec.to(logits.device)
    if (t < 0).any() or (t >= C).any():
        raise ValueError(f"target class out of range [0, {C}): {t.tolist()}")
    return t


#: The engine options :func:`smoothgrad` passes on to :func:`smoothgrad_passes`, where they are
#: declared with their defaults (the keyword-only arguments before ``grid``).
ENGINE_OPTIONS: tuple[str, ...] = ("seeds", "noise", "chunk_size", "memory_budget", "autocast", "compile")


def smoothgrad_passes(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    n_samples: int = _D.n_samples,
    noise_level: float = _D.noise_level,
    generator: torch.Generator | None = None,
    *,
    seeds: Tensor | None = None,
    noise: str = _D.noise,
    chunk_size: int | str | None = "auto",
    memory_budget: int | None = None,
    autocast: Any = None,
    compile: bool | str = False,
    grid: tuple[int, int] | None = None,
    checkpoints: Sequence[int] | None = None,
    return_pixels: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """SmoothGrad of ``target`` logits, chunked across images, pooled to patches per chunk.

    The engine behind :func:`smoothgrad` and :func:`~iavutils.core.scores.iav`, returning
    everything it can measure in one run.

    Args:
        model: the ViT (left in the train/eval mode and ``requires_grad`` state it came in);
            any classifier when only ``pixels`` are wanted (``return_pixels=True``, no
            ``checkpoints``).
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
        grid: patch grid for pooling; defaults to the model's (none for a non-ViT model).
        checkpoints: sample counts (each ≤ ``n_samples``) at which to also report the running
            mean — the estimate that ``n=k`` would give (prefixes of every noise mode are valid
            samples of that mode), for convergence studies.
        return_pixels: also return the ``[B,H,W]`` pixel attribution.
        progress: tqdm over chunks.

    Returns:
        dict with ``patches`` ``[B,P]`` (absent without a grid), optionally ``pixels``
        ``[B,H,W]``, ``checkpoints`` ``{k: [B,P]}``, the ``plan`` used and the ``seeds``.

    Raises:
        ValueError: Bad input, ``n_samples < 1``, ``noise_level < 0``, no explicit target, or
            a target class out of range.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    check_input(model, x)
    check_grad_mode("smoothgrad")
    B, C_in, Hh, Ww = x.shape
    device = x.device
    if grid is None:
        try:
            grid = model_geometry(model).grid
        except UnsupportedModelError:
            # any classifier has pixels; patches need a ViT's grid
            if not return_pixels or checkpoints:
                raise
    spec = check_target(target, B)
    if spec is None:
        raise ValueError(
            "smoothgrad_passes needs explicit target classes (an int or an integer [B] tensor); "
            "smoothgrad(target=None) and iav(target=None) use the predicted class"
        )
    target = torch.full((B,), spec, dtype=torch.long, device=device) if isinstance(spec, int) else spec.to(device)
    ph, pw = (Hh // grid[0], Ww // grid[1]) if grid is not None else (1, 1)
    seeds = noise_seeds(B, generator) if seeds is None else torch.as_tensor(seeds, dtype=torch.long)
    if seeds.numel() != B:
        raise ValueError("need one seed per image")
    xd = x.detach()
    sigma = noise_level * (xd.flatten(1).amax(1) - xd.flatten(1).amin(1))  # [B]
    total = B * n_samples
    plan = resolve_plan(model, (C_in, Hh, Ww), total, device, chunk_size, memory_budget, autocast)
    stream = NoiseStream(seeds, (C_in, Hh, Ww), n_samples, noise)
    marks = sorted(set(int(k) for k in (checkpoints or ()) if 0 < int(k) <= n_samples))

    P = grid[0] * grid[1] if grid is not None else 0
    acc = torch.zeros(B, P, dtype=torch.float32, device=device)
    acc_pix = torch.zeros(B, Hh, Ww, dtype=torch.float32, device=device) if return_pixels else None
    if marks:
        # running sums per checkpoint: sample k contributes to every mark > k
        mark_t = torch.tensor(marks, device=device)
        snap_acc = torch.zeros(len(marks), B, P, dtype=torch.float32, device=device)

    fwd = gradient_forward(model, compile)
    it = range(len(plan.sizes))
    if progress:
        from .progress import tqdm  # one progress helper: widgets, terminal, or the book runner

        it = tqdm(it, desc="smoothgrad chunks", leave=False)
    start = 0
    with eval_mode(model), frozen_params(model):
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
                with autocast_ctx(device, autocast):
                    logits = fwd(xs)
                if ci == 0:
                    _check_range(target, logits.shape[1])  # before gather, which would fail obscurely
                sel = logits.float().gather(1, tgt[:, None]).sum()
                (g,) = torch.autograd.grad(sel, xs)
            a = g.float().abs().mean(dim=1)  # [C,H,W], channel mean of |∂f/∂x|
            if grid is not None:
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
    out: dict[str, Any] = {"plan": plan, "seeds": seeds}
    if grid is not None:
        out["patches"] = acc / n_samples
    if acc_pix is not None:
        out["pixels"] = acc_pix / n_samples
    if marks:
        out["checkpoints"] = {k: snap_acc[i] / k for i, k in enumerate(marks)}
    return out

def _check_range(target: Tensor, num_classes: int) -> None:
    if bool(((target < 0) | (target >= num_classes)).any()):
        raise ValueError(f"target class out of range [0, {num_classes}): {target.tolist()}")


def smoothgrad(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None,
    n_samples: int = _D.n_samples,
    noise_level: float = _D.noise_level,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    *,
    progress: bool = False,
    **engine: Any,
) -> Tensor:
    """SmoothGrad attribution ``mean_k |d f^c(x + eps_k) / dx|``, averaged over channels.

    ``f^c`` is the target class *logit*. ``eps_k ~ N(0, sigma_b^2)`` with ``sigma_b =
    noise_level * (max(x_b) - min(x_b))`` per image, drawn from the noise stream of
    :func:`~iavutils.core.noise.noise_stream`. ``noise_level=0`` gives exactly the plain gradient
    (saliency), whatever ``n_samples``. The defaults ``n_samples=25, noise_level=0.15`` are the
    IAV author's own SmoothGrad convention; the IAV paper does not state them. The passes run
    chunked with input-only gradients (:func:`smoothgrad_passes`).

    Args:
        model: Any differentiable classifier ``[B,C,H,W] -> [B,classes]``.
        x: Model-normalised images ``[B,C,H,W]``; not modified.
        target: ``None`` (predicted class on the clean image), an int or a ``[B]`` tensor.
        n_samples: Noisy copies per image.
        noise_level: Noise standard deviation as a fraction of each image's value range.
        generator: CPU generator for the noise seeds (``None``: torch's global RNG).
        batch_size: Forward/backward passes per chunk over the ``B*n`` noisy copies (an alias
            of ``chunk_size``, which it overrides). The result does not depend on it beyond
            float rounding.
        progress: Progress bar over chunks.
        **engine: The engine options of :func:`smoothgrad_passes` (:data:`ENGINE_OPTIONS`,
            declared and documented there once): ``seeds`` (explicit ``[B]`` per-image seeds,
            overriding ``generator``), ``noise``, ``chunk_size``, ``memory_budget``,
            ``autocast`` (also used for the clean forward of ``target=None``) and ``compile``.

    Returns:
        Non-negative attribution ``[B,H,W]`` (float32).

    Raises:
        TypeError: ``target`` is a float, bool, string or floating-point tensor
            (:func:`~iavutils.core.attribution.check_target`), or a keyword that is not an
            engine option.
        ValueError: Bad input (size, NaN, or a dtype/device other than the model's).
        RuntimeError: Called under ``torch.inference_mode()`` (``torch.no_grad()`` is fine).
    """
    unknown = sorted(set(engine) - set(ENGINE_OPTIONS))
    if unknown:
        # smoothgrad_passes takes more keywords (grid, checkpoints...); smoothgrad returns pixels only
        raise TypeError(f"smoothgrad() got unexpected keyword arguments {unknown}; engine options: {ENGINE_OPTIONS}")
    check_input(model, x)
    check_grad_mode("smoothgrad")
    target = check_target(target, x.shape[0])
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        engine["chunk_size"] = int(batch_size)
    if target is None:
        # the predicted class needs a clean forward
        with eval_mode(model), torch.no_grad(), autocast_ctx(x.device, engine.get("autocast")):
            target = resolve_target(None, model(x))
    out = smoothgrad_passes(model, x, target, n_samples, noise_level, generator, **engine, return_pixels=True,
                            progress=progress)
    return out["pixels"]


def gradcam(model: nn.Module, x: Tensor, target: int | Tensor | None = None) -> Tensor:
    """GradCAM for ViTs on the last block's ``norm1`` output tokens.

    With activations ``a[b,p,d]`` of the patch tokens (prefix tokens dropped) and ``w[b,d] =
    mean_p d y_c / d a[b,p,d]``, the map is ``ReLU(sum_d w[b,d] a[b,p,d])``.

    Args:
        model: A supported timm ViT-family model.
        x: Model-normalised images ``[B,3,H,W]``.
        target: ``None`` (predicted class), an int or a ``[B]`` tensor.

    Returns:
        Non-negative patch map ``[B,P]``.

    Raises:
        TypeError: ``target`` is a float, bool, string or floating-point tensor
            (:func:`~iavutils.core.attribution.check_target`).
        ValueError: Bad input (size, NaN, or a dtype/device other than the model's).
        RuntimeError: Called under ``torch.inference_mode()`` (``torch.no_grad()`` is fine).
    """
    geo = model_geometry(model)
    check_input(model, x)
    check_grad_mode("gradcam")
    norm1 = getattr(model.blocks[-1], "norm1", None)
    if norm1 is None:
        raise TypeError(f"{type(model).__name__}.blocks[-1] has no `norm1`; GradCAM needs it")
    with record_output(norm1) as store, eval_mode(model), torch.enable_grad():
        logits = model(grad_input(x).requires_grad_(True))
        t = resolve_target(target, logits)
        y = logits.gather(1, t.unsqueeze(1)).sum()
    a = store["output"]
    (g,) = torch.autograd.grad(y, a)
    T = geo.num_prefix_tokens
    a, g = a[:, T:].detach(), g[:, T:]
    w = g.mean(dim=1, keepdim=True)
    return torch.relu((w * a).sum(dim=-1))


def patch_pool(attribution: Tensor, grid: tuple[int, int]) -> Tensor:
    """Average a pixel map inside each patch.

    Args:
        attribution: Pixel map ``[B,H,W]``.
        grid: Patch grid ``(gh, gw)``; ``H`` and ``W`` must be divisible by it.

    Returns:
        Patch map ``[B,P]`` in row-major patch order (the ViT token order).
    """
    if attribution.dim() != 3:
        raise ValueError(f"expected a pixel map [B,H,W], got {tuple(attribution.shape)}")
    B, H, W = attribution.shape
    gh, gw = grid
    if H % gh or W % gw:
        raise ValueError(f"map size {(H, W)} is not divisible by the patch grid {(gh, gw)}")
    ph, pw = H // gh, W // gw
    return attribution.reshape(B, gh, ph, gw, pw).mean(dim=(2, 4)).reshape(B, gh * gw)
