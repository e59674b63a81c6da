"""Finetuning: layout, checkpoints, resume after an interruption, no-op rerun."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from iavutils.world import training
from iavutils.world.models import load_model
from iavutils.world.training import RECIPES, finetune, list_checkpoints, load_checkpoint

CFG = RECIPES["tiny"].replace(epochs=3, batch_size=32, max_val=64, eval_batch_size=64, warmup_epochs=0.5)
MAX_TRAIN = 96


def _weights(run_dir, epoch):
    return load_file(run_dir / "embedded" / "tiny-sup" / "checkpoints" / f"epoch_{epoch:03d}.safetensors")


def _strip(metrics):
    return [{k: v for k, v in m.items() if k != "seconds"} for m in metrics]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref")
    history = finetune("tiny-sup", run_dir=run_dir, config=CFG, device="cpu", progress=False, max_train=MAX_TRAIN)
    return run_dir, history


def test_layout_and_checkpoints(reference):
    run_dir, history = reference
    run = run_dir / "embedded" / "tiny-sup"
    assert [m["epoch"] for m in history] == [0, 1, 2, 3]
    for m in history[1:]:
        assert {"train_loss", "train_acc", "val_acc", "val_loss", "seconds"} <= set(m)
    assert json.loads((run / "metrics.json").read_text()) == history
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lr"] == CFG.lr and cfg["num_classes"] == 10 and cfg["max_train"] == MAX_TRAIN
    assert [e for e, _ in list_checkpoints(run_dir, "embedded", "tiny-sup")] == [0, 1, 2, 3]
    assert sorted(p.name for p in (run / "checkpoints").glob("train_state_*.pt")) == ["train_state_003.pt"]
    assert not list(run.rglob("*.tmp"))
    # epoch 0 is the shipped pretrained backbone with a new 10-class head
    init = _weights(run_dir, 0)
    pretrained, _ = load_model("tiny-sup", 10)
    assert torch.equal(init["blocks.2.mlp.fc1.weight"], pretrained.state_dict()["blocks.2.mlp.fc1.weight"])
    assert init["head.weight"].shape == (10, 64)
    model, info = load_checkpoint(run_dir, "embedded", "tiny-sup")
    assert torch.equal(model.state_dict()["head.weight"], _weights(run_dir, 3)["head.weight"])
    assert not torch.equal(_weights(run_dir, 3)["head.weight"], init["head.weight"])
    model0, _ = load_checkpoint(run_dir, "embedded", "tiny-sup", epoch=0)
    assert torch.equal(model0.state_dict()["head.weight"], init["head.weight"])
    with pytest.raises(FileNotFoundError):
        load_checkpoint(run_dir, "embedded", "tiny-sup", epoch=9)


def test_rerun_of_finished_run_does_nothing(reference):
    run_dir, history = reference
    files = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    again = finetune("tiny-sup", run_dir=run_dir, config=CFG, device="cpu", progress=False, max_train=MAX_TRAIN)
    assert again == history
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == files


def test_different_config_is_refused(reference):
    run_dir, _ = reference
    with pytest.raises(ValueError, match="different configuration"):
        finetune("tiny-sup", run_dir=run_dir, config=CFG.replace(lr=1e-2), device="cpu", progress=False, max_train=MAX_TRAIN)


def _assert_same_run(run_dir, reference_dir, history, reference_history):
    assert _strip(history) == _strip(reference_history)
    for epoch in range(4):
        a, b = _weights(run_dir, epoch), _weights(reference_dir, epoch)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (epoch, k)


def test_resume_after_exception_mid_epoch(reference, tmp_path, monkeypatch):
    ref_dir, ref_history = reference
    real_step = training._train_step
    calls = {"n": 0}

    def failing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 1 has 3 steps: this is the middle of epoch 2
            raise KeyboardInterrupt("interrupted mid-epoch")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training, "_train_step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        finetune("tiny-sup", run_dir=tmp_path, config=CFG, device="cpu", progress=False, max_train=MAX_TRAIN)
    assert [e for e, _ in list_checkpoints(tmp_path, "embedded", "tiny-sup")] == [0, 1]
    monkeypatch.setattr(training, "_train_step", real_step)
    resumed_calls = {"n": 0}

    def counting_step(*args, **kwargs):
        resumed_calls["n"] += 1
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training, "_train_step", counting_step)
    history = finetune("tiny-sup", run_dir=tmp_path, config=CFG, device="cpu", progress=False, max_train=MAX_TRAIN)
    assert resumed_calls["n"] == 6  # epochs 2 and 3 only: epoch 1 was not redone
    _assert_same_run(tmp_path, ref_dir, history, ref_history)


def test_resume_after_sigkill(reference, tmp_path):
    ref_dir, ref_history = reference
    code = (
        "import sys, torch\n"
        f"torch.set_num_threads({torch.get_num_threads()})\n"
        "from iavutils.world.training import finetune, RECIPES\n"
        f"cfg = RECIPES['tiny'].replace(epochs=3, batch_size=32, max_val=64, eval_batch_size=64, warmup_epochs=0.5)\n"
        f"finetune('tiny-sup', run_dir=sys.argv[1], config=cfg, device='cpu', progress=False, max_train={MAX_TRAIN})\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env)
    target = tmp_path / "embedded" / "tiny-sup" / "checkpoints" / "epoch_001.safetensors"
    deadline = time.time() + 120
    try:
        while not target.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # no cleanup: as hard as a kill gets
        proc.wait()
    assert target.exists()
    history = finetune("tiny-sup", run_dir=tmp_path, config=CFG, device="cpu", progress=False, max_train=MAX_TRAIN)
    _assert_same_run(tmp_path, ref_dir, history, ref_history)
