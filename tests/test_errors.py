"""Every user error of the library says what is wrong and what to do (issue 12).

Hub weights offline, presets, num_classes, targets, dtype/device, inference mode, damaged run
files, store results and devices. Messages are asserted, not just the exception types.
"""

import dataclasses
import json
import socket
import time
import warnings

import pytest
import torch
from conftest import make_model
from safetensors.torch import save_file

import iavutils as iu
from iavutils.core import attribution, hooks, scores, sweep
from iavutils.world import hub, training
from iavutils.world.models import PRESETS, WeightsNotAvailableError, load_model
from iavutils.world.store import ResultStore

# ---- hub weights offline ------------------------------------------------------------------------


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hub"


@pytest.fixture
def no_network(monkeypatch):
    probes = []

    def refuse(address, *args, **kwargs):
        probes.append(address)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return probes


def test_offline_without_cache_fails_fast_and_says_what_to_do(empty_hub_cache, no_network):
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotAvailableError) as err:
        load_model("dino", num_classes=10)
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert "hf download timm/vit_base_patch16_224.dino" in msg and "huggingface-cli" not in msg
    assert "HF_HUB_OFFLINE" in msg and "weights=" in msg and "num_classes=10" in msg
    assert "cannot be reached" in msg and str(empty_hub_cache) in msg
    assert no_network  # the reachability check ran (and nothing else touched the network)


def test_hf_hub_offline_fails_at_once_without_probing(empty_hub_cache, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotAvailableError, match="HF_HUB_OFFLINE=1 is set") as err:
        load_model("beit", num_classes=10)
    assert time.perf_counter() - t0 < 1 and no_network == []
    assert "hf download microsoft/beit-base-patch16-224-pt22k" in str(err.value)


def test_slow_name_resolution_is_cut_short(empty_hub_cache, monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(5)
        raise OSError("too late")

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setattr(hub, "HUB_PROBE_TIMEOUT", 0.3)
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotAvailableError, match=r"no answer within 0\.3 s"):
        load_model("deit", num_classes=10)
    assert time.perf_counter() - t0 < 2


def _fake_cached_repo(cache, repo_id, state):
    """The hub cache layout huggingface_hub reads offline: refs/main -> snapshots/<commit>/file."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file(state, snap / "model.safetensors")


@pytest.mark.parametrize("how", ["unreachable", "HF_HUB_OFFLINE"])
def test_cached_weights_load_offline(empty_hub_cache, no_network, monkeypatch, how):
    # A small timm model with hub weights stands in for ViT-B: same code path, kilobytes of cache.
    import timm
    from huggingface_hub import constants

    info = dataclasses.replace(PRESETS["deit"], preset="hub-test", timm_name="test_vit.r160_in1k",
                               hub_id="timm/test_vit.r160_in1k", input_size=(160, 160))
    monkeypatch.setitem(PRESETS, "hub-test", info)
    torch.manual_seed(0)
    reference = timm.create_model("test_vit.r160_in1k", pretrained=False)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    _fake_cached_repo(empty_hub_cache, "timm/test_vit.r160_in1k", state)
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, loaded = load_model("hub-test")  # keeps the pretrained 1000-class head
    assert loaded.num_classes == 1000
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert constants.HF_HUB_OFFLINE is False  # the switch was restored
    assert (no_network == []) == (how == "HF_HUB_OFFLINE")


# ---- presets and num_classes ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, True, 2.5, "10"])
def test_num_classes_is_validated(bad):
    with pytest.raises(ValueError, match="num_classes must be a non-negative int") as err:
        load_model("tiny-dino", num_classes=bad)
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize("preset", ["tiny-dino", "tiny-mim", "dino", "beit"])
def test_headless_presets_need_an_explicit_num_classes(preset):
    with pytest.raises(ValueError, match=rf"load_model\('{preset}'\) needs an explicit num_classes") as err:
        load_model(preset)
    assert "num_classes=0 for the features only" in str(err.value)


def test_num_classes_zero_and_pretrained_heads():
    model, info = load_model("tiny-mim", num_classes=0)
    assert info.num_classes == 0 and isinstance(model.head, torch.nn.Identity)
    _, info = load_model("tiny-sup21k")
    assert info.num_classes > 0
    with pytest.raises(ValueError, match="pretrained=False there is no pretrained head"):
        load_model("tiny-sup", pretrained=False)


def test_unknown_preset_in_finetune(tmp_path):
    with pytest.raises(ValueError, match=r"unknown preset 'tiny-foo'; choose from \[.*'tiny-dino'"):
        training.finetune("tiny-foo", run_dir=tmp_path, device="cpu", progress=False)
    assert list(tmp_path.iterdir()) == []


# ---- devices ------------------------------------------------------------------------------------


def test_finetune_on_a_missing_gpu_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device='cuda' was requested, but CUDA is not available") as err:
        training.finetune("tiny-sup", run_dir=tmp_path, device="cuda", progress=False)
    assert "device='cpu'" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_device_names():
    with pytest.raises(ValueError, match="is not a device name"):
        training.resolve_device("gpu0")
    assert training.resolve_device("cpu") == torch.device("cpu")


# ---- targets ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit():
    return make_model("vit")


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


CALLS = {
    "smoothgrad": lambda m, x, t: iu.smoothgrad(m, x, t, n_samples=1),
    "gradcam": lambda m, x, t: iu.gradcam(m, x, t),
    "iav": lambda m, x, t: iu.iav(m, x, t, n_samples=1),
    "gmar": lambda m, x, t: iu.gmar(m, x, t),
    "gradient_rollout": lambda m, x, t: iu.gradient_rollout(m, x, t),
    "smoothgrad_passes": lambda m, x, t: attribution.smoothgrad_passes(m, x, t, n_samples=1),
}


@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (3.7, "got 3.7 \\(float\\).*int\\(target\\)"),
        (True, "got the bool True"),
        (torch.tensor([0.0, 1.0]), "got a torch.float32 tensor.*target.long\\(\\)"),
        (torch.tensor([True, False]), "got a torch.bool tensor"),
        ("label", "got the string 'label'"),
    ],
)
def test_bad_targets_are_rejected(vit, images, method, target, expected):
    with pytest.raises(TypeError, match=expected) as err:
        CALLS[method](vit, images, target)
    assert "an int class index, or an integer tensor of shape [B]" in str(err.value)


def test_good_target_forms_agree(vit, images):
    import numpy as np

    ref = iu.gradcam(vit, images, torch.tensor([1, 1]))
    for t in (1, np.int64(1), [1, 1], torch.tensor(1), np.array([1, 1])):
        torch.testing.assert_close(iu.gradcam(vit, images, t), ref)
    torch.testing.assert_close(iu.gradcam(vit, images, "predicted"), iu.gradcam(vit, images, None))


def test_iav_dataset_target_names():
    with pytest.raises(ValueError, match="target must be 'pred' .* or 'label', got 'labels'"):
        sweep.iav_dataset(make_model("vit"), [], target="labels")


# ---- dtype and device of the input --------------------------------------------------------------

ENTRY_POINTS = {
    "record_attention": lambda m, x: iu.record_attention(m, x),
    "aav": lambda m, x: iu.aav(m, x, torch.ones(x.shape[0], 32, 32)),
    "clean_cls_attention": lambda m, x: scores.clean_cls_attention(m, x),
    **{k: (lambda f: lambda m, x: f(m, x, 0))(f) for k, f in CALLS.items()},
}


@pytest.mark.parametrize("method", sorted(ENTRY_POINTS))
def test_half_input_into_float_model(vit, images, method):
    with pytest.raises(ValueError, match="the input is torch.float16 but the model's weights are torch.float32") as err:
        ENTRY_POINTS[method](vit, images.half())
    assert "x = x.to(device='cpu', dtype=torch.float32)" in str(err.value)


def test_input_on_another_device(vit, images):
    meta = images.to("meta")
    with pytest.raises(ValueError, match="the input is on meta but the model is on cpu") as err:
        hooks.check_dtype_device(vit, meta)
    assert "x = x.to(device='cpu'" in str(err.value)


# ---- inference mode -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(CALLS))
def test_gradient_methods_under_inference_mode(vit, images, method):
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inside torch.inference_mode\\(\\)") as err:
        CALLS[method](vit, images, 0)
    assert "needs gradients" in str(err.value) and "outside the inference_mode block" in str(err.value)


def test_record_attention_with_grad_under_inference_mode(vit, images):
    with torch.inference_mode():
        iu.record_attention(vit, images)  # no gradients needed: fine
        with pytest.raises(RuntimeError, match=r"record_attention\(grad=True\) needs gradients"):
            iu.record_attention(vit, images, grad=True)


@pytest.mark.parametrize("method", sorted(CALLS))
def test_gradient_methods_under_no_grad_and_on_inference_tensors(vit, images, method):
    with torch.no_grad():
        a = CALLS[method](vit, images, 0)
    with torch.inference_mode():
        frozen = images.clone()  # an inference tensor, used outside inference mode
    b = CALLS[method](vit, frozen, 0)
    a = a["patches"] if isinstance(a, dict) else a
    b = b["patches"] if isinstance(b, dict) else b
    assert torch.isfinite(a).any() and a.shape == b.shape


# ---- damaged run files --------------------------------------------------------------------------

CFG = training.RECIPES["tiny"].replace(epochs=2, batch_size=32, max_val=32, eval_batch_size=32, warmup_epochs=0.5)


def _finetune(run_dir):
    return training.finetune("tiny-sup", run_dir=run_dir, config=CFG, device="cpu", progress=False, max_train=64)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, _finetune(run_dir)


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst / "embedded" / "tiny-sup"


def test_truncated_safetensors_is_named(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="cannot read the weights file .*w.safetensors: truncated"):
        load_model("tiny-sup", 10, weights=path)
    pt = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(100)}, pt)
    pt.write_bytes(pt.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot read the weights file .*w.pt"):
        load_model("tiny-sup", 10, weights=pt)


def test_damaged_checkpoint_is_named_by_load_checkpoint(finished_run, tmp_path):
    run = _copy_run(finished_run[0], tmp_path)
    ckpt = run / "checkpoints" / "epoch_001.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"cannot read the weights file {ckpt}: truncated"):
        training.load_checkpoint(tmp_path, "embedded", "tiny-sup", epoch=1)


@pytest.mark.parametrize("name", ["config.json", "metrics.json"])
def test_half_written_json_is_named(finished_run, tmp_path, name):
    run = _copy_run(finished_run[0], tmp_path)
    path = run / name
    path.write_text(path.read_text()[:30])
    with pytest.raises(ValueError, match=f"{path} is unreadable") as err:
        _finetune(tmp_path)
    assert "delete" in str(err.value)
    if name == "config.json":
        with pytest.raises(ValueError, match=f"{path} is unreadable"):
            training.load_checkpoint(tmp_path, "embedded", "tiny-sup")


@pytest.mark.parametrize("damaged", ["checkpoint", "state"])
def test_resume_skips_a_damaged_newest_epoch(finished_run, tmp_path, monkeypatch, damaged):
    ref_dir, ref_history = finished_run
    # a run interrupted after epoch 1 of 2 (two training states are kept while training)...
    calls = {"n": 0}
    real = training._train_step

    def stop_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 1 has 2 steps
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "_train_step", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        _finetune(tmp_path)
    monkeypatch.setattr(training, "_train_step", real)
    ck = tmp_path / "embedded" / "tiny-sup" / "checkpoints"
    # ... whose newest file is damaged: resumed from epoch 0, the newest one that is whole
    path = ck / ("epoch_001.safetensors" if damaged == "checkpoint" else "train_state_001.pt")
    path.write_bytes(path.read_bytes()[:2000])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = _finetune(tmp_path)
    assert any(str(path) in str(w.message) and "damaged" in str(w.message) for w in caught)
    strip = lambda ms: [{k: v for k, v in m.items() if k != "seconds"} for m in ms]  # noqa: E731
    assert strip(history) == strip(ref_history)
    assert json.loads((ck.parent / "metrics.json").read_text()) == history
    assert sorted(p.name for p in ck.glob("train_state_*.pt")) == ["train_state_002.pt"]


def test_resume_falls_back_one_epoch_when_the_newest_state_is_damaged(finished_run, tmp_path):
    # three epochs: stop after epoch 2, damage its state, resume from epoch 1 (its state is kept)
    cfg3 = CFG.replace(epochs=3)
    run_dir = tmp_path
    steps = {"n": 0}
    real = training._train_step

    def stop(*args, **kwargs):
        steps["n"] += 1
        if steps["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    training._train_step = stop
    try:
        with pytest.raises(KeyboardInterrupt):
            training.finetune("tiny-sup", run_dir=run_dir, config=cfg3, device="cpu", progress=False, max_train=64)
    finally:
        training._train_step = real
    ck = run_dir / "embedded" / "tiny-sup" / "checkpoints"
    assert sorted(p.name for p in ck.glob("train_state_*.pt")) == ["train_state_001.pt", "train_state_002.pt"]
    state = ck / "train_state_002.pt"
    state.write_bytes(state.read_bytes()[:500])
    counted = {"n": 0}

    def count(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)

    training._train_step = count
    try:
        with pytest.warns(RuntimeWarning, match="damaged training state .*train_state_002.pt"):
            history = training.finetune("tiny-sup", run_dir=run_dir, config=cfg3, device="cpu", progress=False, max_train=64)
    finally:
        training._train_step = real
    assert counted["n"] == 4  # epochs 2 and 3 (2 steps each): epoch 1 was not redone
    assert [m["epoch"] for m in history] == [0, 1, 2, 3]


# ---- results store ------------------------------------------------------------------------------


def test_store_compute_returning_floats(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(TypeError, match=r"what compute\(\) returned for result 'acc' must be a dict\[str, Tensor\], but \['top1'\] is float") as err:
        store.cached("acc", {"k": 1}, lambda: {"top1": 0.75})
    assert "torch.tensor(score)" in str(err.value)
    with pytest.raises(TypeError, match="got float"):
        store.cached("acc", {"k": 2}, lambda: 0.75)
    assert not (tmp_path / "cache" / "acc").exists() or not list((tmp_path / "cache" / "acc").iterdir())
