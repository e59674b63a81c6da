"""Model presets: the paper's four hub ViT-B/16 and four tiny, shipped, offline ViTs.

``load_model(preset, num_classes)`` returns a timm model plus its :class:`ModelInfo` (timm
name, input size, mean/std, pretraining type, method and source, geometry). Every preset is a
timm class (``VisionTransformer`` or ``Beit``), so hooks and attention recording run the real
code paths for the hub models and the tiny ones alike.

Real presets download from the Hugging Face hub on first use:

* ``beit``: the self-supervised-only BEiT-B/16 (masked image modelling on ImageNet-22k,
  ``microsoft/beit-base-patch16-224-pt22k``), whose Hugging Face ``transformers`` keys are
  converted into timm's ``Beit`` by :func:`convert_hf_beit_to_timm`. timm's own BEiT
  checkpoints are MIM followed by supervised ImageNet-22k finetuning; that one is the separately
  named preset ``beit-in22k-ft``.
* ``dino``, ``deit``, ``in21k``: timm checkpoints.

Tiny presets (32×32, patch 4, 6 blocks × 4 heads, width 64) load from
``iavutils/weights/<preset>.safetensors``, made by ``python -m iavutils.world.pretrain``.

timm's BEiT (real and tiny) classifies from the mean of the patch tokens, not from the CLS
token; IA-Scores still read the CLS row of the attention (book/methods.md).

The preset table lives in :mod:`iavutils.world.presets`, the hub access in
:mod:`iavutils.world.hub`, and reading weights files and converting state dicts in
:mod:`iavutils.world.weights`; their public names are importable from here as well.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

# Moved out of this module; imported back so that every name importable from here stays so.
# Tests patch WEIGHTS_DIR here: _tiny_weights_path reads it from this module's globals.
from .hub import (
    HUB_PROBE_TIMEOUT,  # patch it in iavutils.world.hub: the probe reads it there
    _download_beit_pt22k,
    _hub_access,
    _hub_offline,
    _looks_offline,
    _offline_message,
)
from . import presets
from .presets import (
    EXTRA_PRESETS,
    HALF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRESETS,
    REAL_PRESETS,
    TINY_CONFIG,
    TINY_PRESETS,
    WEIGHTS_DIR,
    ModelInfo,
    WeightsNotAvailableError,
    _info,
)
from .weights import _adapt_state, _load_backbone, convert_hf_beit_to_timm, load_state_dict_file, safetensors_problem

# The preset table's names are public here too, next to the model builders.
__all__ = [
    *presets.__all__,
    "load_model",
    "build_model",
    "load_state_dict_file",
    "safetensors_problem",
    "convert_hf_beit_to_timm",
]


# --------------------------------------------------------------------------------------------
# construction


def build_model(preset: str, num_classes: int = 0) -> nn.Module:
    """Builds a preset's architecture with random weights (no network).

    Args:
        preset: A name in :data:`PRESETS`.
        num_classes: Classifier outputs; 0 gives an identity head (features only).
    """
    info = _info(preset)
    if info.is_tiny:
        cfg = dict(TINY_CONFIG, num_classes=num_classes)
        if info.arch == "Beit":
            from timm.models.beit import Beit

            # Like BEiT-B: relative position bias per block, no absolute position embedding,
            # layer scale, mean-pooled head.
            return Beit(**cfg, use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1, global_pool="avg")
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(**cfg, global_pool="token", class_token=True)
    return timm.create_model(info.timm_name, pretrained=False, num_classes=num_classes)



def _tiny_weights_path(preset: str) -> Path:
    return WEIGHTS_DIR / f"{preset}.safetensors"


def _pretrained_num_classes(preset: str, state: Mapping[str, torch.Tensor]) -> int:
    return int(state["head.weight"].shape[0]) if "head.weight" in state else 0



def _check_num_classes(num_classes: object) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or int(num_classes) < 0:
        raise ValueError(
            f"num_classes must be a non-negative int (the outputs of a new head; 0: features only, no "
            f"head) or None (keep the pretrained head), got {num_classes!r}"
        )
    return int(num_classes)


def _headless_message(preset: str, why: str) -> str:
    return (
        f"load_model({preset!r}) needs an explicit num_classes: {why}. Pass num_classes=K for a new, "
        f"randomly initialised K-class head (e.g. num_classes=10), or num_classes=0 for the features "
        f"only (identity head, model(x) returns the pooled embedding)."
    )


def load_model(
    preset: str,
    num_classes: int | None = None,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelInfo]:
    """Builds a preset, loads its pretrained weights and puts a new head on it.

    Args:
        preset: A name in :data:`PRESETS` (``TINY_PRESETS``, ``REAL_PRESETS``, ``"beit-in22k-ft"``).
        num_classes: Outputs of a new, randomly initialised head; ``0`` gives a feature
            extractor (identity head). ``None`` keeps the pretrained head; presets whose weights
            have none (``tiny-dino``, ``tiny-mim``, ``dino``, ``beit``), ``pretrained=False``
            and headless ``weights`` files then raise a ValueError asking for an explicit
            ``num_classes``.
        weights: A local weights file (safetensors, or a torch file read with
            ``weights_only=True``) used instead of the shipped/hub weights. Hugging Face BEiT
            keys are converted automatically.
        pretrained: ``False`` builds the architecture with random weights and touches no file
            or network.
        device: Where to put the model.

    Returns:
        ``(model, info)``; the model is in eval mode.

    Hub presets fail within seconds when their weights are not cached and the hub cannot be
    reached (a TCP check of ``HUB_PROBE_TIMEOUT`` seconds), or at once with ``HF_HUB_OFFLINE=1``;
    cached weights load offline (huggingface_hub's offline mode is switched on for the call
    when the hub is unreachable, and restored afterwards).

    Raises:
        WeightsNotAvailableError: Weights are neither shipped, cached nor downloadable; the
            message names the ``hf download`` command, ``HF_HUB_OFFLINE`` and ``weights=``.
        ValueError: ``num_classes`` is not a non-negative int or ``None``, or is ``None`` where
            there is no pretrained head to keep; a weights file is truncated or unreadable.
    """
    info = _info(preset)
    num_classes = _check_num_classes(num_classes)
    hub = pretrained and weights is None and not info.is_tiny
    if num_classes is None:
        # Fail before any download when there is no pretrained head to keep.
        if not pretrained and weights is None:
            raise ValueError(_headless_message(preset, "with pretrained=False there is no pretrained head to keep"))
        if hub and (preset == "beit" or not (timm.models.get_pretrained_cfg(info.timm_name).num_classes or 0)):
            raise ValueError(_headless_message(preset, f"its pretrained weights ({info.hub_id}) have no classifier head"))
    state: dict[str, torch.Tensor] | None = None
    offline = False
    if hub:
        extra = getattr(timm.models.get_pretrained_cfg(info.timm_name), "hf_hub_filename", None)
        offline = _hub_access(info, preset, extra, num_classes)
    if weights is not None:
        state = load_state_dict_file(weights)
        origin = str(weights)
    elif pretrained and info.is_tiny:
        path = _tiny_weights_path(preset)
        if not path.exists():
            raise WeightsNotAvailableError(
                f"shipped weights for {preset!r} are missing: {path}. Recreate them with "
                f"`python -m iavutils.world.pretrain --preset {preset}` (or reinstall the package)."
            )
        state = load_state_dict_file(path)
        origin = str(path)
    elif pretrained and preset == "beit":
        with _hub_offline(offline):
            state = _download_beit_pt22k(info.hub_id)
        origin = info.hub_id

    if num_classes is None:
        if state is not None:
            num_classes = _pretrained_num_classes(preset, state)
            if num_classes == 0:
                raise ValueError(_headless_message(preset, f"its weights ({origin}) have no classifier head"))
        else:
            num_classes = timm.models.get_pretrained_cfg(info.timm_name).num_classes or 0

    if pretrained and state is None and not info.is_tiny:
        # timm hub checkpoints: let timm download/cache and adapt them (head replaced by timm).
        try:
            with _hub_offline(offline):
                model = timm.create_model(info.timm_name, pretrained=True, num_classes=num_classes)
        except Exception as err:
            if _looks_offline(err):
                raise WeightsNotAvailableError(
                    _offline_message(info.hub_id, preset, f"the download failed ({type(err).__name__}: {err})", num_classes)
                ) from err
            raise
    else:
        model = build_model(preset, num_classes)
        if state is not None:
            allow: tuple[str, ...] = ()
            if not info.is_tiny:
                if any(k.startswith("beit.") for k in state):
                    allow = ("fc_norm.weight", "fc_norm.bias")  # BEiT finetuning starts it fresh
                state = _adapt_state(model, state)
            _load_backbone(model, state, origin, allow)
    info = dataclasses.replace(info, num_classes=num_classes)
    return model.to(device).eval(), info
