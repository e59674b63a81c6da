"""Supervised classification pretraining, the ``tiny-sup`` and ``tiny-sup21k`` recipes.

Cross-entropy with label smoothing on a labelled embedded source (``source-small``: 20 classes,
the ImageNet-1k role; ``source-large``: 60 classes, the ImageNet-21k role).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn
from ..core.progress import tqdm  # one progress helper: widgets, terminal, or the book runner

from .data import get_dataset
from .pretrain_recipes import Recipe, _batches, _lr_at, _norm, _param_groups, augment


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

