"""Model presets: tiny presets offline, real presets' architectures, BEiT key conversion."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from timm.models.beit import Beit
from timm.models.vision_transformer import VisionTransformer

from iavutils.world import models
from iavutils.publish.rehearsal_hub import timm_beit_to_hf
from iavutils.world.models import (
    PRESETS,
    REAL_PRESETS,
    TINY_PRESETS,
    WeightsNotAvailableError,
    convert_hf_beit_to_timm,
    load_model,
)


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_tiny_presets_load_offline(preset):
    model, info = load_model(preset, num_classes=10)
    arch = Beit if preset == "tiny-mim" else VisionTransformer
    assert isinstance(model, arch) and not model.training
    assert info.input_size == (32, 32) and info.patch_size == 4 and info.grid == (8, 8)
    assert tuple(model.patch_embed.grid_size) == info.grid
    assert model.num_prefix_tokens == info.num_prefix_tokens == 1
    assert len(model.blocks) >= 6 and model.blocks[0].attn.num_heads >= 4
    assert info.num_classes == 10 and model.num_classes == 10
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # the shipped backbone is really loaded (not a fresh random init)
    from safetensors.torch import load_file

    shipped = load_file(models.WEIGHTS_DIR / f"{preset}.safetensors")
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], shipped["blocks.0.attn.qkv.weight"])


def test_tiny_pretraining_types_mirror_the_paper():
    kinds = {p: (PRESETS[p].pretraining, PRESETS[p].arch) for p in TINY_PRESETS}
    assert kinds == {
        "tiny-mim": ("self-supervised", "Beit"),
        "tiny-dino": ("self-supervised", "VisionTransformer"),
        "tiny-sup": ("supervised", "VisionTransformer"),
        "tiny-sup21k": ("supervised", "VisionTransformer"),
    }


def test_num_classes_none_keeps_shipped_head_or_features():
    # a headless preset needs an explicit num_classes; 0 is the feature extractor
    with pytest.raises(ValueError, match=r"load_model\('tiny-dino'\) needs an explicit num_classes"):
        load_model("tiny-dino")
    model, info = load_model("tiny-dino", 0)
    assert info.num_classes == 0 and model(torch.randn(1, 3, 32, 32)).shape == (1, 64)
    model, info = load_model("tiny-sup")
    assert info.num_classes == 20


def test_missing_tiny_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(WeightsNotAvailableError, match="iavutils.world.pretrain"):
        load_model("tiny-dino", 10)


def test_local_weights_file(tmp_path):
    model, _ = load_model("tiny-sup", 10, pretrained=False)
    torch.save({"model": model.state_dict()}, tmp_path / "w.pth")
    again, _ = load_model("tiny-sup", 10, weights=tmp_path / "w.pth")
    for k, v in model.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(again.state_dict()[k], v), k
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    again, _ = load_model("tiny-sup", 5, weights=tmp_path / "w.safetensors")
    assert again.head.weight.shape == (5, 64)


def test_info_normalize_roundtrip():
    _, info = load_model("deit", num_classes=10, pretrained=False)
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(info.denormalize(info.normalize(x)), x, atol=1e-6)
    assert torch.allclose(info.normalize(x)[:, 0], (x[:, 0] - 0.485) / 0.229)


@pytest.mark.parametrize(
    "preset,cls,depth,prefix",
    [("beit", Beit, 12, 1), ("dino", VisionTransformer, 12, 1), ("deit", VisionTransformer, 12, 1),
     ("in21k", VisionTransformer, 12, 1), ("beit-in22k-ft", Beit, 12, 1)],
)
def test_real_presets_architecture_without_weights(preset, cls, depth, prefix):
    model, info = load_model(preset, num_classes=10, pretrained=False)
    assert isinstance(model, cls)
    assert len(model.blocks) == depth and model.blocks[0].attn.num_heads == 12
    assert model.embed_dim == 768 and tuple(model.patch_embed.grid_size) == (14, 14) == info.grid
    assert model.num_prefix_tokens == prefix == info.num_prefix_tokens
    assert model.head.out_features == 10 and info.input_size == (224, 224)
    if cls is Beit:
        # per-block relative position bias, no absolute position embedding, layer scale
        assert model.pos_embed is None and model.blocks[0].attn.relative_position_bias_table is not None
        assert model.blocks[0].gamma_1 is not None
    assert preset in REAL_PRESETS or preset == "beit-in22k-ft"


def test_real_preset_types():
    assert {p: PRESETS[p].pretraining for p in REAL_PRESETS} == {
        "beit": "self-supervised", "dino": "self-supervised", "deit": "supervised", "in21k": "supervised"}
    assert PRESETS["beit"].hub_id == "microsoft/beit-base-patch16-224-pt22k"
    assert PRESETS["dino"].timm_name == "vit_base_patch16_224.dino"
    assert PRESETS["deit"].timm_name == "deit_base_patch16_224.fb_in1k"
    assert PRESETS["in21k"].timm_name == "vit_base_patch16_224.augreg_in21k"


# ---- BEiT pt22k conversion -------------------------------------------------------------------


def _small_beit(**kw):
    return Beit(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, use_abs_pos_emb=False,
                use_rel_pos_bias=True, init_values=0.1, num_classes=0, **kw)


def _timm_to_hf(model, shared=True):
    """timm Beit -> the pt22k checkpoint's Hugging Face naming (the generator the rehearsal's
    hub cache uses, written independently of the conversion under test)."""
    return timm_beit_to_hf(model.state_dict(), shared=shared)


def _randomise(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_beit_conversion_per_block_tables_reproduces_the_model():
    torch.manual_seed(0)
    ref = _small_beit()
    _randomise(ref)
    converted = convert_hf_beit_to_timm(_timm_to_hf(ref, shared=False))
    fresh = _small_beit()
    missing, unexpected = fresh.load_state_dict(converted, strict=False)
    assert not unexpected
    assert set(missing) <= {"fc_norm.weight", "fc_norm.bias"}  # BEiT finetuning starts fc_norm fresh
    ref_sd, new_sd = ref.state_dict(), fresh.state_dict()
    for k in converted:
        assert torch.equal(new_sd[k], ref_sd[k]), k
    x = torch.randn(2, 3, 32, 32)
    fresh.fc_norm.load_state_dict(ref.fc_norm.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh.forward_features(x), ref.forward_features(x), atol=1e-6)
        assert torch.allclose(fresh(x), ref(x), atol=1e-6)


def test_beit_conversion_shared_table_is_copied_into_every_block():
    ref = _small_beit()
    _randomise(ref)
    hf = _timm_to_hf(ref, shared=True)
    converted = convert_hf_beit_to_timm(hf)
    table = hf["beit.encoder.relative_position_bias.relative_position_bias_table"]
    for i in range(2):
        assert torch.equal(converted[f"blocks.{i}.attn.relative_position_bias_table"], table)
        q = hf[f"beit.encoder.layer.{i}.attention.attention.query.weight"]
        assert torch.equal(converted[f"blocks.{i}.attn.qkv.weight"][: q.shape[0]], q)
        assert torch.equal(converted[f"blocks.{i}.gamma_1"], hf[f"beit.encoder.layer.{i}.lambda_1"])
    assert not any("mask_token" in k or "lm_head" in k for k in converted)
    own = _small_beit().state_dict()
    for k, v in converted.items():
        assert k in own and own[k].shape == v.shape, k
    # every timm key except the new classifier norm is filled
    assert set(own) - set(converted) <= {"fc_norm.weight", "fc_norm.bias"}


def test_beit_conversion_through_load_model(tmp_path, monkeypatch):
    # load_model('beit', weights=...) converts a Hugging Face-format file on the fly
    full = models.build_model("beit", 0)
    _randomise(full)
    save_file({k: v.contiguous() for k, v in _timm_to_hf(full, shared=True).items()}, tmp_path / "pt22k.safetensors")
    model, info = load_model("beit", num_classes=10, weights=tmp_path / "pt22k.safetensors")
    assert info.pretraining == "self-supervised" and model.head.out_features == 10
    assert torch.equal(model.blocks[3].attn.q_bias, full.blocks[3].attn.q_bias)


def test_beit_conversion_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unrecognised"):
        convert_hf_beit_to_timm({"beit.encoder.layer.0.something.odd": torch.zeros(1)})


def test_offline_without_cache_names_the_hub_id(tmp_path):
    # A fresh process with an empty cache and the hub switched offline: no network is touched.
    code = (
        "import iavutils.world.models as m\n"
        "for p in ('beit', 'dino'):\n"
        "    try:\n"
        "        m.load_model(p, 10)\n"
        "    except m.WeightsNotAvailableError as e:\n"
        "        print('ERR', p, e)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "ERR beit" in out.stdout and "microsoft/beit-base-patch16-224-pt22k" in out.stdout, out.stdout + out.stderr
    # the CLI of the pinned huggingface_hub (`huggingface-cli` is gone in 1.x+), and the way offline
    assert "hf download microsoft/beit-base-patch16-224-pt22k" in out.stdout and "huggingface-cli" not in out.stdout
    assert "HF_HUB_OFFLINE" in out.stdout and "weights=" in out.stdout
    assert "ERR dino" in out.stdout and "timm/vit_base_patch16_224.dino" in out.stdout


# ---- pretraining recipes (smoke: a few steps each, tiny probe) --------------------------------


@pytest.mark.parametrize("preset", ["tiny-mim", "tiny-dino", "tiny-sup"])  # the three training loops
def test_pretraining_recipe_runs_and_writes_loadable_weights(preset, tmp_path, monkeypatch):
    import dataclasses
    import json

    from iavutils.world import pretrain

    recipe = dataclasses.replace(pretrain.RECIPES[preset], steps=2, batch_size=8, warmup_steps=1)
    record = pretrain.pretrain(preset, tmp_path, recipe=recipe, progress=False, probe_sizes=(40, 20))
    assert json.loads((tmp_path / f"{preset}.json").read_text())["recipe"]["steps"] == 2
    assert 0 <= record["knn_probe_target"]["pretrained"] <= 1
    monkeypatch.setattr(models, "WEIGHTS_DIR", tmp_path)
    model, info = load_model(preset, 10)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
