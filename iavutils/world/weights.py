"""Weights files and state dicts: reading them safely, and fitting them into timm models.

:func:`load_state_dict_file` reads safetensors (checking the header for truncation first, with
:func:`safetensors_problem`) or a torch file with ``weights_only=True``. ``_load_backbone``
loads a state dict into a model, keeping the model's own head and refusing anything else that
does not fit; ``_adapt_state`` brings foreign key layouts into timm's, among them Hugging Face
``transformers`` BEiT, converted by :func:`convert_hf_beit_to_timm`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_state_dict_file", "safetensors_problem", "convert_hf_beit_to_timm"]


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
