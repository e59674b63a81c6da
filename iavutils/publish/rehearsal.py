"""Rehearse the real path (hub ViT-B/16 presets on CIFAR-10) end to end, offline, on a CPU.

Usage::

    python -m iavutils.publish.rehearsal [--presets real|beit,deit|...] [--workdir DIR] [--keep]
    make rehearse                       # the four real presets
    make rehearse PRESETS=beit,deit     # a subset

The real presets download their weights from the model hub and CIFAR-10 from its site; neither
can be reached from a test machine, and a run on a GPU is too expensive to be the first time a
chapter meets a mask-less dataset or a 14×14 grid. This module makes, in a temporary folder and
deterministically from a seed:

* a Hugging Face cache (``HF_HOME``) in the layout ``huggingface_hub`` writes
  (``hub/models--ORG--NAME/{blobs,refs/main,snapshots/<commit>/}``) holding, for each requested
  real preset, random weights of the real shapes in the files the real repositories hold:
  timm's ``model.safetensors`` for ``dino``, ``deit`` and ``in21k``, and Microsoft's
  ``config.json`` + ``pytorch_model.bin`` (``BeitForMaskedImageModeling`` keys, shared relative
  position bias, mask token, MIM head) for ``beit``;
* CIFAR-10 in the official python format — ``cifar-10-batches-py/`` (``data_batch_1..5``,
  ``test_batch``, ``batches.meta``, pickled the way the Python 2 originals are) and the
  ``cifar-10-python.tar.gz`` archive — with a few dozen images;

then executes every chapter notebook for each preset at smoke scale (:data:`SMOKE_PARAMETERS`:
one epoch on a few dozen images, 4 analysed images, 2 SmoothGrad samples) with
``HF_HUB_OFFLINE=1`` and ``IAV_DATA`` / ``IAV_RUN_DIR`` / ``HF_HOME`` in the temporary folder,
through the book's own runner (:func:`iavutils.publish.book.run_notebooks`). Presets share one run
directory; with several presets a last pass runs every notebook for all of them together, as
``PRESETS=real make book`` does (comparison chapters, the separability test), mostly from the
cached results of the per-preset passes. The book is built from that last pass
(:func:`iavutils.publish.book.build_book`) on a copy of the book sources. The exit status is non-zero
on the first failure, which is named (notebook, cell, error); per-notebook times are printed
per pass.

Nothing generated here is committed: the weights are random (the numbers in the pages mean
nothing), only the code paths, file formats and shapes are real.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "HUB_FILES",
    "SMOKE_PARAMETERS",
    "timm_beit_to_hf",
    "random_state_dict",
    "beit_pt22k_state_dict",
    "timm_hub_state_dict",
    "write_hub_repo",
    "make_hub_cache",
    "py2_pickle",
    "write_cifar10",
    "RehearsalResult",
    "rehearse",
    "main",
]

#: Hub repository of each real preset and the files its real repository serves to our loaders.
HUB_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "beit": ("microsoft/beit-base-patch16-224-pt22k", ("config.json", "preprocessor_config.json", "pytorch_model.bin")),
    "dino": ("timm/vit_base_patch16_224.dino", ("config.json", "model.safetensors")),
    "deit": ("timm/deit_base_patch16_224.fb_in1k", ("config.json", "model.safetensors")),
    "in21k": ("timm/vit_base_patch16_224.augreg_in21k", ("config.json", "model.safetensors")),
}

#: Notebook parameters of the smoke run (each notebook gets those it declares). Small enough for
#: a ViT-B/16 at 224 px on two CPU cores, large enough for every code path (two checkpoints,
#: several images per analysis, both classes of every split statistic).
SMOKE_PARAMETERS: dict[str, Any] = {
    "epochs": 1,  # finetuning: checkpoints 0 and 1
    "max_train": 32,  # finetuning images
    "num_images": 4,  # analysed held-out images
    "n_samples": 2,  # SmoothGrad samples
    "num_eval": 2,  # images for the accuracies under shift (01)
    "epoch_stride": 1,  # both checkpoints analysed (02, 04, 05, 11)
    "n_examples": 2,  # images shown with every model's maps (08)
    "ablation_images": 1,  # images each head ablation is measured on (10)
    "ablation_subsets": 1,  # head subsets per control group of the ablation (10)
    "perturbation_steps": 1,  # removed fractions of the perturbation curves: 50 % only (08)
    "num_permutations": 100,  # Monte Carlo permutations (11)
    "perplexity": 2.0,  # t-SNE perplexity (07; capped by the image count anyway)
    "device": "cpu",
}

#: CIFAR-10 of the rehearsal: images per training batch file (5 files) and in the test batch.
CIFAR_TRAIN_PER_BATCH = 8
CIFAR_TEST_IMAGES = 10


# ============================================================================================
# the model hub


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


# ============================================================================================
# CIFAR-10


class _Py2Str(bytes):
    """Marks bytes that Python 2 pickled as ``str`` (what CIFAR-10's files hold everywhere)."""


def py2_pickle(obj: Any) -> bytes:
    """Pickle (protocol 2) of ``obj`` with the opcodes Python 2's cPickle wrote for CIFAR-10.

    Python 3 cannot write Python 2 pickles: its ``bytes`` become ``_codecs.encode`` calls and its
    ``str`` become unicode, while the official files hold Python 2 ``str`` (``BINSTRING``) that
    Python 3 decodes with the reader's ``encoding`` (``"latin1"``: ``str`` keys; ``"bytes"``:
    ``b'data'`` keys), and arrays reduced through ``numpy.core.multiarray._reconstruct``. Supported:
    ``dict``, ``list``, ``tuple``, ``int``, ``bool``, ``None``, ``bytes``/``str`` (both written as
    Python 2 ``str``, ``str`` encoded latin-1) and C-contiguous numpy arrays.
    """
    out = bytearray(b"\x80\x02")

    def string(b: bytes) -> None:
        out.extend(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + len(b).to_bytes(4, "little") + b)

    def emit(o: Any) -> None:
        if o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, (int, np.integer)):
            o = int(o)
            if 0 <= o < 256:
                out.extend(b"K" + bytes([o]))
            elif 0 <= o < 65536:
                out.extend(b"M" + o.to_bytes(2, "little"))
            elif -(2**31) <= o < 2**31:
                out.extend(b"J" + o.to_bytes(4, "little", signed=True))
            else:
                raise ValueError(f"int out of range for this writer: {o}")
        elif isinstance(o, bytes):
            string(bytes(o))
        elif isinstance(o, str):
            string(o.encode("latin1"))
        elif isinstance(o, tuple):
            if 1 <= len(o) <= 3:
                for x in o:
                    emit(x)
                out.extend({1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(o)])
            else:
                out.extend(b"(")
                for x in o:
                    emit(x)
                out.extend(b"t")
        elif isinstance(o, list):
            out.extend(b"]")
            if o:
                out.extend(b"(")
                for x in o:
                    emit(x)
                out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}")
            if o:
                out.extend(b"(")
                for k, v in o.items():
                    emit(k)
                    emit(v)
                out.extend(b"u")
        elif isinstance(o, np.ndarray):
            # numpy 1.x's ndarray.__reduce__ under Python 2, as in the official files.
            a = np.ascontiguousarray(o)
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            emit((0,))
            string(b"b")
            out.extend(b"\x87R")
            out.extend(b"(")
            emit(1)
            emit(tuple(int(n) for n in a.shape))
            out.extend(b"cnumpy\ndtype\n")
            emit((a.dtype.str[1:], 0, 1))
            out.extend(b"R")
            order = "|" if a.dtype.itemsize == 1 else "<"
            emit((3, order, None, None, None, -1, -1, 0))
            out.extend(b"b")
            emit(False)
            string(a.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(f"py2_pickle cannot write {type(o).__name__}")

    emit(obj)
    out.extend(b".")
    return bytes(out)


def _cifar_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[N,3072]`` uint8 rows (R, G, B planes, row-major): noise plus a class-coloured square."""
    n = len(labels)
    img = rng.integers(0, 96, size=(n, 3, 32, 32), dtype=np.int32)
    hues = np.stack([(np.arange(10) * 77) % 256, (np.arange(10) * 151 + 40) % 256, (np.arange(10) * 29 + 90) % 256], 1)
    for i, c in enumerate(labels):
        y, x = rng.integers(0, 16, size=2)
        img[i, :, y:y + 16, x:x + 16] = hues[c][:, None, None] + rng.integers(-20, 20, size=(3, 1, 1))
    return np.clip(img, 0, 255).astype(np.uint8).reshape(n, 3072)


def write_cifar10(
    root: str | os.PathLike,
    train_per_batch: int = CIFAR_TRAIN_PER_BATCH,
    test_images: int = CIFAR_TEST_IMAGES,
    seed: int = 0,
    folder: bool = True,
    archive: bool = True,
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Writes a small CIFAR-10 in the official python format under ``root``.

    ``folder``: ``root/cifar-10-batches-py/`` with ``data_batch_1`` … ``data_batch_5``,
    ``test_batch`` (dicts with ``data`` uint8 ``[N,3072]``, ``labels`` list of ints,
    ``batch_label``, ``filenames``), ``batches.meta`` (``label_names``, ``num_cases_per_batch``,
    ``num_vis``) and ``readme.html``, pickled as the Python 2 originals (:func:`py2_pickle`).
    ``archive``: ``root/cifar-10-python.tar.gz`` holding that folder. Byte-identical for a seed.

    Args:
        root: Destination (created).
        train_per_batch: Images in each of the five training files.
        test_images: Images in the test file.
        seed: Seeds images and labels.
        folder: Write the extracted folder.
        archive: Write the archive.

    Returns:
        File name -> ``(data [N,3072] uint8, labels)``.
    """
    from ..world.data import CIFAR10_CLASSES

    rng = np.random.default_rng(int(seed))
    files: dict[str, bytes] = {}
    arrays: dict[str, tuple[np.ndarray, list[int]]] = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test_images if name == "test_batch" else train_per_batch
        labels = rng.permutation(np.arange(n) % 10).tolist()
        data = _cifar_images(np.asarray(labels), rng)
        what = "testing batch 1 of 1" if name == "test_batch" else f"training batch {name[-1]} of 5"
        entry = {
            "data": data,
            "labels": [int(v) for v in labels],
            "batch_label": what,
            "filenames": [f"{CIFAR10_CLASSES[c]}_s_{int(rng.integers(0, 10**6)):06d}.png" for c in labels],
        }
        files[name] = py2_pickle(entry)
        arrays[name] = (data, labels)
    files["batches.meta"] = py2_pickle({"num_cases_per_batch": train_per_batch,
                                        "label_names": list(CIFAR10_CLASSES), "num_vis": 3072})
    files["readme.html"] = b"<meta HTTP-EQUIV=\"REFRESH\" content=\"0; url=http://www.cs.toronto.edu/~kriz/cifar.html\">\n"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if folder:
        d = root / "cifar-10-batches-py"
        d.mkdir(exist_ok=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
    if archive:
        buf = io.BytesIO()
        # Fixed owners and times, and a gzip header without a time: byte-identical archives.
        import gzip

        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                def add(name: str, data: bytes | None) -> None:
                    info = tarfile.TarInfo(name)
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 1244836416, 1000, 1000, "kriz", "kriz"
                    if data is None:
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(info)
                    else:
                        info.size, info.mode = len(data), 0o644
                        tar.addfile(info, io.BytesIO(data))

                add("cifar-10-batches-py", None)
                for name in sorted(files):
                    add(f"cifar-10-batches-py/{name}", files[name])
        tmp = root / "cifar-10-python.tar.gz.incomplete"
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, root / "cifar-10-python.tar.gz")
    return arrays


# ============================================================================================
# the rehearsal


@dataclass
class RehearsalResult:
    """What a rehearsal did.

    Attributes:
        workdir: The temporary folder (hub cache, data, runs, book copy, site).
        times: Pass (a preset, then ``"all"`` with several presets) -> notebook -> seconds.
        failure: The first failure, one line (empty when everything ran).
        build_status: Exit status of the book build (``None``: not built).
        pages: Chapter pages of the built site (file names).
        setup_seconds: Generating the hub cache and CIFAR-10.
        build_seconds: Building the book.
    """

    workdir: Path
    times: dict[str, dict[str, float]] = field(default_factory=dict)
    failure: str = ""
    build_status: int | None = None
    pages: list[str] = field(default_factory=list)
    setup_seconds: float = 0.0
    build_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every notebook ran and the book built."""
        return not self.failure and self.build_status == 0


@contextlib.contextmanager
def _environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Sets (or, for ``None``, removes) environment variables; restores them afterwards."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def first_failure(nb_path: str | os.PathLike, name: str) -> str:
    """One line naming an executed notebook's first failing cell and its error."""
    try:
        nb = json.loads(Path(nb_path).read_text())
    except (OSError, ValueError):
        return f"{name}: no output notebook"
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                src = cell.get("source", "")
                src = src if isinstance(src, str) else "".join(src)
                first = next((ln.strip() for ln in src.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
                return (f"{name}, cell {i} (In [{cell.get('execution_count')}]: {first[:80]}): "
                        f"{out.get('ename')}: {str(out.get('evalue'))[:300]}")
    return ""


def _copy_book_sources(root: Path) -> Path:
    from .book import BOOK_DIR, REPO

    shutil.copy2(REPO / "_config.yml", root / "_config.yml")
    book = root / "book"
    shutil.copytree(BOOK_DIR, book, ignore=shutil.ignore_patterns("generated", "_build", "_vendor", ".ipynb_checkpoints"),
                    dirs_exist_ok=True)  # a rerun in the same work folder
    return book


def _print_table(times: Mapping[str, Mapping[str, float]]) -> None:
    presets = list(times)
    names = sorted({n for t in times.values() for n in t})
    print("\nrehearsal wall times (s):")
    print(f"  {'notebook':<32s}" + "".join(f"{p:>10s}" for p in presets))
    for n in names:
        print(f"  {n:<32s}" + "".join(f"{times[p].get(n, float('nan')):10.1f}" for p in presets))
    print(f"  {'total':<32s}" + "".join(f"{sum(times[p].values()):10.1f}" for p in presets), flush=True)


def rehearse(
    presets: Sequence[str],
    workdir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    parameters: Mapping[str, Any] | None = None,
    only: Sequence[str] | None = None,
    build: bool = True,
    progress: bool = False,
) -> RehearsalResult:
    """Generates the offline world, runs every notebook per preset, builds the book.

    Args:
        presets: Presets, in order (each runs every notebook; the run directory is shared; with
            several, a last pass runs every notebook for all of them, from the cached results).
        workdir: Where everything goes (created; default: a new temporary folder, kept).
        seed: Seeds the weights and the images.
        parameters: Overrides of :data:`SMOKE_PARAMETERS`.
        only: Notebooks to run (names or prefixes, as ``python -m iavutils.publish.book run --only``).
        build: Build the book after the last preset.
        progress: papermill's per-cell progress bar.

    Returns:
        :class:`RehearsalResult`; it stops at the first preset with a failing notebook.
    """
    from . import book

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="iav-rehearsal-"))
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    result = RehearsalResult(workdir=root)
    t0 = time.perf_counter()
    hf_home, data, run_dir = root / "hf", root / "data", root / "runs"
    print(f"rehearsal in {root}", flush=True)
    snapshots = make_hub_cache(hf_home, presets, seed=seed)
    for p, snap in snapshots.items():
        print(f"  hub cache: {p:<6s} {snap.relative_to(root)}", flush=True)
    # The archive only, where the README tells users to put it: the first chapter extracts it.
    write_cifar10(data, seed=seed, folder=False, archive=True)
    print(f"  CIFAR-10: {data / 'cifar-10-python.tar.gz'}", flush=True)
    book_dir = _copy_book_sources(root)
    result.setup_seconds = time.perf_counter() - t0

    env = {
        "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HUGGINGFACE_HUB_CACHE": None,
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
        "IAV_DATA": str(data), "IAV_RUN_DIR": str(run_dir), "TORCH_HOME": str(root / "torch"),
    }
    notebooks = book.list_notebooks(only)
    with _environment(env):
        # One pass per preset (its own cost, per notebook), then, with several presets, one pass
        # over all of them as `PRESETS=real make book` runs them: the comparison chapters and
        # the separability test with every model, from the cached results of the first passes.
        passes = [(p, p) for p in presets] + ([("all", ",".join(presets))] if len(presets) > 1 else [])
        for name, model in passes:
            params = book.default_parameters(model.split(","), run_dir)
            params["dataset"] = "cifar10"
            params.update(SMOKE_PARAMETERS)
            params.update(parameters or {})
            print(f"\n=== {name} ({model}): {len(notebooks)} notebooks", flush=True)
            results = book.run_notebooks(notebooks, params, book_dir, progress=progress)
            result.times[name] = {r.name: round(r.seconds, 1) for r in results}
            for r in results:
                if not r.ok:
                    found = first_failure(book_dir / "generated" / f"{r.name}.ipynb", r.name)
                    result.failure = f"{name}: " + (found or f"{r.name}: {r.error}")
                    break
            if result.failure:
                break
    _print_table(result.times)
    if result.failure:
        print(f"\nREHEARSAL FAILED at {result.failure}", file=sys.stderr, flush=True)
        return result
    if build:
        t1 = time.perf_counter()
        result.build_status = book.build_book(book_dir)
        result.build_seconds = time.perf_counter() - t1
        html = book.site_dir(book_dir) / "generated"
        result.pages = sorted(p.name for p in html.glob("*.html")) if html.is_dir() else []
        missing = [nb.stem for nb in notebooks if f"{nb.stem}.html" not in result.pages]
        if result.build_status != 0 or missing:
            result.failure = (f"book build: exit {result.build_status}"
                              + (f", no page for {', '.join(missing)}" if missing else ""))
            print(f"\nREHEARSAL FAILED at {result.failure}", file=sys.stderr, flush=True)
    (root / "rehearsal.json").write_text(json.dumps({
        "presets": list(presets), "times": result.times, "failure": result.failure,
        "build_status": result.build_status, "build_seconds": round(result.build_seconds, 1),
        "setup_seconds": round(result.setup_seconds, 1), "pages": result.pages}, indent=2))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    from .book import expand_presets

    ap = argparse.ArgumentParser(prog="python -m iavutils.publish.rehearsal", description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="real", help="real | comma-separated presets (default: real)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="folder for the hub cache, data, runs and book (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder after a successful run")
    ap.add_argument("--only", nargs="+", metavar="NB", help="run only these notebooks (name or prefix)")
    ap.add_argument("--no-build", action="store_true", help="do not build the book")
    ap.add_argument("--seed", type=int, default=0, help="seeds the generated weights and images")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a smoke parameter (YAML value), repeatable")
    args = ap.parse_args(argv)
    from .book import _parse_value

    overrides = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"-p expects KEY=VALUE, got {item!r}")
        overrides[key] = _parse_value(value)
    t0 = time.perf_counter()
    res = rehearse(expand_presets(args.presets), args.workdir, seed=args.seed, parameters=overrides,
                   only=args.only, build=not args.no_build and not args.only)
    total = time.perf_counter() - t0
    print(f"\nrehearsal: setup {res.setup_seconds:.1f} s, notebooks "
          f"{sum(sum(t.values()) for t in res.times.values()):.1f} s, build {res.build_seconds:.1f} s, "
          f"total {total:.1f} s", flush=True)
    if res.failure:
        print(f"work folder kept for inspection: {res.workdir}", file=sys.stderr)
        return 1
    print(f"rehearsal passed: {', '.join(res.times)}; every notebook executed"
          + ("" if args.no_build or args.only else f", book built with {len(res.pages)} chapter pages"))
    if args.workdir is None and not args.keep:
        shutil.rmtree(res.workdir, ignore_errors=True)
    else:
        print(f"work folder: {res.workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
