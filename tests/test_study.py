"""Study: what a chapter analyses, validated, and passed unchanged to the chapter functions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import iavutils as iu
from iavutils.analysis.study import Study
from iavutils.core.attribution import ENGINE_OPTIONS, smoothgrad_passes
from iavutils.core.spec import AnalysisSpec


def test_study_defaults_and_conversion() -> None:
    s = Study(["tiny-sup", "tiny-dino"])
    assert s.presets == ("tiny-sup", "tiny-dino") and s.dataset == "embedded" and s.run_dir == ""
    assert s.spec == AnalysisSpec()
    assert Study((), spec=None).spec == AnalysisSpec()  # None: the spec's defaults
    assert Study(("tiny-sup",), run_dir=Path("/tmp/run")).run_dir == Path("/tmp/run")  # kept as given
    assert s.replace(dataset="cifar10").dataset == "cifar10" and s.replace(dataset="cifar10").presets == s.presets
    hash(s)  # frozen: usable as a key


@pytest.mark.parametrize("kw, field", [
    ({"presets": "tiny-sup"}, "presets"),
    ({"presets": ("tiny-sup", 3)}, "presets"),
    ({"presets": ("tiny-sup",), "dataset": ""}, "dataset"),
    ({"presets": ("tiny-sup",), "run_dir": 3}, "run_dir"),
    ({"presets": ("tiny-sup",), "spec": {"n_samples": 4}}, "spec"),
])
def test_study_errors_name_the_field(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"Study.{field}="):
        Study(**kw)


def test_smoothgrad_engine_options_pass_through() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=3).eval()
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([0, 2])
    seeds = torch.tensor([3, 4])
    sg = iu.smoothgrad(model, x, t, 4, 0.1, None, 3, seeds=seeds, noise="antithetic", chunk_size=5)
    ref = smoothgrad_passes(model, x, t, 4, 0.1, seeds=seeds, noise="antithetic", chunk_size=3, return_pixels=True)
    torch.testing.assert_close(sg, ref["pixels"])
    assert set(ENGINE_OPTIONS) == {"seeds", "noise", "chunk_size", "memory_budget", "autocast", "compile"}
    with pytest.raises(TypeError, match="grid"):
        iu.smoothgrad(model, x, t, 2, grid=(4, 4))
