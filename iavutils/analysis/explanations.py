"""Chapter 08: explanation maps, their evaluation, and GMAR against rollout.

The maps of every method (attention, rollout, GMAR, gradient rollout, Grad-CAM, SmoothGrad,
random), the AAV with the object mask, the whole evaluation of a batch, its tidy table and the
cached evaluation of a finetuned checkpoint. The metrics themselves (perturbation curves,
localization, paired AUC differences) are pure tensor code in :mod:`iavutils.core.metrics`;
the protocols are in book/methods.md, "Evaluation protocols".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.attribution import gradcam, patch_pool, resolve_target, smoothgrad
from ..core.geometry import model_geometry
from ..core.hooks import eval_mode, record_attention
from ..core.metrics import (
    DEFAULT_FRACTIONS,
    LOCALIZATION_METRICS,
    localization_metrics,
    paired_difference,
    perturbation_auc,
    perturbation_curve,
)
from ..core.progress import tqdm  # one progress helper: widgets, terminal, or the book runner
from ..core.rollout import attention_and_grads, attention_rollout, gmar_from_grads, gradient_rollout_from_grads
from ..core.scores import aav, cls_attention
from .study import Study

__all__ = [
    "EXPLANATION_METHODS",
    "PATCH_MASKING_METHODS",
    "PERTURBATION_METHODS",
    "evaluate_explanations",
    "explanation_maps",
    "explanation_table",
    "gmar_vs_rollout",
    "mask_aav",
    "run_explanation_eval",
]

#: Every method :func:`explanation_maps` knows, in table order.
EXPLANATION_METHODS: tuple[str, ...] = (
    "attention",  # last layer, mean of heads, CLS row over patches
    "attention_mean",  # mean over all layers and heads (the IAV paper's "Attention-Mean")
    "rollout",
    "gmar_l1",
    "gmar_l2",
    "gradient_rollout",
    "gradcam",
    "smoothgrad",  # pixel map
    "smoothgrad_patch",  # patch-pooled
    "random",
)

#: Methods with pixel perturbation curves by default (the issue's list; Fig. 5's
#: ``attention_mean`` and ``smoothgrad_patch`` get the patch-masking curve instead).
PERTURBATION_METHODS: tuple[str, ...] = (
    "attention", "rollout", "gmar_l1", "gmar_l2", "gradient_rollout", "gradcam", "smoothgrad", "random",
)

#: Patch orderings of the IAV paper's Fig. 5 (patch masking).
PATCH_MASKING_METHODS: tuple[str, ...] = ("attention", "attention_mean", "smoothgrad_patch", "random")


# --------------------------------------------------------------------------- explanation maps


def _chunks(n: int, size: int | None) -> Iterable[slice]:
    step = n if not size else int(size)
    return (slice(s, s + step) for s in range(0, n, step))


def explanation_maps(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    methods: Sequence[str] = EXPLANATION_METHODS,
    *,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    batch_size: int | None = None,
    precomputed: Mapping[str, Tensor] | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Every explanation map of a batch, for one shared target class per image.

    Methods (see :data:`EXPLANATION_METHODS`): ``attention`` (last layer, mean of heads, class
    token row over patches), ``attention_mean`` (mean over all layers and heads),
    ``rollout``, ``gmar_l1``, ``gmar_l2``, ``gradient_rollout``, ``gradcam``, ``smoothgrad``
    (pixel map), ``smoothgrad_patch`` (patch-pooled), ``random`` (uniform noise from ``seed``).

    Args:
        model: A supported timm ViT-family model.
        x: Model-normalised images ``[B,3,H,W]``.
        target: ``None`` (predicted class, resolved once so that every method explains the
            same class), an int or a ``[B]`` tensor.
        methods: Which maps to compute.
        n_samples: SmoothGrad samples.
        noise_level: SmoothGrad noise level.
        seed: Seeds SmoothGrad's noise stream and the random map (independently).
        batch_size: Images per chunk (``None``: all at once); results do not depend on it
            except through SmoothGrad's seeds, which are drawn once for the whole batch.
        precomputed: Maps already computed for the same images and targets (e.g. the book's
            cached SmoothGrad ``{"smoothgrad": [B,H,W]}``); used instead of recomputing.
        progress: Show a tqdm bar over methods.

    Returns:
        ``{method: map}`` with ``[B,P]`` patch maps and ``[B,H,W]`` for ``smoothgrad``; detached
        float32 on ``x``'s device.
    """
    unknown = [m for m in methods if m not in EXPLANATION_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {EXPLANATION_METHODS}")
    geo = model_geometry(model)
    B = x.shape[0]
    with eval_mode(model), torch.no_grad():
        logits = torch.cat([model(x[sl]) for sl in _chunks(B, batch_size)])
    t = resolve_target(target, logits)
    out: dict[str, Tensor] = {k: v.to(x.device) for k, v in (precomputed or {}).items() if k in methods}
    if "smoothgrad_patch" in methods and "smoothgrad" in (precomputed or {}) and "smoothgrad_patch" not in out:
        out["smoothgrad_patch"] = patch_pool(precomputed["smoothgrad"].to(x.device).float(), geo.grid)
    need_attn = ({"attention", "attention_mean", "rollout"} & set(methods)) - set(out)
    if need_attn:
        cls_parts, roll_parts = [], []
        for sl in _chunks(B, batch_size):
            _, attn = record_attention(model, x[sl])
            cls_parts.append(cls_attention(attn, geo.num_prefix_tokens))
            if "rollout" in need_attn:
                roll_parts.append(attention_rollout(attn, geo.num_prefix_tokens))
        cls = torch.cat(cls_parts)  # [B,L,H,P]
        if "attention" in need_attn:
            out["attention"] = cls[:, -1].mean(dim=1)
        if "attention_mean" in need_attn:
            out["attention_mean"] = cls.mean(dim=(1, 2))
        if "rollout" in need_attn:
            out["rollout"] = torch.cat(roll_parts)
    grad_methods = [m for m in ("gmar_l1", "gmar_l2", "gradient_rollout") if m in methods and m not in out]
    if grad_methods:
        # One forward/backward serves GMAR (both norms) and gradient rollout: same ∂y_c/∂A.
        parts: dict[str, list[Tensor]] = {m: [] for m in grad_methods}
        for sl in _chunks(B, batch_size):
            attn, grads = attention_and_grads(model, x[sl], t[sl])
            for m in grad_methods:
                if m == "gradient_rollout":
                    parts[m].append(gradient_rollout_from_grads(attn, grads, geo.num_prefix_tokens))
                else:
                    parts[m].append(gmar_from_grads(attn, grads, geo.num_prefix_tokens, norm=m[-2:]))
        out.update({m: torch.cat(v) for m, v in parts.items()})
    sg = None
    for m in tqdm([m for m in methods if m not in out], desc="maps", disable=not progress, leave=False):
        if m == "gradcam":
            out[m] = torch.cat([gradcam(model, x[sl], t[sl]) for sl in _chunks(B, batch_size)])
        elif m in ("smoothgrad", "smoothgrad_patch"):
            if sg is None:
                # One generator for the whole batch: the noise stream draws B seeds up front.
                gen = torch.Generator().manual_seed(int(seed))
                sg = smoothgrad(model, x, t, n_samples=n_samples, noise_level=noise_level, generator=gen,
                                batch_size=None if batch_size is None else batch_size * n_samples)
            out[m] = sg if m == "smoothgrad" else patch_pool(sg, geo.grid)
        elif m == "random":
            gen = torch.Generator().manual_seed(int(seed) + 1)
            out[m] = torch.rand(B, geo.num_patches, generator=gen).to(x.device)
    return {m: out[m].detach().float() for m in methods}


def mask_aav(model: nn.Module, x: Tensor, masks: Tensor, batch_size: int | None = None) -> Tensor:
    """AAV with the ground-truth object mask as the map (the IAV paper's suggested future work).

    ``aav[b,l,h] = cos(patch_pool(mask_b), A_cls[b,l,h])``: how much each head's class-token
    attention agrees with *where the object is*, independently of the model's decision.

    Args:
        model: A supported timm ViT-family model.
        x: Model-normalised images ``[B,3,H,W]``.
        masks: ``[B,H,W]`` object masks.
        batch_size: Images per chunk.

    Returns:
        ``[B,L,H]`` scores (NaN for an image without object pixels).
    """
    return torch.cat([aav(model, x[sl], masks[sl].to(x)) for sl in _chunks(x.shape[0], batch_size)])


# --------------------------------------------------------------------------- whole evaluation


def evaluate_explanations(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    masks: Tensor | None = None,
    *,
    info: Any | None = None,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    methods: Sequence[str] = EXPLANATION_METHODS,
    target: int | Tensor | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    perturbation_methods: Sequence[str] = PERTURBATION_METHODS,
    patch_methods: Sequence[str] = PATCH_MASKING_METHODS,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    batch_size: int = 64,
    precomputed: Mapping[str, Tensor] | None = None,
    progress: bool = True,
) -> dict[str, Tensor]:
    """Maps, perturbation curves (pixel positive/negative, patch positive) and localization.

    The result is a flat ``dict[str, Tensor]`` (what ``ResultStore.cached`` stores):
    ``fractions`` ``[F+1]``; ``map.{m}``; ``positive.{m}``, ``negative.{m}`` and
    ``patch_positive.{m}`` (per-image correctness ``[F+1,B]``; patch masking only for
    ``patch_methods``); ``loc.{metric}.{m}`` ``[B]``; ``aav_mask`` ``[B,L,H]``; ``labels``; ``target``.

    Args:
        model: A supported timm ViT-family model.
        x: Model-normalised images ``[B,3,H,W]``.
        labels: ``[B]`` ground-truth classes.
        masks: ``[B,H,W]`` object masks (``None``: no localization, no mask AAV).
        info: ``ModelInfo`` with the normalisation (or ``mean``/``std``).
        mean: Normalisation mean (if no ``info``).
        std: Normalisation std (if no ``info``).
        methods: Explanation methods.
        target: Class explained: ``None`` = the predicted class (what the model decided).
        fractions: Removed fractions.
        perturbation_methods: Methods that get the pixel perturbation curves (positive and
            negative); the forwards of the perturbed images dominate the cost.
        patch_methods: Methods (with patch maps) that also get the patch-masking curve of the
            IAV paper's Fig. 5.
        n_samples: SmoothGrad samples.
        noise_level: SmoothGrad noise level.
        seed: Seeds the maps and the tie-breaking.
        batch_size: Images per forward (perturbed images per forward: ``4 * batch_size``).
        precomputed: Maps computed elsewhere for the same images and targets
            (:func:`explanation_maps`).
        progress: Show tqdm bars.

    Returns:
        The flat result dictionary described above.
    """
    geo = model_geometry(model)
    with eval_mode(model), torch.no_grad():
        logits = torch.cat([model(x[sl]) for sl in _chunks(x.shape[0], batch_size)])
    t = resolve_target(target, logits)
    maps = explanation_maps(model, x, t, methods, n_samples=n_samples, noise_level=noise_level, seed=seed,
                            batch_size=batch_size, precomputed=precomputed)
    res: dict[str, Tensor] = {"labels": labels.detach().cpu().long(), "target": t.cpu()}
    # The unperturbed images' predictions are the first point of every curve: computed once.
    kw = dict(info=info, mean=mean, std=std, fractions=fractions, grid=geo.grid, batch_size=4 * batch_size, seed=seed,
              clean=logits.argmax(1))
    fr = [float(f) for f in fractions]
    res["fractions"] = torch.tensor(fr if fr and fr[0] == 0.0 else [0.0, *fr])
    for m in tqdm(methods, desc="perturbation", disable=not progress, leave=False):
        res[f"map.{m}"] = maps[m].cpu()
        for mode in ("positive", "negative") if m in perturbation_methods else ():
            c = perturbation_curve(model, x, maps[m], labels, mode=mode, **kw)
            res[f"{mode}.{m}"] = c.correct
        if m in patch_methods and maps[m].dim() == 2:
            res[f"patch_positive.{m}"] = perturbation_curve(model, x, maps[m], labels, unit="patch", **kw).correct
        if masks is not None:
            for k, v in localization_metrics(maps[m], masks.to(x.device), grid=geo.grid).items():
                res[f"loc.{k}.{m}"] = v
    if masks is not None:
        res["aav_mask"] = mask_aav(model, x, masks, batch_size=batch_size).cpu()
    return res


def explanation_table(results: Mapping[str, Mapping[str, Tensor]]) -> Any:
    """A tidy table of AUCs and localization per model and method.

    Args:
        results: ``{model name: evaluate_explanations(...) result}``.

    Returns:
        ``pandas.DataFrame`` with columns ``model, method, auc_positive, auc_negative,
        auc_patch_positive, pixel_accuracy, miou, ap, pointing`` (AUCs in [0, 90], positive
        lower is better, negative higher is better; localization means in [0, 1]).
    """
    import pandas as pd

    rows = []
    for name, res in results.items():
        fr = res["fractions"]
        methods = [k.split(".", 1)[1] for k in res if k.startswith("map.")]
        for m in methods:
            row: dict[str, Any] = {"model": name, "method": m}
            for mode in ("positive", "negative", "patch_positive"):
                key = f"{mode}.{m}"
                row[f"auc_{mode}"] = float(perturbation_auc(fr, res[key].mean(1))) if key in res else float("nan")
            for metric in LOCALIZATION_METRICS:
                key = f"loc.{metric}.{m}"
                row[metric] = float(torch.nanmean(res[key].float())) if key in res else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)

# --------------------------------------------------------------------------- cached experiment

#: Bump when a definition behind :func:`run_explanation_eval` changes (invalidates the cache).
_EVAL_VERSION = 1


def run_explanation_eval(
    study: Study,
    preset: str,
    *,
    methods: Sequence[str] = EXPLANATION_METHODS,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    epoch: int | None = None,
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """:func:`evaluate_explanations` of a finetuned checkpoint, cached in the run directory.

    Images: the seeded validation subset of :func:`iavutils.analysis.images.load_images` (the same
    images for every model). SmoothGrad is taken from the book's cached
    :func:`iavutils.analysis.iavs.checkpoint_analysis` of the same images (shared with chapters
    02–07), and every method explains the same class. The cache key holds the checkpoint's
    fingerprint, so a re-finetuned model is re-evaluated.

    Args:
        study: The dataset (``"embedded"`` with masks, or ``"cifar10"``: no localization), the
            run and the spec (:class:`~iavutils.analysis.study.Study`); from the spec:
            ``num_images`` validation images, SmoothGrad ``n_samples`` and ``noise_level``,
            ``seed`` (image subset, SmoothGrad noise, random map and tie-breaking), ``target``
            (class explained: ``"label"``, the book's default, or ``"predicted"``), ``device``
            and ``progress`` (bars).
        preset: Preset finetuned in the run.
        methods: Explanation methods.
        fractions: Removed fractions.
        epoch: Checkpoint (``None``: the last one).
        batch_size: Images per forward.

    Returns:
        The :func:`evaluate_explanations` dictionary plus ``indices`` (dataset indices) and
        ``epoch``.
    """
    from ..world.store import ResultStore
    from ..world.training import load_checkpoint
    from .checkpoints import checkpoint_key, chosen_epoch, resolve_device
    from .iavs import checkpoint_analysis
    from .images import has_masks, load_images, warn_no_masks
    from .run_dirs import resolve_run_dir

    dataset, spec = study.dataset, study.spec
    target = spec.target
    run = resolve_run_dir(study.run_dir)
    dev = resolve_device(spec.device)
    epoch = chosen_epoch(preset, dataset, run, epoch)
    if target not in ("label", "predicted"):
        raise ValueError(f"target must be 'label' or 'predicted', got {target!r}")
    if not has_masks(dataset):
        warn_no_masks(dataset, "localization against the masks (pixel accuracy, mIoU, AP, pointing "
                               "game) and the AAV with the mask")
    key = {
        # The field names of the first version of this cache ("version", "fingerprint") keep it valid.
        **checkpoint_key(preset, dataset, epoch, run, _EVAL_VERSION, version_field="version", fingerprint_field="fingerprint"),
        **spec.cache_key(),
        "methods": list(methods), "fractions": [float(f) for f in fractions],
    }

    def compute() -> dict[str, Tensor]:
        # SmoothGrad of the same images and targets is the book's shared, cached analysis.
        analysis = checkpoint_analysis(preset, dataset, epoch, run_dir=run, spec=spec)
        model, info = load_checkpoint(run, dataset, preset, epoch=epoch, device=dev)
        imgs = load_images(dataset, info, spec.num_images, spec.seed)
        if not torch.equal(imgs["indices"], analysis["indices"]):
            raise RuntimeError("the image subset differs from the cached analysis")
        res = evaluate_explanations(
            model, imgs["x"].to(dev), imgs["y"].to(dev), imgs.get("mask"), info=info, methods=methods,
            target=analysis["targets"].to(dev), fractions=fractions, n_samples=spec.n_samples,
            noise_level=spec.noise_level, seed=spec.seed, batch_size=batch_size,
            precomputed={"smoothgrad": analysis["smoothgrad"]}, progress=spec.progress,
        )
        res["indices"] = imgs["indices"]
        res["epoch"] = torch.tensor(epoch)
        return res

    return ResultStore(run).cached("explanation_eval", key, compute, meta={"preset": preset})


def gmar_vs_rollout(
    results: Mapping[str, Mapping[str, Tensor]],
    pairs: Sequence[tuple[str, str]] = (("gmar_l1", "rollout"), ("gmar_l2", "rollout")),
    n_boot: int = 2000,
    seed: int = 0,
) -> Any:
    """Per model, the paired AUC difference of GMAR and rollout with a bootstrap interval.

    ``better`` is ``True`` when the 95% interval says GMAR is better (positive: lower AUC;
    negative: higher AUC), ``False`` when it says worse, ``None`` when it contains 0.

    Args:
        results: ``{model: evaluate_explanations result}``.
        pairs: ``(method, reference)`` pairs.
        n_boot: Bootstrap resamples over images.
        seed: Bootstrap seed.

    Returns:
        ``pandas.DataFrame`` with ``model, method, reference, mode, diff, low, high, better``.
    """
    import pandas as pd

    rows = []
    for name, res in results.items():
        for a, b in pairs:
            if f"positive.{a}" not in res or f"positive.{b}" not in res:  # no curves for them
                continue
            for mode in ("positive", "negative"):
                d = paired_difference(res, a, b, mode=mode, n_boot=n_boot, seed=seed)
                sign = -1.0 if mode == "positive" else 1.0  # which direction is "better"
                # Interval of the improvement (positive = GMAR better) in either test.
                lo, hi = sorted((sign * d["low"], sign * d["high"]))
                better = True if lo > 0 else False if hi < 0 else None
                rows.append({"model": name, "method": a, "reference": b, "mode": mode, **d, "better": better})
    return pd.DataFrame(rows)
