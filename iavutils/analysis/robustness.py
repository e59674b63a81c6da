"""Chapter 01, generalization and robustness (IAV paper, Fig. 3): accuracy under distribution shifts.

The clean accuracy of each finetuned model on the held-out splits (Fig. 3a) and its accuracy
under Gaussian blur and jigsaw shuffles (Fig. 3b–d), each cached per checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from .checkpoints import (
    _presets_module,
    _progress,
    checkpoint_epochs,
    checkpoint_key,
    load_finetuned,
    resolve_device,
    result_store,
)
from .images import default_split, load_images
from .study import Study

__all__ = ["BLUR_DEGREES", "accuracy", "accuracy_table", "robustness_curves"]

#: Gaussian blur degrees of Fig. 3b (``shifts.gaussian_blur``'s degree; 0 = clean).
BLUR_DEGREES: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, device: torch.device, batch_size: int = 256) -> Tensor:
    preds = [model(x[sl].to(device)).argmax(1).cpu() for sl in _batches(x.shape[0], batch_size)]
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def accuracy(
    study: Study, preset: str, epoch: int | None = None, *, split: str | None = None, num_eval: int | None = None
) -> float:
    """Top-1 accuracy (fraction) of a checkpoint on a split (or a seeded subset of it), cached.

    Args:
        study: The dataset, run and spec (:class:`~iavutils.analysis.study.Study`); used from
            its spec: ``seed`` (the subset) and ``device``.
        preset: Preset name.
        epoch: Checkpoint epoch (``None``: the last one).
        split: Default :func:`~iavutils.analysis.images.default_split`.
        num_eval: Images of the split (``None``/0: all of them).
    """
    dataset, run_dir, spec = study.dataset, study.run_dir, study.spec
    seed = spec.seed
    if epoch is None:
        epoch = checkpoint_epochs(preset, dataset, run_dir)[-1]
    split = split or default_split(dataset)
    key = {**checkpoint_key(preset, dataset, epoch, run_dir), "split": split, "num_eval": int(num_eval or 0),
           "seed": int(seed)}

    def compute() -> dict[str, Tensor]:
        dev = resolve_device(spec.device)
        model, info = load_finetuned(preset, dataset, run_dir, epoch, dev)
        data = load_images(dataset, info, num_eval, seed, split=split)
        correct = (_predict(model, data["x"], dev) == data["y"]).float()
        return {"accuracy": correct.mean().reshape(1), "n": torch.tensor([correct.numel()])}

    return float(result_store(run_dir).cached("accuracy", key, compute)["accuracy"][0])


def accuracy_table(
    study: Study, *, splits: Sequence[str] | None = None, num_eval: int | None = None
) -> pd.DataFrame:
    """Final-checkpoint accuracy (%) of each model on each held-out split, one row per model.

    ``num_eval`` and the study's spec (its ``seed`` and ``device``) as in :func:`accuracy`;
    ``splits`` defaults to ``val`` and ``test`` for the embedded dataset, else ``test``.
    """
    dataset = study.dataset
    if splits is None:
        splits = ("val", "test") if dataset == "embedded" else ("test",)
    info = _presets_module().PRESETS
    rows = []
    for p in study.presets:
        row = {"model": p, "pretraining": info[p].pretraining}
        for s in splits:
            row[f"{s} accuracy (%)"] = 100.0 * accuracy(study, p, split=s, num_eval=num_eval)
        rows.append(row)
    return pd.DataFrame(rows)


def _jigsaw_swaps(num_tiles: int) -> list[int]:
    # 0, then ×4 up to the number of tiles (as many swaps as tiles ≈ a full shuffle); for 4 tiles
    # every count 0..4 would be too coarse to skip, so small puzzles get 0, 1, 2, 4.
    if num_tiles <= 4:
        return sorted({0, 1, min(2, num_tiles), num_tiles})
    swaps = [0, 1]
    while swaps[-1] * 4 < num_tiles:
        swaps.append(swaps[-1] * 4)
    return swaps + [num_tiles]


def robustness_curves(
    study: Study,
    *,
    num_eval: int | None = None,
    blur_degrees: Sequence[float] = BLUR_DEGREES,
    jigsaw_swaps_2: Sequence[int] | None = None,
    jigsaw_swaps_grid: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Accuracy of the last checkpoint under distribution shifts (Fig. 3b–d), cached per model.

    Shifts: Gaussian blur of each degree (in [0,1] pixel space, then re-normalised); jigsaw with
    a 2×2 grid and with the model's own patch grid (tiles = patches), each for a number of tile
    swaps. Jigsaw randomness is seeded per (shift, level), identical for every model.

    Args:
        study: What is analysed (:class:`~iavutils.analysis.study.Study`); used from its spec:
            ``seed`` (the subset and the jigsaw), ``device`` and ``progress``.
        num_eval: Held-out images (``None``/0: the whole split).
        blur_degrees: Gaussian blur degrees (0 = clean).
        jigsaw_swaps_2: Tile swaps of the 2×2 jigsaw (``None``: 0, 1, 2, 4).
        jigsaw_swaps_grid: Tile swaps of the patch-grid jigsaw (``None``: 0, 1, 4, ... tiles).

    Returns:
        Columns ``model, shift ("blur" | "jigsaw g=2" | "jigsaw g=<grid>"), shift_kind
        ("blur" | "jigsaw-2" | "jigsaw-grid"), level, accuracy`` (accuracy in %).
    """
    from ..core.hooks import model_geometry
    from ..world.shifts import gaussian_blur, jigsaw

    dataset, run_dir, spec = study.dataset, study.run_dir, study.spec
    seed = spec.seed
    rows = []
    for p in _progress(study.presets, "robustness", spec.progress):
        epoch = checkpoint_epochs(p, dataset, run_dir)[-1]
        dev = resolve_device(spec.device)
        holder: dict[str, Any] = {}

        def model_info() -> tuple[nn.Module, Any]:
            if "m" not in holder:
                holder["m"] = load_finetuned(p, dataset, run_dir, epoch, dev)
            return holder["m"]

        grid = _presets_module().PRESETS[p].grid
        g = int(grid[0])
        s2 = list(jigsaw_swaps_2) if jigsaw_swaps_2 is not None else _jigsaw_swaps(4)
        sg = list(jigsaw_swaps_grid) if jigsaw_swaps_grid is not None else _jigsaw_swaps(g * g)
        key = {**checkpoint_key(p, dataset, epoch, run_dir), "num_eval": int(num_eval or 0), "seed": int(seed), "blur": [float(d) for d in blur_degrees],
               "jigsaw2": s2, "jigsawg": sg}

        def compute() -> dict[str, Tensor]:
            model, info = model_info()
            geo_grid = model_geometry(model).grid
            if geo_grid[0] != geo_grid[1]:
                raise ValueError(f"jigsaw needs a square patch grid, {p} has {geo_grid}")
            data = load_images(dataset, info, num_eval, seed)
            x, y = data["x"], data["y"]
            x01 = info.denormalize(x)
            clean = (_predict(model, x, dev) == y).float().mean()  # level 0 of every shift
            res = {}
            res["blur"] = torch.stack([
                clean if d == 0 else (_predict(model, info.normalize(gaussian_blur(x01, float(d)).clamp(0, 1)), dev) == y).float().mean()
                for d in blur_degrees
            ])
            for name, gs, swaps in (("jigsaw2", 2, s2), ("jigsawg", geo_grid[0], sg)):
                accs = []
                for i, s in enumerate(swaps):
                    gen = torch.Generator().manual_seed(int(seed) * 1000 + gs * 100 + i)
                    accs.append(clean if s == 0 else (_predict(model, jigsaw(x, gs, int(s), gen), dev) == y).float().mean())
                res[name] = torch.stack(accs)
            return res

        r = result_store(run_dir).cached("robustness", key, compute)
        for d, a in zip(blur_degrees, r["blur"].tolist()):
            rows.append({"model": p, "shift": "blur", "shift_kind": "blur", "level": float(d), "accuracy": 100 * a})
        for s, a in zip(s2, r["jigsaw2"].tolist()):
            rows.append({"model": p, "shift": "jigsaw g=2", "shift_kind": "jigsaw-2", "level": s, "accuracy": 100 * a})
        for s, a in zip(sg, r["jigsawg"].tolist()):
            rows.append({"model": p, "shift": f"jigsaw g={g}", "shift_kind": "jigsaw-grid", "level": s, "accuracy": 100 * a})
    return pd.DataFrame(rows)
