"""Model presets: the paper's four hub ViT-B/16 and four tiny, shipped, offline ViTs.

``load_model(preset, num_classes)`` returns a timm model plus its :class:`ModelInfo` (timm
name, input size, mean/std, pretraining type, method and source, geometry). Every preset is a
timm class (``VisionTransformer`` or ``Beit``), so hooks and attention recording run the real
code paths for the hub models and the tiny ones alike.

Real presets (DESIGN.md "Models") download from the Hugging Face hub on first use:

* ``beit``: the self-supervised-only BEiT-B/16 (masked image modelling on ImageNet-22k,
  ``microsoft/beit-base-patch16-224-pt22k``), whose Hugging Face ``transformers`` keys are
  converted into timm's ``Beit`` by :func:`convert_hf_beit_to_timm`. timm's own BEiT
  checkpoints are MIM followed by supervised ImageNet-22k finetuning; that one is the separately
  named preset ``beit-in22k-ft``.
* ``dino``, ``deit``, ``in21k``: timm checkpoints.

Tiny presets (32×32, patch 4, 6 blocks × 4 heads, width 64) load from
``iavutils/weights/<preset>.safetensors``, made by ``python -m iavutils.pretrain``.

timm's BEiT (real and tiny) classifies from the mean of the patch tokens, not from the CLS
token; IA-Scores still read the CLS row of the attention (DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

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
    "convert_hf_beit_to_timm",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

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


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads a weights file safely: safetensors, or a torch file with ``weights_only=True``.

    Checkpoints that wrap the weights (``{"model": ...}``, ``{"state_dict": ...}``) are unwrapped.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
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
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            path = hf_hub_download(hub_id, filename)
        except Exception as err:  # offline, not cached, or that file is not in the repo
            errors.append(f"{filename}: {type(err).__name__}: {err}")
            continue
        return load_state_dict_file(path)
    raise WeightsNotAvailableError(_offline_message(hub_id, "beit") + "\nDetails: " + " | ".join(errors))


def _offline_message(hub_id: str, preset: str) -> str:
    return (
        f"Pretrained weights for preset {preset!r} ({hub_id}) are not cached and could not be "
        f"downloaded (offline?). On a machine with network access run\n"
        f"    huggingface-cli download {hub_id}\n"
        f"(or `python -c \"import iavutils.models as m; m.load_model('{preset}')\"`) to fill the "
        f"Hugging Face cache (HF_HOME), or pass a local file: load_model('{preset}', weights='path/to/file')."
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
        num_classes: Outputs of a new, randomly initialised head. ``None`` keeps the pretrained
            head where there is one (tiny supervised presets, ``deit``, ``in21k``) and gives a
            feature extractor (identity head) otherwise.
        weights: A local weights file (safetensors, or a torch file read with
            ``weights_only=True``) used instead of the shipped/hub weights. Hugging Face BEiT
            keys are converted automatically.
        pretrained: ``False`` builds the architecture with random weights and touches no file
            or network.
        device: Where to put the model.

    Returns:
        ``(model, info)``; the model is in eval mode.

    Raises:
        WeightsNotAvailableError: Weights are neither shipped, cached nor downloadable.
    """
    info = _info(preset)
    state: dict[str, torch.Tensor] | None = None
    if weights is not None:
        state = load_state_dict_file(weights)
        origin = str(weights)
    elif pretrained and info.is_tiny:
        path = _tiny_weights_path(preset)
        if not path.exists():
            raise WeightsNotAvailableError(
                f"shipped weights for {preset!r} are missing: {path}. Recreate them with "
                f"`python -m iavutils.pretrain --preset {preset}` (or reinstall the package)."
            )
        from safetensors.torch import load_file

        state = load_file(path)
        origin = str(path)
    elif pretrained and preset == "beit":
        state = _download_beit_pt22k(info.hub_id)
        origin = info.hub_id

    if num_classes is None:
        if state is not None:
            num_classes = _pretrained_num_classes(preset, state)
        elif pretrained and not info.is_tiny:
            num_classes = timm.models.get_pretrained_cfg(info.timm_name).num_classes or 0
        else:
            num_classes = 0

    if pretrained and state is None and not info.is_tiny:
        # timm hub checkpoints: let timm download/cache and adapt them (head replaced by timm).
        try:
            model = timm.create_model(info.timm_name, pretrained=True, num_classes=num_classes)
        except Exception as err:
            if _looks_offline(err):
                raise WeightsNotAvailableError(_offline_message(info.hub_id, preset)) from err
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
