"""torchrun data-parallel sweep: 2 gloo ranks give the single-process result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from iavutils.analysis import distributed as D
from iavutils.core.sweep import iav_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_shard_indices_cover_once() -> None:
    idx = list(range(11))
    shards = [D.shard_indices(idx, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == idx
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError):
        D.shard_indices(idx, 3, 3)


def test_gather_single_process_sorts_by_index() -> None:
    part = {"indices": torch.tensor([2, 0, 1]), "iav": torch.arange(3.0)[:, None]}
    out = D.gather_shards(part, 0, 1)
    assert torch.equal(out["indices"], torch.arange(3)) and torch.equal(out["iav"][:, 0], torch.tensor([1.0, 2.0, 0.0]))


def test_sweep_key_ignores_world_size_but_not_parameters() -> None:
    a = D.sweep_key("tiny-dino", "embedded", "val", range(4), 3, 0.15, 0, "gaussian", "pred", "random:0")
    b = D.sweep_key("tiny-dino", "embedded", "val", range(4), 4, 0.15, 0, "gaussian", "pred", "random:0")
    assert a != b and "world_size" not in a


def test_torchrun_two_gloo_ranks_equal_single_process(tmp_path: Path) -> None:
    args = [
        "--preset", "tiny-dino", "--random-weights", "--num-classes", "10", "--num-images", "6", "--n-samples", "3",
        "--seed", "5", "--run-dir", str(tmp_path / "runs"), "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "iavutils.analysis.distributed", *args, "--out", str(tmp_path / "two.safetensors"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = load_file(tmp_path / "two.safetensors")

    # the same sweep in this process, without torch.distributed
    ns = D.parse_args(args)
    model, info, _ = D._build(ns, torch.device("cpu"))
    ds = D._dataset(ns, info)
    one = iav_dataset(model, ds, indices=range(6), n_samples=3, seed=5, progress=False)
    assert torch.equal(two["indices"], torch.arange(6))
    for k in ("targets", "preds", "labels", "seeds"):
        assert torch.equal(two[k], one[k]), k
    torch.testing.assert_close(two["iav"], one["iav"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(two["attribution"], one["attribution"], atol=1e-7, rtol=1e-5)

    # the rank-0 write went into the results store; a rerun is served from it
    stored = list((tmp_path / "runs" / "cache" / D.RESULT_NAME).glob("*.safetensors"))
    assert len(stored) == 1
    assert torch.equal(load_file(stored[0])["iav"], two["iav"])
    cached = D.main(args)
    assert torch.equal(cached["iav"], two["iav"])
