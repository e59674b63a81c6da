"""The head explorer's numbers (chapter 09): one image's attention, SmoothGrad and IAV per model.

For each finetuned model and each chosen image of the held-out split, :func:`load_head_maps`
computes (or reads from the run directory's cache) what the explorer widget
(:mod:`iavutils.publish.explorer`) shows: every head's class-token attention, the image's
SmoothGrad map and its IAV (``L × H`` IA-Scores), in a :class:`HeadMaps`.

The numbers come from the same path as chapters 02–07: :func:`iavutils.analysis.iavs.compute_iavs`
with the image's dataset index, so the SmoothGrad noise of image ``i`` is seeded by
``image_seed(seed, i)`` and the explorer's SmoothGrad of image ``i`` equals chapter 05's
(:func:`iavutils.analysis.iavs.checkpoint_analysis`) for the same checkpoint and
:class:`~iavutils.core.spec.AnalysisSpec`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..core.spec import AnalysisSpec

__all__ = [
    "HeadMaps",
    "compute_head_maps",
    "load_head_maps",
    "parse_indices",
]

# Bump when the computation changes, so that stale cache entries are not reused.
# 2: SmoothGrad seeded per image by image_seed(seed, index) through compute_iavs, as chapter 05
# (1 seeded every image's noise with the same generator).
_VERSION = 2


@dataclass
class HeadMaps:
    """What the explorer shows for one image of one model.

    Attributes:
        preset: model preset.
        image_index: index of the image in its split.
        image: pixels in [0, 1], ``[H,W,3]``.
        label: ground-truth class.
        prediction: the model's predicted class.
        target: the class SmoothGrad explains.
        smoothgrad: SmoothGrad map ``[H,W]`` (non-negative).
        cls_attn: each head's class-token attention over the patches, ``[L,H,gh,gw]``.
        scores: IA-Scores ``[L,H]`` (the image's IAV; NaN where undefined).
        class_names: names of the classes, if known.
        pretraining: ``"supervised"`` / ``"self-supervised"`` (for captions).
        n_samples: SmoothGrad samples used.
        noise_level: SmoothGrad noise level used.
    """

    preset: str
    image_index: int
    image: np.ndarray
    label: int
    prediction: int
    target: int
    smoothgrad: np.ndarray
    cls_attn: np.ndarray
    scores: np.ndarray
    class_names: tuple[str, ...] = ()
    pretraining: str = ""
    n_samples: int = AnalysisSpec.n_samples
    noise_level: float = AnalysisSpec.noise_level

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks ``L``."""
        return int(self.scores.shape[0])

    @property
    def num_heads(self) -> int:
        """Heads per block ``H``."""
        return int(self.scores.shape[1])

    def class_name(self, c: int) -> str:
        """Name of class ``c`` (its number if names are unknown)."""
        return self.class_names[c] if 0 <= c < len(self.class_names) else str(c)


def compute_head_maps(
    model: nn.Module,
    x: Tensor,
    target: int | None = None,
    spec: AnalysisSpec | None = None,
    *,
    index: int = 0,
) -> dict[str, Tensor]:
    """Attention, SmoothGrad and IA-Scores of one image, by chapter 05's path.

    :func:`iavutils.analysis.iavs.compute_iavs` on the one image with its dataset index: the
    engine's CLS rows and chunked SmoothGrad, the noise seeded by ``image_seed(spec.seed, index)``.

    Args:
        model: a timm ViT (eval mode is set for the computation).
        x: one model-normalised image ``[1,3,H,W]`` on the model's device.
        target: the class SmoothGrad explains; ``None``: the predicted class.
        spec: the analysis specification (``None``: the defaults): ``n_samples``,
            ``noise_level``, ``noise`` and ``seed`` of SmoothGrad; it runs on ``x``'s device.
            Its ``tol`` is ignored (the fixed-n mode): the precision mode is a rule over a
            dataset's global-IAVs, not one image's.
        index: the image's index in its split, which seeds its SmoothGrad noise.

    Returns:
        CPU tensors: ``logits [C]``, ``smoothgrad [H,W]``, ``cls_attn [L,H,P]``,
        ``scores [L,H]``, ``target []``.
    """
    from .iavs import compute_iavs

    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image [1,3,H,W], got {tuple(x.shape)}")
    # tol is a dataset-level stopping rule (every head's global-IAV within tol), meaningless
    # for one image; the explorer labels its maps with n_samples, so it computes with those.
    spec = (AnalysisSpec() if spec is None else spec).replace(device=str(x.device), tol=None)
    targets = None if target is None else torch.tensor([int(target)])
    r = compute_iavs(model, x, targets, spec, indices=torch.tensor([int(index)]))
    return {
        "logits": r["logits"][0].detach().float().cpu(),
        "smoothgrad": r["smoothgrad"][0].detach().float().cpu(),
        "cls_attn": r["cls_attn"][0].detach().float().cpu(),
        "scores": r["iav"][0].detach().float().cpu(),
        "target": r["targets"][0].clone(),
    }


def parse_indices(image_index: int | str | Sequence[int]) -> list[int]:
    """``3``, ``"3"``, ``"0,5,9"`` or ``[0, 5]`` -> a list of image indices."""
    if isinstance(image_index, str):
        out = [int(s) for s in image_index.split(",") if s.strip()]
    elif isinstance(image_index, int):
        out = [image_index]
    else:
        out = [int(i) for i in image_index]
    if not out:
        raise ValueError(f"no image index in {image_index!r}")
    return list(dict.fromkeys(out))


def load_head_maps(
    preset: str,
    dataset: str,
    run_dir: str,
    image_indices: Sequence[int],
    spec: AnalysisSpec | None = None,
    epoch: int | None = None,
) -> list[HeadMaps]:
    """Load a finetuned checkpoint and compute (or read from the run's cache) its head maps.

    Args:
        preset: model preset; it must have been finetuned on ``dataset`` in ``run_dir``
            (``00_finetune``).
        dataset: ``"embedded"`` or ``"cifar10"``.
        run_dir: the run directory.
        image_indices: images of the held-out split (``val`` for embedded data, else ``test``).
        spec: the analysis specification (``None``: the defaults): ``n_samples``,
            ``noise_level``, ``noise`` and ``seed`` of SmoothGrad, ``device``, and ``target``
            (``"label"``: explain the ground-truth class, as the other chapters do, or
            ``"predicted"``). ``num_images`` is not used: the images are ``image_indices``.
        epoch: checkpoint epoch; ``None``: the last one.

    Returns:
        One :class:`HeadMaps` per image.

    Raises:
        FileNotFoundError: the preset has no checkpoint in the run directory.
    """
    from ..world.data import get_dataset
    from ..world.training import load_checkpoint
    from .checkpoints import checkpoint_key, chosen_epoch, resolve_device, result_store
    from .images import default_split
    from .run_dirs import resolve_run_dir

    # The fixed-n mode, as compute_head_maps computes it, so that the cache key says what was computed.
    spec = (AnalysisSpec() if spec is None else spec).replace(tol=None)
    root = resolve_run_dir(run_dir)
    epoch = chosen_epoch(preset, dataset, root, epoch)
    dev = resolve_device(spec.device)
    model, info = load_checkpoint(str(root), dataset, preset, epoch=epoch)
    model = model.to(dev).eval()
    split = default_split(dataset)
    ds = get_dataset(dataset, split=split, info=info)
    names = tuple(getattr(ds, "classes", ()) or ())
    store = result_store(root)
    # The image set is image_indices, not a seeded subset: num_images is left out of the key.
    params = {k: v for k, v in spec.cache_key().items() if k != "num_images"}
    base = {**checkpoint_key(preset, dataset, epoch, root, _VERSION, version_field="version"), "split": split,
            **params}
    out = []
    for i in image_indices:
        if not 0 <= i < len(ds):
            raise IndexError(f"image_index {i} outside the {split} split of {dataset} (n={len(ds)})")
        item = ds[i]
        x, y = item[0].unsqueeze(0), int(item[1])
        key = {**base, "image_index": int(i)}

        def compute(x: Tensor = x, y: int = y, i: int = int(i)) -> dict[str, Tensor]:
            return compute_head_maps(model, x.to(dev), None if spec.target == "predicted" else y, spec, index=i)

        r = store.cached("explorer_head_maps", key, compute)
        gh, gw = info.grid if hasattr(info, "grid") else _square_grid(r["cls_attn"].shape[-1])
        L, H, _ = r["cls_attn"].shape
        out.append(HeadMaps(
            preset=preset, image_index=int(i),
            image=info.denormalize(x[0]).clamp(0, 1).permute(1, 2, 0).numpy(),
            label=y, prediction=int(r["logits"].argmax()), target=int(r["target"]),
            smoothgrad=r["smoothgrad"].numpy(), cls_attn=r["cls_attn"].reshape(L, H, gh, gw).numpy(),
            scores=r["scores"].numpy(), class_names=names,
            pretraining=getattr(info, "pretraining", ""), n_samples=spec.n_samples,
            noise_level=spec.noise_level,
        ))
    return out


def _square_grid(p: int) -> tuple[int, int]:
    s = int(round(math.sqrt(p)))
    if s * s != p:
        raise ValueError(f"cannot infer the patch grid of {p} patches")
    return s, s
