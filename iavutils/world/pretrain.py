"""Pretraining recipes of the four tiny presets (the paper's 2×2 in miniature).

``python -m iavutils.world.pretrain --all`` (or ``--preset tiny-dino``) pretrains on the embedded
*source* distributions (never on the finetuning target) and writes
``iavutils/weights/<preset>.safetensors`` plus ``<preset>.json`` (recipe, seed, time, probe
accuracies). Everything is seeded; each recipe takes a few minutes on a 2-core CPU.

* ``tiny-mim`` (≈ BEiT): masked image modelling, SimMIM-style, on unlabelled ``source-large``:
  half of the patches are replaced by a learnable mask token and a linear decoder predicts their
  (per-patch normalised) pixels; L1 loss on the masked patches. timm ``Beit`` with relative
  position bias.
* ``tiny-dino`` (≈ DINO): self-distillation with no labels on ``source-small`` images: a student
  and an EMA teacher, DINO's multi-crop: two global views (random resized crops at 32×32) that
  both networks see and several local crops fed to the student only at 16×16 (their own
  resolution, position embedding resized, so each costs about a quarter of a global view);
  flips, brightness/contrast/saturation jitter that keeps the hue (a class cue of the
  objects), grayscale, blur and solarisation. The teacher's output is centred and sharpened,
  the student matches it across views (cross-entropy, never a view with itself). Local crops
  are large enough (30–60 % of the image) to mostly hold part of the object, so the student
  cannot match them to the global views from the shared background alone. No labels, no masks.
* ``tiny-sup`` (≈ DeiT / ImageNet-1k): supervised classification on ``source-small`` (20 classes).
* ``tiny-sup21k`` (≈ ImageNet-21k): supervised classification on ``source-large`` (60 classes,
  more varied, 3× the images).

Each run prints a k-NN probe accuracy on the target (embedded train → val) for the pretrained
backbone and for the same architecture randomly initialised, and records both.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from ..core.progress import tqdm  # one progress helper: widgets, terminal, or the book runner

from .data import get_dataset
from .models import TINY_CONFIG, TINY_PRESETS, WEIGHTS_DIR, build_model
from .store import atomic_write, atomic_write_json

__all__ = ["RECIPES", "Recipe", "pretrain", "knn_probe", "augment", "features", "main"]


@dataclass(frozen=True)
class Recipe:
    """One pretraining recipe.

    Attributes:
        method: ``"mim"``, ``"dino"`` or ``"supervised"``.
        source: Embedded source dataset (``"source-small"`` / ``"source-large"``).
        steps: Optimizer steps.
        batch_size: Images per step.
        lr: Peak learning rate (AdamW, linear warm-up then cosine decay).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps.
        seed: Seeds initialisation, data order and augmentation.
    """

    method: str
    source: str
    steps: int
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 30
    seed: int = 0
    mask_ratio: float = 0.5  # mim
    out_dim: int = 256  # dino head outputs
    teacher_momentum: float = 0.99  # dino EMA start (goes to 1 by a cosine)
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    center_momentum: float = 0.9
    crop_scale: float = 0.4  # dino views: random resized crops of [crop_scale, 1] of the area
    colour_jitter: float = 0.1  # dino views: brightness/contrast/saturation, never hue (a class cue)
    gray_p: float = 0.0  # dino views: grayscale probability
    blur_p: float = 0.0  # dino views: Gaussian blur probability
    solarize_p: float = 0.0  # dino views: solarisation probability
    local_crops: int = 0  # dino: number of local crops (student only)
    local_size: int = 16  # dino: local crops' side in pixels (fed at that resolution)
    local_crop_scale: tuple[float, float] = (0.1, 0.4)  # dino: local crops' area fraction
    teacher_temp_start: float = 0.04  # dino: teacher temperature warms up from this ...
    teacher_temp_warmup_steps: int = 0  # ... to teacher_temp over these steps


RECIPES: dict[str, Recipe] = {
    "tiny-mim": Recipe("mim", "source-large", steps=300, batch_size=64, lr=1e-3, weight_decay=0.05),
    # Multi-crop and strong colour augmentation: with mild jitter the views were matched by their
    # shared background colours and the probe fell below random init (0.117 vs 0.135).
    "tiny-dino": Recipe(
        "dino", "source-small", steps=700, batch_size=32, lr=1e-3, weight_decay=0.04, teacher_momentum=0.95,
        crop_scale=0.5, colour_jitter=0.4, gray_p=0.5, blur_p=0.3, solarize_p=0.2,
        local_crops=4, local_crop_scale=(0.3, 0.6),
    ),
    "tiny-sup": Recipe("supervised", "source-small", steps=400, batch_size=64, lr=1e-3),
    "tiny-sup21k": Recipe("supervised", "source-large", steps=400, batch_size=64, lr=1e-3),
}


# ---------------------------------------------------------------------------------------------
# augmentation (batched, on [0,1] pixels, randomness from a generator)


def augment(
    x01: torch.Tensor, g: torch.Generator, scale: tuple[float, float] = (0.35, 1.0), colour: float = 0.4, gray_p: float = 0.2
) -> torch.Tensor:
    """Random resized crop (aspect 3/4..4/3), horizontal flip, colour jitter and grayscale.

    Args:
        x01: ``[B,3,H,W]`` pixels in [0, 1].
        g: The generator every random choice is drawn from.
        scale: Range of the crop's area fraction.
        colour: Strength of brightness / contrast / saturation jitter (0 = none).
        gray_p: Probability of converting to grayscale.

    Returns:
        ``[B,3,H,W]`` in [0, 1].
    """
    b = x01.shape[0]
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(b, generator=g)
    log_r = (torch.rand(b, generator=g) * 2 - 1) * math.log(4 / 3)
    ratio = torch.exp(log_r)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (torch.rand(b, generator=g) * 2 - 1) * (1 - sw)
    ty = (torch.rand(b, generator=g) * 2 - 1) * (1 - sh)
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = sw * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    x = F.grid_sample(x01, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if colour > 0:
        bright = 1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * colour
        contrast = 1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * colour
        sat = 1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * colour
        x = x * bright
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray) * sat + gray
    if gray_p > 0:
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
        x = torch.where((torch.rand(b, 1, 1, 1, generator=g) < gray_p), gray, x)
    return x.clamp(0, 1)


def _norm(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - 0.5) / 0.5  # the tiny presets' mean/std


# ---------------------------------------------------------------------------------------------
# probe


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Pooled pre-logit features (CLS token for ViT, mean of patches for BEiT) ``[B,D]``."""
    was = model.training
    model.eval()
    try:
        out = [model.forward_head(model.forward_features(x[i : i + batch_size]), pre_logits=True) for i in range(0, len(x), batch_size)]
    finally:
        model.train(was)
    return torch.cat(out)


@torch.no_grad()
def knn_probe(model: nn.Module, n_train: int = 2000, n_val: int = 1000, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted k-NN accuracy (DINO's protocol: cosine similarity, weights ``exp(s/T)``) on the target.

    The first ``n_train`` images of the embedded *train* split are the memory bank, the first
    ``n_val`` of *val* the queries.
    """
    train, val = get_dataset("embedded", "train"), get_dataset("embedded", "val")
    xt, yt, _ = train.get_batch(slice(0, n_train))
    xv, yv, _ = val.get_batch(slice(0, n_val))
    ft = F.normalize(features(model, xt), dim=-1)
    fv = F.normalize(features(model, xv), dim=-1)
    sim, idx = (fv @ ft.T).topk(k, dim=-1)
    votes = torch.zeros(len(fv), int(yt.max()) + 1)
    votes.scatter_add_(1, yt[idx], (sim / temperature).exp())
    return (votes.argmax(-1) == yv).float().mean().item()


# ---------------------------------------------------------------------------------------------
# recipes


def _lr_at(step: int, r: Recipe) -> float:
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    p = (step - r.warmup_steps) / max(1, r.steps - r.warmup_steps)
    return 1e-6 + (r.lr - 1e-6) * 0.5 * (1 + math.cos(math.pi * p))


def _param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for m in modules:
        for name, p in m.named_parameters():
            if not p.requires_grad:
                continue
            skip = p.ndim <= 1 or name.endswith(("cls_token", "pos_embed", "mask_token", "relative_position_bias_table"))
            (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _batches(n: int, r: Recipe, g: torch.Generator):
    """Yields index batches for ``r.steps`` steps, reshuffling every pass over the data."""
    perm, pos = torch.randperm(n, generator=g), 0
    for _ in range(r.steps):
        if pos + r.batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        yield perm[pos : pos + r.batch_size]
        pos += r.batch_size


class _MIMDecoder(nn.Module):
    """SimMIM's head: LayerNorm + linear map from each patch token to its pixels."""

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch * patch * 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pred(self.norm(tokens))


def _mim_forward(model: nn.Module, mask_token: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """timm Beit's forward_features with masked patch embeddings replaced by the mask token."""
    tokens = model.patch_embed(x)  # [B,P,D]
    w = mask.unsqueeze(-1).to(tokens.dtype)
    tokens = tokens * (1 - w) + mask_token.to(tokens.dtype) * w
    tokens = torch.cat((model.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
    if model.pos_embed is not None:
        tokens = tokens + model.pos_embed
    rel = model.rel_pos_bias() if model.rel_pos_bias is not None else None
    for blk in model.blocks:
        tokens = blk(tokens, shared_rel_pos_bias=rel)
    return tokens[:, model.num_prefix_tokens :]


def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def _train_mim(model: nn.Module, r: Recipe, g: torch.Generator, progress: bool) -> dict:
    images = get_dataset(r.source, "train").images
    p = TINY_CONFIG["patch_size"]
    dim = TINY_CONFIG["embed_dim"]
    decoder = _MIMDecoder(dim, p)
    mask_token = nn.Parameter(torch.zeros(1, 1, dim))
    nn.init.trunc_normal_(mask_token, std=0.02)
    opt = torch.optim.AdamW(_param_groups([model, decoder], r.weight_decay) + [{"params": [mask_token], "weight_decay": 0.0}], lr=r.lr)
    num_patches = model.patch_embed.num_patches
    n_mask = int(round(r.mask_ratio * num_patches))
    losses = []
    bar = tqdm(_batches(len(images), r, g), total=r.steps, desc="tiny-mim", disable=not progress)
    for step, idx in enumerate(bar):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, r)
        x01 = augment(images[idx].float() / 255, g, scale=(0.6, 1.0), colour=0.0, gray_p=0.0)
        # exactly n_mask random patches per image
        mask = torch.zeros(len(idx), num_patches)
        mask.scatter_(1, torch.rand(len(idx), num_patches, generator=g).argsort(dim=1)[:, :n_mask], 1.0)
        pred = decoder(_mim_forward(model, mask_token, _norm(x01), mask))
        target = _patchify(x01, p)
        # per-patch normalised pixel targets (MAE / SimMIM option): shape, not mean colour
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        loss = ((pred - target).abs().mean(-1) * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    return {"final_loss": sum(losses[-20:]) / len(losses[-20:])}


class _DINOHead(nn.Module):
    """DINO's projection head: 3-layer MLP, L2-normalised bottleneck, weight-normalised last layer."""

    def __init__(self, dim: int, out_dim: int, hidden: int = 256, bottleneck: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.last.parametrizations.weight.original0.data.fill_(1.0)
        self.last.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


def _vit_features(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ViT's ``forward_features`` that also takes inputs smaller than the model's 32×32.

    Local crops are fed at their own (lower) resolution, as in DINO, with the position
    embedding bicubically resized to their patch grid: a 16×16 crop has 16 patches instead of
    64, so six of them cost about as much as 1.5 global views. The model's own size goes
    through timm's forward unchanged.
    """
    if tuple(x.shape[-2:]) == tuple(vit.patch_embed.img_size):
        return vit.forward_features(x)
    tokens = vit.patch_embed.norm(vit.patch_embed.proj(x).flatten(2).transpose(1, 2))
    h, w = x.shape[-2] // vit.patch_embed.patch_size[0], x.shape[-1] // vit.patch_embed.patch_size[1]
    gh, gw = vit.patch_embed.grid_size
    cls_pos, patch_pos = vit.pos_embed[:, :1], vit.pos_embed[:, 1:]
    patch_pos = patch_pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    tokens = torch.cat((vit.cls_token.expand(len(x), -1, -1) + cls_pos, tokens + patch_pos), dim=1)
    tokens = vit.norm_pre(vit.patch_drop(vit.pos_drop(tokens)))
    return vit.norm(vit.blocks(tokens))


def _dino_view(x01: torch.Tensor, g: torch.Generator, r: Recipe, local: bool) -> torch.Tensor:
    """One DINO view of a batch: a global (32×32) or local (``r.local_size``) crop, augmented.

    Colour jitter (brightness / contrast / saturation, no hue shift, so that the objects' class
    hue survives), random grayscale, Gaussian blur and solarisation, each drawn per image. They
    make the two views of an image disagree on the colours and the fine texture of the
    background they share, so matching them is no longer solvable from the background alone.
    No masks and no labels are used.
    """
    scale = (r.local_crop_scale[0], r.local_crop_scale[1]) if local else (r.crop_scale, 1.0)
    x = augment(x01, g, scale=scale, colour=r.colour_jitter, gray_p=r.gray_p)
    b = len(x)
    if r.blur_p > 0:
        # separable 3×3 Gaussian with a per-image sigma in [0.1, 1.0] px
        sigma = 0.1 + 0.9 * torch.rand(b, generator=g)
        k = torch.exp(-(torch.tensor([-1.0, 0.0, 1.0])[None] ** 2) / (2 * sigma[:, None] ** 2))
        k = k / k.sum(-1, keepdim=True)  # [B,3]
        xp = F.pad(x, (1, 1, 1, 1), mode="reflect")
        xb = k[:, 0, None, None, None] * xp[..., :, :-2] + k[:, 1, None, None, None] * xp[..., :, 1:-1] + k[:, 2, None, None, None] * xp[..., :, 2:]
        xb = k[:, 0, None, None, None] * xb[..., :-2, :] + k[:, 1, None, None, None] * xb[..., 1:-1, :] + k[:, 2, None, None, None] * xb[..., 2:, :]
        x = torch.where(torch.rand(b, 1, 1, 1, generator=g) < r.blur_p, xb, x)
    if r.solarize_p > 0:
        x = torch.where(torch.rand(b, 1, 1, 1, generator=g) < r.solarize_p, torch.where(x >= 0.5, 1 - x, x), x)
    if local:
        # the crop was resampled at 32×32; area-downsampling gives the low-resolution local view
        x = F.interpolate(x, size=(r.local_size, r.local_size), mode="area")
    return x


def _train_dino(model: nn.Module, r: Recipe, g: torch.Generator, progress: bool) -> dict:
    images = get_dataset(r.source, "train").images
    dim = TINY_CONFIG["embed_dim"]
    student = nn.ModuleDict({"backbone": model, "head": _DINOHead(dim, r.out_dim)})
    teacher = copy.deepcopy(student)
    for q in teacher.parameters():
        q.requires_grad = False
    teacher.eval()
    center = torch.zeros(1, r.out_dim)
    opt = torch.optim.AdamW(_param_groups([student], r.weight_decay), lr=r.lr)
    s_params = [p for p in student.parameters()]
    t_params = [p for p in teacher.parameters()]
    losses, entropies = [], []

    def embed(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return net["head"](net["backbone"].forward_head(_vit_features(net["backbone"], x), pre_logits=True))

    bar = tqdm(_batches(len(images), r, g), total=r.steps, desc="tiny-dino", disable=not progress)
    for step, idx in enumerate(bar):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, r)
        x01 = images[idx].float() / 255
        b = len(idx)
        globals_ = _norm(torch.cat([_dino_view(x01, g, r, local=False) for _ in range(2)]))
        locals_ = [_norm(_dino_view(x01, g, r, local=True)) for _ in range(r.local_crops)]
        # DINO's teacher-temperature warm-up: a softer target while the centre settles avoids
        # an early collapse onto one prototype
        warm = min(1.0, step / max(1, r.teacher_temp_warmup_steps))
        t_temp = r.teacher_temp_start + (r.teacher_temp - r.teacher_temp_start) * warm
        with torch.no_grad():
            t_out = embed(teacher, globals_)
            t_prob = F.softmax((t_out - center) / t_temp, dim=-1).chunk(2)
        # the teacher sees only the global views, the student all views (global + local)
        s_out = [embed(student, globals_)] + ([embed(student, torch.cat(locals_))] if locals_ else [])
        s_logp = torch.cat(s_out) / r.student_temp
        s_logp = F.log_softmax(s_logp, dim=-1).split(b)
        loss, n_terms = 0.0, 0
        for ti, tp in enumerate(t_prob):
            for si, sl in enumerate(s_logp):
                if si == ti:  # never the same view
                    continue
                loss = loss - (tp * sl).sum(-1).mean()
                n_terms += 1
        loss = loss / n_terms
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()
        with torch.no_grad():
            m = 1 - (1 - r.teacher_momentum) * (math.cos(math.pi * step / r.steps) + 1) / 2
            torch._foreach_mul_(t_params, m)
            torch._foreach_add_(t_params, s_params, alpha=1 - m)
            center.mul_(r.center_momentum).add_(t_out.mean(0, keepdim=True), alpha=1 - r.center_momentum)
            # entropy of the batch-mean teacher distribution: near 0 means collapse onto one output
            mean_p = torch.cat(t_prob).mean(0)
            entropies.append(-(mean_p * mean_p.clamp_min(1e-12).log()).sum().item())
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", H=f"{entropies[-1]:.2f}")
    # DINO evaluates (and ships) the teacher: the EMA weights are the better backbone.
    model.load_state_dict(teacher["backbone"].state_dict())
    return {"final_loss": sum(losses[-20:]) / len(losses[-20:]), "teacher_mean_entropy": sum(entropies[-20:]) / len(entropies[-20:])}


def _train_supervised(model: nn.Module, r: Recipe, g: torch.Generator, progress: bool) -> dict:
    ds = get_dataset(r.source, "train")
    images, labels = ds.images, ds.labels
    opt = torch.optim.AdamW(_param_groups([model], r.weight_decay), lr=r.lr)
    losses, accs = [], []
    bar = tqdm(_batches(len(images), r, g), total=r.steps, desc=f"supervised {r.source}", disable=not progress)
    for step, idx in enumerate(bar):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, r)
        x = _norm(augment(images[idx].float() / 255, g, scale=(0.6, 1.0), colour=0.2, gray_p=0.0))
        logits = model(x)
        loss = F.cross_entropy(logits, labels[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        accs.append((logits.argmax(-1) == labels[idx]).float().mean().item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", acc=f"{sum(accs[-20:]) / len(accs[-20:]):.3f}")
    val = get_dataset(r.source, "val")
    x, y, _ = val.get_batch(slice(None))
    with torch.no_grad():
        model.eval()
        source_val = (torch.cat([model(x[i : i + 500]) for i in range(0, len(x), 500)]).argmax(-1) == y).float().mean().item()
        model.train()
    return {"final_loss": sum(losses[-20:]) / len(losses[-20:]), "source_val_acc": source_val}


def pretrain(
    preset: str,
    out_dir: str | Path = WEIGHTS_DIR,
    recipe: Recipe | None = None,
    progress: bool = True,
    probe_sizes: tuple[int, int] = (2000, 1000),
) -> dict:
    """Runs one preset's recipe and writes ``<preset>.safetensors`` and ``<preset>.json``.

    Args:
        preset: One of :data:`iavutils.world.models.TINY_PRESETS`.
        out_dir: Where to write (default: the package's ``weights/``).
        recipe: Overrides :data:`RECIPES` ``[preset]`` (tests use a few steps).
        progress: Show a progress bar.
        probe_sizes: Target images ``(train, val)`` of the k-NN probe.

    Returns:
        The record written to the JSON file.
    """
    r = recipe or RECIPES[preset]
    out_dir = Path(out_dir)
    torch.manual_seed(r.seed)
    random_model = build_model(preset, 0)  # the random-init baseline: same seed, same init
    torch.manual_seed(r.seed)
    num_classes = get_dataset(r.source, "train").num_classes if r.method == "supervised" else 0
    model = build_model(preset, num_classes)
    model.train()
    g = torch.Generator().manual_seed(r.seed)

    t0 = time.perf_counter()
    train = {"mim": _train_mim, "dino": _train_dino, "supervised": _train_supervised}[r.method]
    stats = train(model, r, g, progress)
    seconds = time.perf_counter() - t0
    model.eval()

    probe_pre = knn_probe(model, *probe_sizes)
    probe_rand = knn_probe(random_model, *probe_sizes)
    record = {
        "preset": preset,
        "recipe": asdict(r),
        "architecture": dict(TINY_CONFIG, arch=type(model).__name__),
        "seed": r.seed,
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "knn_probe_target": {"pretrained": probe_pre, "random_init": probe_rand, "k": 20, "train": probe_sizes[0], "val": probe_sizes[1]},
        "stats": stats,
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()},
        "command": f"python -m iavutils.world.pretrain --preset {preset}",
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out_dir / f"{preset}.safetensors", lambda p: save_file(state, p, metadata={"preset": preset, "recipe": json.dumps(asdict(r))}))
    atomic_write_json(out_dir / f"{preset}.json", record)
    print(
        f"{preset}: {r.method} on {r.source}, {seconds:.0f}s; k-NN probe on the target: "
        f"pretrained {probe_pre:.3f} vs random init {probe_rand:.3f}",
        flush=True,
    )
    return record


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m iavutils.world.pretrain --all | --preset NAME [--threads N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="all four tiny presets, one after another")
    which.add_argument("--preset", choices=TINY_PRESETS, action="append", help="one preset (repeatable)")
    parser.add_argument("--out", default=str(WEIGHTS_DIR), help="output directory (default: the package's weights/)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = TINY_PRESETS if args.all else args.preset
    for preset in presets:
        pretrain(preset, args.out, progress=not args.no_progress)


if __name__ == "__main__":
    main()
