"""Input attributions: SmoothGrad (and plain saliency), GradCAM for ViTs, patch pooling.

Gradients come from ``torch.autograd.grad`` only (parameters' ``.grad`` is never touched);
the model runs in eval mode and every module's train/eval flag is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .hooks import check_grad_mode, check_input, eval_mode, grad_input, model_geometry

__all__ = [
    "gradcam",
    "noise_seeds",
    "noise_stream",
    "patch_pool",
    "check_target",
    "resolve_target",
    "smoothgrad",
]


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


def noise_seeds(batch_size: int, generator: torch.Generator | None = None) -> Tensor:
    """Per-image seeds of the SmoothGrad noise stream (ARCHITECTURE.md contract).

    Args:
        batch_size: Number of images ``B``.
        generator: CPU generator; ``None`` draws from torch's global RNG.

    Returns:
        ``[B]`` int64 seeds in ``[0, 2**62)``.
    """
    return torch.randint(0, 2**62, (batch_size,), generator=generator)


def noise_stream(
    x: Tensor,
    n_samples: int,
    noise_level: float,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[int, int, Tensor]]:
    """Yield SmoothGrad's noisy copies in the order ``(b, k)``, ``b`` major.

    The contract (ARCHITECTURE.md, "SmoothGrad noise stream"): ``seeds = noise_seeds(B,
    generator)``; image ``b`` gets a CPU generator seeded with ``seeds[b]``; its sample ``k`` is
    its ``k``-th draw ``z = torch.randn(C, H, W)`` (CPU, float32), moved to ``x``'s device and
    dtype; the noisy copy is ``x[b] + sigma_b * z`` with ``sigma_b = noise_level * (x[b].max() -
    x[b].min())`` computed on ``x``'s device. An engine that follows this reproduces
    :func:`smoothgrad` exactly, however it batches the ``B*n`` passes.

    Args:
        x: Images ``[B,C,H,W]``.
        n_samples: Noisy copies per image ``n``.
        noise_level: Noise standard deviation as a fraction of each image's value range.
        generator: CPU generator for the seeds; ``None`` uses torch's global RNG.

    Yields:
        ``(b, k, x_noisy [C,H,W])``.
    """
    B, C, H, W = x.shape
    seeds = noise_seeds(B, generator)
    sigma = noise_level * (x.detach().flatten(1).amax(1) - x.detach().flatten(1).amin(1))
    for b in range(B):
        g = torch.Generator(device="cpu").manual_seed(int(seeds[b]))
        for k in range(n_samples):
            z = torch.randn(C, H, W, generator=g, dtype=torch.float32)
            yield b, k, x[b].detach() + sigma[b] * z.to(device=x.device, dtype=x.dtype)


def smoothgrad(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None,
    n_samples: int = 25,
    noise_level: float = 0.15,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """SmoothGrad attribution ``mean_k |d f^c(x + eps_k) / dx|``, averaged over channels.

    ``f^c`` is the target class *logit*. ``eps_k ~ N(0, sigma_b^2)`` with ``sigma_b =
    noise_level * (max(x_b) - min(x_b))`` per image, drawn by :func:`noise_stream`.
    ``noise_level=0`` gives exactly the plain gradient (saliency), whatever ``n_samples``.
    The defaults ``n_samples=25, noise_level=0.15`` are the IAV author's own SmoothGrad
    convention; the IAV paper does not state them.

    Args:
        model: Any differentiable classifier ``[B,C,H,W] -> [B,classes]``.
        x: Model-normalised images ``[B,C,H,W]``; not modified.
        target: ``None`` (predicted class on the clean image), an int or a ``[B]`` tensor.
        n_samples: Noisy copies per image.
        noise_level: Noise standard deviation as a fraction of each image's value range.
        generator: CPU generator for the noise seeds (``None``: torch's global RNG).
        batch_size: Forward/backward passes per chunk over the ``B*n`` noisy copies
            (``None``: all at once). The result does not depend on it.

    Returns:
        Non-negative attribution ``[B,H,W]``.

    Raises:
        TypeError: ``target`` is a float, bool, string or floating-point tensor
            (:func:`~iavutils.core.attribution.check_target`).
        ValueError: Bad input (size, NaN, or a dtype/device other than the model's).
        RuntimeError: Called under ``torch.inference_mode()`` (``torch.no_grad()`` is fine).
    """
    check_input(model, x)
    check_grad_mode("smoothgrad")
    target = check_target(target, x.shape[0])
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    B, C, H, W = x.shape
    total = B * n_samples
    chunk = total if batch_size is None else int(batch_size)
    if chunk < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    acc = torch.zeros(B, C, H, W, device=x.device, dtype=x.dtype)
    with eval_mode(model), torch.enable_grad():
        # The predicted class needs a clean forward; a given target is checked against the
        # number of classes once the first chunk's logits are there.
        t: Tensor | None = None
        if target is None:
            with torch.no_grad():
                t = resolve_target(None, model(x))
        stream = noise_stream(x, n_samples, noise_level, generator)
        done = 0
        while done < total:
            items = [next(stream) for _ in range(min(chunk, total - done))]
            done += len(items)
            idx = torch.tensor([b for b, _, _ in items], device=x.device)
            xin = torch.stack([xn for _, _, xn in items]).requires_grad_(True)
            logits = model(xin)
            if t is None:
                t = resolve_target(target, logits.detach()[:1].expand(B, -1))
            y = logits.gather(1, t[idx].unsqueeze(1)).sum()
            (g,) = torch.autograd.grad(y, xin)
            g = g.abs()
            # Accumulate in stream order so that every chunking adds the same terms in the same order.
            for j, (b, _, _) in enumerate(items):
                acc[b] += g[j]
    return (acc / n_samples).mean(dim=1)


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
    store: dict[str, Tensor] = {}

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        store["a"] = output

    handle = norm1.register_forward_hook(hook)
    try:
        with eval_mode(model), torch.enable_grad():
            logits = model(grad_input(x).requires_grad_(True))
            t = resolve_target(target, logits)
            y = logits.gather(1, t.unsqueeze(1)).sum()
    finally:
        handle.remove()
    a = store["a"]
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
