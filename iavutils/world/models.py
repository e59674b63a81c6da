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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import numbers
import os
import re
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import timm
import torch
from torch import nn

__all__ = [
    "ModelInfo",
    "PRESETS",
    "TINY_PRESETS",
    "REAL_PRESETS",
    "EXTRA_PRESETS",
    "TINY_CONFIG",
    "WEIGHTS_DIR",
    "WeightsNotAvailableError",
    "load_model",
    "build_model",
    "load_state_dict_file",
    "safetensors_problem",
    "convert_hf_beit_to_timm",
]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"  # package data: iavutils/weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

# Shared by the four tiny presets so that they differ only in how they were pretrained.
TINY_CONFIG: dict = {
    "img_size": 32,
    "patch_size": 4,
    "embed_dim": 64,
    "depth": 6,
    "num_heads": 4,
    "mlp_ratio": 2.0,  # half the MLP FLOPs: the book runs everything on 2 CPU cores
}


class WeightsNotAvailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable (offline), or not shipped."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a preset is: architecture, preprocessing and pretraining.

    Attributes:
        preset: Preset name (``"tiny-dino"``, ``"deit"``, ...).
        timm_name: timm model name (with pretrained tag for hub presets, ``"beit_base_patch16_224"``
            for the converted BEiT; the tiny presets name their timm class).
        arch: timm class name, ``"VisionTransformer"`` or ``"Beit"``.
        input_size: ``(H, W)`` the model expects.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        pretraining: ``"supervised"`` or ``"self-supervised"``.
        method: Pretraining method in words (``"masked image modelling"``, ...).
        source: Pretraining data (``"ImageNet-22k"``, ``"embedded source-large"``, ...).
        num_prefix_tokens: Tokens before the patches (1: CLS).
        patch_size: Patch side in pixels.
        grid: Patch grid ``(gh, gw)``.
        hub_id: Where the weights come from (hub repository, or ``None`` for shipped weights).
        num_classes: Classifier outputs of the loaded model (0: no head).
    """

    preset: str
    timm_name: str
    arch: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretraining: str
    method: str
    source: str
    num_prefix_tokens: int = 1
    patch_size: int = 16
    grid: tuple[int, int] = (14, 14)
    hub_id: str | None = None
    num_classes: int | None = None

    @property
    def is_tiny(self) -> bool:
        """Whether this is an embedded (shipped, CPU-sized) preset."""
        return self.preset in TINY_PRESETS

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (3, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Maps pixels in [0, 1] (``[..., 3, H, W]``) to the model's normalised input."""
        mean, std = self._stats(x01)
        return (x01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Maps a model-normalised input (``[..., 3, H, W]``) back to [0, 1] pixel space."""
        mean, std = self._stats(x)
        return x * std + mean


def _tiny(preset: str, arch: str, pretraining: str, method: str, source: str) -> ModelInfo:
    grid = TINY_CONFIG["img_size"] // TINY_CONFIG["patch_size"]
    return ModelInfo(
        preset=preset,
        timm_name=f"{arch}(tiny)",
        arch=arch,
        input_size=(TINY_CONFIG["img_size"],) * 2,
        mean=HALF,
        std=HALF,
        pretraining=pretraining,
        method=method,
        source=source,
        num_prefix_tokens=1,
        patch_size=TINY_CONFIG["patch_size"],
        grid=(grid, grid),
    )


def _real(preset: str, timm_name: str, arch: str, mean, std, pretraining: str, method: str, source: str, hub_id: str):
    return ModelInfo(
        preset=preset,
        timm_name=timm_name,
        arch=arch,
        input_size=(224, 224),
        mean=mean,
        std=std,
        pretraining=pretraining,
        method=method,
        source=source,
        num_prefix_tokens=1,
        patch_size=16,
        grid=(14, 14),
        hub_id=hub_id,
    )


TINY_PRESETS = ("tiny-mim", "tiny-dino", "tiny-sup", "tiny-sup21k")
REAL_PRESETS = ("beit", "dino", "deit", "in21k")
EXTRA_PRESETS = ("beit-in22k-ft",)

PRESETS: dict[str, ModelInfo] = {
    "tiny-mim": _tiny("tiny-mim", "Beit", "self-supervised", "masked image modelling", "embedded source-large (unlabelled)"),
    "tiny-dino": _tiny("tiny-dino", "VisionTransformer", "self-supervised", "self-distillation (DINO)", "embedded source-small (unlabelled)"),
    "tiny-sup": _tiny("tiny-sup", "VisionTransformer", "supervised", "supervised classification", "embedded source-small"),
    "tiny-sup21k": _tiny("tiny-sup21k", "VisionTransformer", "supervised", "supervised classification", "embedded source-large"),
    "beit": _real(
        "beit", "beit_base_patch16_224", "Beit", HALF, HALF, "self-supervised",
        "masked image modelling (BEiT)", "ImageNet-22k (unlabelled)", "microsoft/beit-base-patch16-224-pt22k",
    ),
    "dino": _real(
        "dino", "vit_base_patch16_224.dino", "VisionTransformer", IMAGENET_MEAN, IMAGENET_STD,
        "self-supervised", "self-distillation (DINO)", "ImageNet-1k (unlabelled)", "timm/vit_base_patch16_224.dino",
    ),
    "deit": _real(
        "deit", "deit_base_patch16_224.fb_in1k", "VisionTransformer", IMAGENET_MEAN, IMAGENET_STD,
        "supervised", "supervised classification (DeiT)", "ImageNet-1k", "timm/deit_base_patch16_224.fb_in1k",
    ),
    "in21k": _real(
        "in21k", "vit_base_patch16_224.augreg_in21k", "VisionTransformer", HALF, HALF,
        "supervised", "supervised classification (AugReg)", "ImageNet-21k", "timm/vit_base_patch16_224.augreg_in21k",
    ),
    "beit-in22k-ft": _real(
        "beit-in22k-ft", "beit_base_patch16_224.in22k_ft_in22k", "Beit", HALF, HALF, "supervised",
        "masked image modelling, then supervised ImageNet-22k finetuning", "ImageNet-22k",
        "timm/beit_base_patch16_224.in22k_ft_in22k",
    ),
}


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


def _info(preset: str) -> ModelInfo:
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}") from None


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a safetensors file, read from its header alone (``None``: looks whole).

    A truncated file (a copy cut short, a full disk) is caught without reading the tensors: the
    header's data offsets must end exactly at the end of the file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n <= 0 or 8 + n > size:
                return f"truncated: {size} bytes, too short for its header"
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except Exception as err:  # unreadable header: not a safetensors file at all
        return f"not a readable safetensors file ({type(err).__name__}: {err})"
    if 8 + n + end != size:
        return f"truncated: {size} bytes, its header describes {8 + n + end}"
    return None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads a weights file safely: safetensors, or a torch file with ``weights_only=True``.

    Checkpoints that wrap the weights (``{"model": ...}``, ``{"state_dict": ...}``) are unwrapped.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is truncated or not a weights file; the message names it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        problem = safetensors_problem(path)
        if problem is None:
            try:
                return load_file(path)
            except Exception as err:
                problem = f"{type(err).__name__}: {err}"
        raise ValueError(
            f"cannot read the weights file {path}: {problem}. It is damaged or incompletely copied; "
            f"replace it (copy, download or re-create it)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"cannot read the weights file {path} ({type(err).__name__}: {err}). Expected safetensors or a "
            f"torch.save file of tensors (read with weights_only=True); replace a truncated or damaged file "
            f"(copy, download or re-create it)."
        ) from err
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict")
    return dict(state)


def _head_keys(model: nn.Module) -> set[str]:
    return {k for k in model.state_dict() if k.startswith("head.")}


def _load_backbone(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str, allow_missing: tuple[str, ...] = ()) -> None:
    """Loads ``state`` into ``model``, keeping the model's own head where shapes disagree.

    Anything else missing or unexpected is an error: a silently half-loaded model would make
    every later measurement meaningless. ``allow_missing`` lists keys that may stay at their
    initialisation (the classifier LayerNorm of a converted BEiT).
    """
    own = model.state_dict()
    state = dict(state)
    for key in list(state):
        if key.startswith("head.") and (key not in own or own[key].shape != state[key].shape):
            del state[key]  # a new head for the new task
    # Buffers timm recomputes (relative position index) need not be in a checkpoint.
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [
        k for k in missing if not k.startswith("head.") and not k.endswith("relative_position_index") and k not in allow_missing
    ]
    if missing or unexpected:
        raise ValueError(f"weights from {origin} do not fit: missing {missing[:8]}, unexpected {list(unexpected)[:8]}")
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(f"weights from {origin}: {key} has shape {tuple(value.shape)}, model wants {tuple(own[key].shape)}")


def _adapt_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Brings foreign key layouts (Hugging Face BEiT, original DINO/DeiT files) into timm's."""
    if any(k.startswith("beit.") for k in state):
        return convert_hf_beit_to_timm(state, num_layers=len(model.blocks))
    if "rel_pos_bias.relative_position_bias_table" in state and hasattr(model.blocks[0].attn, "relative_position_bias_table"):
        state = _expand_shared_rel_pos_bias(state, len(model.blocks))
    filter_fn = getattr(__import__(type(model).__module__, fromlist=["checkpoint_filter_fn"]), "checkpoint_filter_fn", None)
    if filter_fn is not None and not set(state) <= set(model.state_dict()):
        state = filter_fn(state, model)
    return state


def _tiny_weights_path(preset: str) -> Path:
    return WEIGHTS_DIR / f"{preset}.safetensors"


def _pretrained_num_classes(preset: str, state: Mapping[str, torch.Tensor]) -> int:
    return int(state["head.weight"].shape[0]) if "head.weight" in state else 0


def _download_beit_pt22k(hub_id: str) -> dict[str, torch.Tensor]:
    from huggingface_hub import hf_hub_download

    errors = []
    for filename in _HUB_WEIGHT_FILES:
        try:
            path = hf_hub_download(hub_id, filename)
        except Exception as err:  # offline, not cached, or that file is not in the repo
            errors.append(f"{filename}: {type(err).__name__}: {err}")
            continue
        return load_state_dict_file(path)
    raise WeightsNotAvailableError(_offline_message(hub_id, "beit", "the download failed") + "\nDetails: " + " | ".join(errors))


# The weights files timm and transformers look for in a hub repository, safest first.
_HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

HUB_PROBE_TIMEOUT = 2.0
"""Seconds the reachability check of the hub may take before the hub counts as unreachable."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _hub_offline_requested() -> bool:
    """``HF_HUB_OFFLINE`` is set, now (environment) or when huggingface_hub was imported."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or _truthy(os.environ.get("HF_HUB_OFFLINE"))


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hub_cached_file(hub_id: str, extra: str | None = None) -> str | None:
    """A weights file of ``hub_id`` in the local Hugging Face cache, or ``None``."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ((extra,) if extra else ()) + _HUB_WEIGHT_FILES:
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return found
    return None


def _hub_probe_address() -> tuple[str, int]:
    """Host and port a download would connect to first: the HTTPS proxy if one is set, else the hub."""
    from huggingface_hub import constants

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if os.environ.get(var):
            url = urlsplit(os.environ[var] if "//" in os.environ[var] else "//" + os.environ[var])
            return url.hostname or "", url.port or 80
    url = urlsplit(constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def _hub_reachable(timeout: float | None = None) -> tuple[bool, str]:
    """Whether a TCP connection to the hub (or the proxy) opens within ``timeout`` seconds.

    Name resolution has no timeout of its own, so the probe runs in a daemon thread that is
    abandoned when it takes too long.

    Returns:
        ``(reachable, why_not)``.
    """
    timeout = HUB_PROBE_TIMEOUT if timeout is None else timeout
    host, port = _hub_probe_address()
    result: dict[str, str] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = ""
        except OSError as err:
            result["error"] = f"{type(err).__name__}: {err}"

    thread = threading.Thread(target=probe, name="iav-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if "ok" in result:
        return True, ""
    return False, f"the hub ({host}:{port}) cannot be reached ({result.get('error', f'no answer within {timeout:g} s')})"


@contextlib.contextmanager
def _hub_offline(enabled: bool) -> Iterator[None]:
    """Runs the body with huggingface_hub's offline mode on (cache only), then restores it."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    if enabled:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _hub_access(info: ModelInfo, preset: str, extra_file: str | None = None, num_classes: int | None = None) -> bool:
    """Decides, in seconds, how the hub weights of ``preset`` can be had.

    Returns:
        Whether to load from the cache in offline mode (cached, and the hub is unreachable or
        ``HF_HUB_OFFLINE`` is set). ``False``: download (or revalidate) normally.

    Raises:
        WeightsNotAvailableError: Not cached, and offline mode is set or the hub is unreachable.
    """
    cached = _hub_cached_file(info.hub_id, extra_file)
    if _hub_offline_requested():
        if cached is None:
            raise WeightsNotAvailableError(
                _offline_message(info.hub_id, preset, "HF_HUB_OFFLINE=1 is set, so nothing is downloaded", num_classes)
            )
        return True
    reachable, why = _hub_reachable()
    if cached is None and not reachable:
        raise WeightsNotAvailableError(_offline_message(info.hub_id, preset, why, num_classes))
    return not reachable


def _offline_message(hub_id: str, preset: str, reason: str, num_classes: int | None = None) -> str:
    heads = f"num_classes={num_classes if num_classes is not None else 10}"
    return (
        f"Pretrained weights for preset {preset!r} (hub repository {hub_id}) are not in the local "
        f"Hugging Face cache ({_hub_cache_dir()}), and {reason}. Either\n"
        f"  * on a machine with network access run\n"
        f"        hf download {hub_id}\n"
        f"    (the command-line tool of huggingface_hub; it fills the cache under HF_HOME, default "
        f"~/.cache/huggingface), copy that cache to this machine (same HF_HOME) and set HF_HUB_OFFLINE=1 "
        f"to load it without any network access; or\n"
        f"  * pass a local weights file: load_model({preset!r}, {heads}, weights='path/to/model.safetensors')."
    )


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


def _looks_offline(err: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(err)}
    offline = {
        "LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectError",
        "URLError", "MaxRetryError", "NewConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout",
        "gaierror", "HfHubHTTPError", "ProxyError", "socket.timeout",
    }
    return bool(names & offline) or isinstance(err, OSError)


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


# --------------------------------------------------------------------------------------------
# Hugging Face BEiT (transformers' BeitForMaskedImageModeling / BeitModel) -> timm Beit

_HF_BLOCK = re.compile(r"^(?:beit\.)?encoder\.layer\.(\d+)\.(.+)$")

_HF_BLOCK_MAP = {
    "layernorm_before.weight": "norm1.weight",
    "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight",
    "layernorm_after.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "intermediate.dense.weight": "mlp.fc1.weight",
    "intermediate.dense.bias": "mlp.fc1.bias",
    "output.dense.weight": "mlp.fc2.weight",
    "output.dense.bias": "mlp.fc2.bias",
    "lambda_1": "gamma_1",
    "lambda_2": "gamma_2",
    "attention.attention.query.bias": "attn.q_bias",
    "attention.attention.value.bias": "attn.v_bias",
    "attention.attention.relative_position_bias.relative_position_bias_table": "attn.relative_position_bias_table",
}

# Keys with no counterpart in a classification Beit: MIM-only parts, and buffers timm recomputes.
_HF_DROPPED = re.compile(
    r"(^(?:beit\.)?embeddings\.mask_token$)|(^lm_head\.)|(relative_position_index$)"
    r"|(^layernorm\.)|(^(?:beit\.)?layernorm\.)"
)


def _expand_shared_rel_pos_bias(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    # The original BEiT finetuning code copies the shared table into every block when the
    # finetuned model has per-block relative position bias; timm's beit_base_patch16_224 does.
    state = dict(state)
    table = state.pop("rel_pos_bias.relative_position_bias_table")
    state.pop("rel_pos_bias.relative_position_index", None)
    for i in range(num_layers):
        state.setdefault(f"blocks.{i}.attn.relative_position_bias_table", table.clone())
    return state


def convert_hf_beit_to_timm(state_dict: Mapping[str, torch.Tensor], num_layers: int | None = None) -> dict[str, torch.Tensor]:
    """Converts a Hugging Face ``transformers`` BEiT state dict into timm ``Beit`` keys.

    Handles ``microsoft/beit-base-patch16-224-pt22k`` (``BeitForMaskedImageModeling``): query /
    key / value are fused into ``attn.qkv.weight`` (BEiT has no key bias; timm keeps ``q_bias``
    and ``v_bias``), ``lambda_1/2`` become ``gamma_1/2``, and the encoder's shared relative
    position bias table is copied into every block, as the original BEiT finetuning code does.
    Pretraining-only parts are dropped: the mask token, the MIM head (``lm_head``) and the final
    ``layernorm`` — with mean pooling, timm's ``norm`` is an identity and ``fc_norm`` is a new
    LayerNorm, as in BEiT's own finetuning (which leaves ``fc_norm`` at its initialisation).

    Args:
        state_dict: Hugging Face keys (``beit.encoder.layer.0.attention.attention.query.weight``...).
        num_layers: Blocks to expand a shared relative position bias into (default: counted).

    Returns:
        A state dict for timm ``Beit(use_abs_pos_emb=False, use_rel_pos_bias=True, init_values>0)``
        (plus ``pos_embed`` if the checkpoint had absolute position embeddings). No head.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    shared_table = None
    unknown = []
    for key, value in state_dict.items():
        m = _HF_BLOCK.match(key)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            part = re.match(r"^attention\.attention\.(query|key|value)\.weight$", rest)
            if part:
                qkv.setdefault(i, {})[part.group(1)] = value
            elif rest == "attention.attention.key.bias":
                if torch.any(value != 0):
                    raise ValueError("BEiT has no key bias, but this checkpoint's key.bias is non-zero")
            elif rest in _HF_BLOCK_MAP:
                out[f"blocks.{i}.{_HF_BLOCK_MAP[rest]}"] = value
            elif _HF_DROPPED.search(key):
                continue
            else:
                unknown.append(key)
            continue
        plain = key[len("beit."):] if key.startswith("beit.") else key
        if plain == "embeddings.cls_token":
            out["cls_token"] = value
        elif plain == "embeddings.patch_embeddings.projection.weight":
            out["patch_embed.proj.weight"] = value
        elif plain == "embeddings.patch_embeddings.projection.bias":
            out["patch_embed.proj.bias"] = value
        elif plain == "embeddings.position_embeddings":
            out["pos_embed"] = value
        elif plain == "encoder.relative_position_bias.relative_position_bias_table":
            shared_table = value
        elif plain in ("pooler.layernorm.weight", "pooler.layernorm.bias"):
            out["fc_norm." + plain.rsplit(".", 1)[1]] = value  # finetuned HF classifiers keep it
        elif plain in ("classifier.weight", "classifier.bias"):
            out["head." + plain.split(".")[1]] = value
        elif _HF_DROPPED.search(key):
            continue
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unrecognised Hugging Face BEiT keys: {unknown[:8]}")
    for i, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"block {i}: incomplete query/key/value weights ({sorted(parts)})")
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    if shared_table is not None:
        layers = num_layers if num_layers is not None else (max(qkv) + 1 if qkv else 0)
        for i in range(layers):
            out.setdefault(f"blocks.{i}.attn.relative_position_bias_table", shared_table.clone())
    return out
