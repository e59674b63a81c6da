"""A finetuning run on disk without finetuning: random-weight checkpoints in the layout of
iavutils.world.training, so the cached book entry points can be tested in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from iavutils.world.models import build_model


def write_fake_run(root: Path, preset: str, num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    """Writes ``{root}/embedded/{preset}`` with an ``epoch_000`` checkpoint and returns its model."""
    run = root / "embedded" / preset
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(seed)
    model = build_model(preset, num_classes=num_classes)
    save_file({n: v.contiguous() for n, v in model.state_dict().items()}, run / "checkpoints" / "epoch_000.safetensors")
    (run / "config.json").write_text(json.dumps({"preset": preset, "dataset": "embedded", "num_classes": num_classes}))
    return model
