"""The DINO recipe's pieces: low-resolution local crops through the ViT, seeded views."""

import dataclasses

import torch

from iavutils.world import pretrain, pretrain_dino
from iavutils.world.models import build_model


def test_vit_features_matches_timm_at_full_size_and_takes_local_crops():
    torch.manual_seed(0)
    vit = build_model("tiny-dino", 0).eval()
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(pretrain_dino._vit_features(vit, x), vit.forward_features(x))
    local = pretrain_dino._vit_features(vit, torch.randn(3, 3, 16, 16))
    assert local.shape == (3, 1 + 16, 64) and torch.isfinite(local).all()


def test_dino_views_are_seeded_and_sized():
    r = dataclasses.replace(pretrain.RECIPES["tiny-dino"], blur_p=0.5, solarize_p=0.5, gray_p=0.5)
    x = torch.rand(4, 3, 32, 32)
    a = pretrain_dino._dino_view(x, torch.Generator().manual_seed(1), r, local=True)
    b = pretrain_dino._dino_view(x, torch.Generator().manual_seed(1), r, local=True)
    assert a.shape == (4, 3, r.local_size, r.local_size) and torch.equal(a, b)
    g = pretrain_dino._dino_view(x, torch.Generator().manual_seed(1), r, local=False)
    assert g.shape == x.shape and 0 <= g.min() and g.max() <= 1
