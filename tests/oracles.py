"""Straightforward reference implementations (oracles) the engine is tested against.

These are the library's former reference code paths, kept verbatim in spirit: SmoothGrad as a
plain loop over :func:`iavutils.noise_stream` (one ``+=`` per sample, in stream order), and IAV
from the full attention maps of :func:`iavutils.record_attention`. They are slow and obviously
right; :func:`iavutils.smoothgrad` and :func:`iavutils.iav` must agree with them up to float
summation order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from iavutils.core.attribution import check_target, gradcam, patch_pool, resolve_target
from iavutils.core.hooks import check_grad_mode, check_input, eval_mode, model_geometry, record_attention
from iavutils.core.noise import noise_stream
from iavutils.core.scores import ATTRIBUTIONS, cls_attention, ia_score


def smoothgrad(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None,
    n_samples: int = 25,
    noise_level: float = 0.15,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Reference SmoothGrad ``mean_k |d f^c(x + eps_k) / dx|``, averaged over channels.

    Args:
        model: Any differentiable classifier ``[B,C,H,W] -> [B,classes]``.
        x: Model-normalised images ``[B,C,H,W]``; not modified.
        target: ``None`` (predicted class on the clean image), an int or a ``[B]`` tensor.
        n_samples: Noisy copies per image.
        noise_level: Noise standard deviation as a fraction of each image's value range.
        generator: CPU generator for the noise seeds (``None``: torch's global RNG).
        batch_size: Forward/backward passes per chunk over the ``B*n`` noisy copies
            (``None``: all at once).

    Returns:
        Non-negative attribution ``[B,H,W]``.
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


def iav(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    attribution: str = "smoothgrad",
    **kw: object,
) -> Tensor:
    """Reference IAV: full attention maps recorded on the clean image, then the IA-Score.

    Args:
        model: A supported timm ViT-family model.
        x: Model-normalised images ``[B,3,H,W]``.
        target: ``None`` (predicted class on the clean image), an int or a ``[B]`` tensor.
        attribution: ``"smoothgrad"``, ``"saliency"`` (plain gradient) or ``"gradcam"``.
        **kw: Passed to :func:`smoothgrad` (``n_samples``, ``noise_level``, ``generator``,
            ``batch_size``); ``"saliency"`` accepts ``batch_size``; ``"gradcam"`` none.

    Returns:
        ``[B,L,H]`` IA-Scores.
    """
    if attribution not in ATTRIBUTIONS:
        raise ValueError(f"attribution must be one of {ATTRIBUTIONS}, got {attribution!r}")
    geo = model_geometry(model)
    check_input(model, x)
    check_target(target, x.shape[0])
    logits, attn = record_attention(model, x)
    cls_attn = cls_attention(attn, geo.num_prefix_tokens)
    t = resolve_target(target, logits)
    if attribution == "gradcam":
        if kw:
            raise TypeError(f"gradcam takes no extra arguments, got {sorted(kw)}")
        phi = gradcam(model, x, t)
    else:
        if attribution == "saliency":
            kw = {**kw, "n_samples": 1, "noise_level": 0.0}
        phi = patch_pool(smoothgrad(model, x, t, **kw), geo.grid)  # type: ignore[arg-type]
    return ia_score(phi, cls_attn)
