"""Small random-weight timm models (offline) and model-state snapshots for the core tests."""

from __future__ import annotations

import pytest
import torch
from timm.models.beit import Beit
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import nn

# The suite runs on small shared CPUs: one intra-op thread avoids spin-wait contention between
# torch's workers (a tenfold slowdown measured on a loaded 2-core machine).
torch.set_num_threads(1)

IMG = 32
NUM_CLASSES = 5
_COMMON = dict(img_size=IMG, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=NUM_CLASSES)


def _spread(model: nn.Module, seed: int) -> nn.Module:
    # timm's init gives near-uniform attention and zero BEiT biases; random weights of a larger
    # scale make attention peaked and the q/v and relative-position biases non-zero, so that a
    # wrong index or a missing bias shows up in the comparisons.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.3 if "norm" not in name else 0.1
            base = 1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight") else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g))
    return model.eval()


def make_model(kind: str, seed: int = 0, **kw: object) -> nn.Module:
    """Build one of the small test models by name."""
    if kind == "vit":
        m = VisionTransformer(**{**_COMMON, **kw})
    elif kind == "vit_reg":
        m = VisionTransformer(**{**_COMMON, "reg_tokens": 2, **kw})
    elif kind == "deit_distilled":
        m = VisionTransformerDistilled(**{**_COMMON, **kw})
    elif kind == "beit":
        m = Beit(**{**_COMMON, "use_rel_pos_bias": True, "use_abs_pos_emb": True, **kw})
    elif kind == "beit_shared":
        m = Beit(**{**_COMMON, "use_shared_rel_pos_bias": True, "use_abs_pos_emb": False, **kw})
    elif kind == "vit_no_cls":
        m = VisionTransformer(**{**_COMMON, "class_token": False, "global_pool": "avg", **kw})
    elif kind == "resnet":
        m = TinyResNet()
    else:
        raise KeyError(kind)
    torch.manual_seed(seed)
    return _spread(m, seed)


class TinyResNet(nn.Module):
    """A residual CNN: a supported input for SmoothGrad, unsupported for attention recording."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.block(h))
        return self.head(h.mean(dim=(2, 3)))


VIT_KINDS = ["vit", "vit_reg", "deit_distilled", "beit", "beit_shared"]


@pytest.fixture(params=VIT_KINDS)
def vit_model(request: pytest.FixtureRequest) -> nn.Module:
    return make_model(request.param)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, IMG, IMG, generator=torch.Generator().manual_seed(123))


def snapshot(model: nn.Module) -> dict[str, object]:
    """Everything a recorder or attribution could leave behind on a model."""
    hooks = {}
    for name, m in model.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_pre_hooks_with_kwargs",
            "_state_dict_hooks",
        ):
            d = getattr(m, attr, None)
            if d:
                hooks[(name, attr)] = len(d)
    glob = nn.modules.module
    return {
        "hooks": hooks,
        "global_hooks": (
            len(glob._global_forward_hooks),
            len(glob._global_forward_pre_hooks),
            len(glob._global_backward_hooks),
        ),
        "training": {n: m.training for n, m in model.named_modules()},
        "fused": {
            n: (m.__dict__.get("fused_attn", "<class>"), getattr(m, "fused_attn"))
            for n, m in model.named_modules()
            if hasattr(m, "fused_attn")
        },
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad_is_none": {n: p.grad is None for n, p in model.named_parameters()},
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
    }


def assert_same_state(before: dict[str, object], after: dict[str, object]) -> None:
    params_b = before["params"]
    params_a = after["params"]
    for k in before:
        if k != "params":
            assert before[k] == after[k], k
    assert params_b.keys() == params_a.keys()
    for n in params_b:
        assert torch.equal(params_b[n], params_a[n]), n
