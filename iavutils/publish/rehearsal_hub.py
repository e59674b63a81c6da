"""The rehearsal's model hub: a Hugging Face cache in the layout ``huggingface_hub`` writes.

For each real preset, random weights of the real shapes in the files its real repository
serves to our loaders (:data:`HUB_FILES`): timm's ``model.safetensors`` for ``dino``, ``deit``
and ``in21k``, and Microsoft's ``config.json`` + ``pytorch_model.bin``
(``BeitForMaskedImageModeling`` keys, shared relative position bias, mask token, MIM head) for
``beit``; written into ``hub/models--ORG--NAME/{blobs,refs/main,snapshots/<commit>/}`` by
:func:`make_hub_cache`. Used by :mod:`iavutils.publish.rehearsal` and the tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "HUB_FILES",
    "timm_beit_to_hf",
    "random_state_dict",
    "beit_pt22k_state_dict",
    "timm_hub_state_dict",
    "write_hub_repo",
    "make_hub_cache",
]

#: Hub repository of each real preset and the files its real repository serves to our loaders.
HUB_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "beit": ("microsoft/beit-base-patch16-224-pt22k", ("config.json", "preprocessor_config.json", "pytorch_model.bin")),
    "dino": ("timm/vit_base_patch16_224.dino", ("config.json", "model.safetensors")),
    "deit": ("timm/deit_base_patch16_224.fb_in1k", ("config.json", "model.safetensors")),
    "in21k": ("timm/vit_base_patch16_224.augreg_in21k", ("config.json", "model.safetensors")),
}


def timm_beit_to_hf(state: Mapping[str, Any], shared: bool = True, seed: int = 0,
                    vocab_size: int = 8192) -> dict[str, Any]:
    """A timm ``Beit`` state dict in the naming of Microsoft's pt22k checkpoint (the inverse of
    :func:`iavutils.world.models.convert_hf_beit_to_timm`, written independently of it).

    ``BeitForMaskedImageModeling`` as saved in ``microsoft/beit-base-patch16-224-pt22k``: query,
    key and value as separate linears (no key bias), ``lambda_1/2`` layer scales, the encoder's
    relative position bias shared by every block (``shared=True``; ``False`` gives a per-block
    table as in finetuned checkpoints), and the pretraining-only parts the conversion drops —
    the mask token, the final ``layernorm`` and the MIM head ``lm_head`` (``vocab_size``
    visual tokens) — filled with seeded random numbers.

    Args:
        state: timm ``Beit`` keys (``blocks.0.attn.qkv.weight``...), per-block relative
            position tables (block 0's becomes the shared one).
        shared: One encoder-level table instead of one per block.
        seed: Seeds the MIM-only parts.
        vocab_size: Rows of ``lm_head``.

    Returns:
        Hugging Face keys -> tensors.
    """
    import torch

    g = torch.Generator().manual_seed(int(seed))
    d = state["cls_token"].shape[-1]
    hf: dict[str, Any] = {
        "beit.embeddings.cls_token": state["cls_token"],
        "beit.embeddings.mask_token": 0.02 * torch.randn(1, 1, d, generator=g),
        "beit.embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "beit.embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
    }
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})

    def index_buffer(table: Any) -> Any:
        # The saved buffer: (N+1)^2 entries of a table with (2g-1)^2 + 3 rows; the values are
        # recomputed by every loader, only shape and dtype matter.
        num_rel = table.shape[0]
        side = int(round((num_rel - 3) ** 0.5))
        n = ((side + 1) // 2) ** 2 + 1
        return torch.randint(0, num_rel, (n, n), generator=g, dtype=torch.long)

    for i in blocks:
        p, b = f"blocks.{i}.", f"beit.encoder.layer.{i}."
        q, k, v = state[p + "attn.qkv.weight"].chunk(3)
        hf.update({
            b + "lambda_1": state[p + "gamma_1"],
            b + "lambda_2": state[p + "gamma_2"],
            b + "attention.attention.query.weight": q,
            b + "attention.attention.query.bias": state[p + "attn.q_bias"],
            b + "attention.attention.key.weight": k,
            b + "attention.attention.value.weight": v,
            b + "attention.attention.value.bias": state[p + "attn.v_bias"],
            b + "attention.output.dense.weight": state[p + "attn.proj.weight"],
            b + "attention.output.dense.bias": state[p + "attn.proj.bias"],
            b + "intermediate.dense.weight": state[p + "mlp.fc1.weight"],
            b + "intermediate.dense.bias": state[p + "mlp.fc1.bias"],
            b + "output.dense.weight": state[p + "mlp.fc2.weight"],
            b + "output.dense.bias": state[p + "mlp.fc2.bias"],
            b + "layernorm_before.weight": state[p + "norm1.weight"],
            b + "layernorm_before.bias": state[p + "norm1.bias"],
            b + "layernorm_after.weight": state[p + "norm2.weight"],
            b + "layernorm_after.bias": state[p + "norm2.bias"],
        })
        if not shared:
            table = state[p + "attn.relative_position_bias_table"]
            hf[b + "attention.attention.relative_position_bias.relative_position_bias_table"] = table
            hf[b + "attention.attention.relative_position_bias.relative_position_index"] = index_buffer(table)
    if shared:
        table = state["blocks.0.attn.relative_position_bias_table"]
        hf["beit.encoder.relative_position_bias.relative_position_bias_table"] = table
        hf["beit.encoder.relative_position_bias.relative_position_index"] = index_buffer(table)
    hf.update({
        "layernorm.weight": 1.0 + 0.02 * torch.randn(d, generator=g),
        "layernorm.bias": 0.02 * torch.randn(d, generator=g),
        "lm_head.weight": 0.02 * torch.randn(vocab_size, d, generator=g),
        "lm_head.bias": torch.zeros(vocab_size),
    })
    return hf


def random_state_dict(model: Any, seed: int = 0, scale: float = 0.02) -> dict[str, Any]:
    """Deterministic random weights of a model's shapes (its own init is not used).

    Each tensor has its own generator, seeded from ``seed`` and the key's name, so the values
    do not depend on the order or number of keys. LayerNorm weights are ``1 + scale·N(0,1)``,
    layer scales (``gamma_*``) ``0.1 + scale·N(0,1)``, integer buffers are kept, everything else
    is ``scale·N(0,1)``.

    Args:
        model: An ``nn.Module`` (timm ViT or Beit).
        seed: Base seed.
        scale: Standard deviation of the random values.

    Returns:
        Key -> contiguous CPU tensor, for every entry of ``model.state_dict()``.
    """
    import torch
    from torch import nn

    norms = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    out = {}
    for key, ref in model.state_dict().items():
        if not ref.is_floating_point():
            out[key] = ref.detach().clone().contiguous()
            continue
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(key.encode())) % (2**63))
        value = scale * torch.randn(ref.shape, generator=g, dtype=torch.float32)
        if key in norms:
            value += 1.0
        elif key.rsplit(".", 1)[-1] in ("gamma_1", "gamma_2"):
            value += 0.1
        out[key] = value.contiguous()
    return out


def beit_pt22k_state_dict(seed: int = 0) -> dict[str, Any]:
    """Random weights of ``microsoft/beit-base-patch16-224-pt22k``'s shapes and keys (BEiT-B/16)."""
    from ..world.models import build_model

    return timm_beit_to_hf(random_state_dict(build_model("beit", 0), seed), shared=True, seed=seed)


def timm_hub_state_dict(preset: str, seed: int = 0) -> dict[str, Any]:
    """Random weights with the keys and shapes of a timm hub preset's ``model.safetensors``.

    timm saves its hub files from its own model, with the pretrained head (none for DINO,
    1000 classes for DeiT, 21843 for the ImageNet-21k ViT).
    """
    import timm

    from ..world.models import PRESETS

    name = PRESETS[preset].timm_name
    num_classes = timm.models.get_pretrained_cfg(name).num_classes or 0
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    return random_state_dict(model, seed)


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_hub_repo(hub_cache: str | os.PathLike, repo_id: str, files: Mapping[str, bytes]) -> Path:
    """Writes one model repository into a Hugging Face hub cache as ``huggingface_hub`` does.

    ``models--ORG--NAME/blobs/<hash>`` holds each file (sha256 for the large, LFS-stored files,
    git's blob sha1 for the small ones), ``snapshots/<commit>/<file>`` links to it and
    ``refs/main`` names the commit — what an offline ``hf_hub_download(repo_id, file)`` reads.

    Args:
        hub_cache: The hub cache (``$HF_HOME/hub``).
        repo_id: ``ORG/NAME``.
        files: File name -> content.

    Returns:
        The snapshot folder.
    """
    repo = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    blob_ids = {name: (hashlib.sha256(data).hexdigest() if len(data) > 10 * 1024 else _git_blob_sha1(data))
                for name, data in files.items()}
    commit = hashlib.sha1(json.dumps(sorted(blob_ids.items())).encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / blob_ids[name]
        if not blob.is_file():
            tmp = blob.with_name(blob.name + ".incomplete")
            tmp.write_bytes(data)
            os.replace(tmp, blob)
        link = snapshot / name
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:  # no symlinks (some Windows setups): the hub then copies too
            shutil.copy2(blob, link)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def _timm_config(preset: str) -> dict[str, Any]:
    import timm

    from ..world.models import PRESETS

    name = PRESETS[preset].timm_name
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    return {"architecture": name.split(".")[0], "num_classes": cfg.get("num_classes") or 0,
            "num_features": 768, "global_pool": "token",
            "pretrained_cfg": {k: cfg[k] for k in ("tag", "custom_load", "input_size", "fixed_input_size",
                                                   "interpolation", "crop_pct", "crop_mode", "mean", "std",
                                                   "num_classes", "pool_size", "first_conv", "classifier")
                               if k in cfg}}


_BEIT_CONFIG = {
    "architectures": ["BeitForMaskedImageModeling"], "attention_probs_dropout_prob": 0.0,
    "drop_path_rate": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 768,
    "image_size": 224, "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-12,
    "layer_scale_init_value": 0.1, "model_type": "beit", "num_attention_heads": 12, "num_channels": 3,
    "num_hidden_layers": 12, "patch_size": 16, "use_absolute_position_embeddings": False,
    "use_mask_token": True, "use_mean_pooling": True, "use_relative_position_bias": False,
    "use_shared_relative_position_bias": True, "vocab_size": 8192,
}
_BEIT_PREPROCESSOR = {
    "crop_size": 224, "do_center_crop": False, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "BeitFeatureExtractor", "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224,
}


def make_hub_cache(hf_home: str | os.PathLike, presets: Sequence[str], seed: int = 0) -> dict[str, Path]:
    """Fills ``<hf_home>/hub`` with random-weight repositories of the given real presets.

    Args:
        hf_home: The folder to use as ``HF_HOME``.
        presets: Real presets (:data:`HUB_FILES`); others are skipped.
        seed: Seeds the weights (each preset gets its own stream).

    Returns:
        Preset -> snapshot folder.
    """
    import torch
    from safetensors.torch import save

    hub = Path(hf_home) / "hub"
    out = {}
    for i, preset in enumerate(p for p in presets if p in HUB_FILES):
        repo_id, _ = HUB_FILES[preset]
        s = int(seed) * 100 + i
        if preset == "beit":
            buf = io.BytesIO()
            torch.save(beit_pt22k_state_dict(s), buf)
            files = {"config.json": json.dumps(_BEIT_CONFIG, indent=2).encode(),
                     "preprocessor_config.json": json.dumps(_BEIT_PREPROCESSOR, indent=2).encode(),
                     "pytorch_model.bin": buf.getvalue()}
        else:
            files = {"config.json": json.dumps(_timm_config(preset), indent=2).encode(),
                     "model.safetensors": save(timm_hub_state_dict(preset, s))}
        out[preset] = write_hub_repo(hub, repo_id, files)
    return out
