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
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from .data import get_dataset
from .models import TINY_CONFIG, TINY_PRESETS, WEIGHTS_DIR, build_model
from .pretrain_dino import _train_dino
from .pretrain_mim import _train_mim
from .pretrain_recipes import RECIPES, Recipe, augment
from .pretrain_supervised import _train_supervised
from .store import atomic_write, atomic_write_json

__all__ = ["RECIPES", "Recipe", "pretrain", "knn_probe", "augment", "features", "main"]


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
