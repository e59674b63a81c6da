"""Tests of the notebooks' computations (the run plumbing, the cached analysis and the chapter modules
01–07 of iavutils.analysis) and figures (iavutils.publish.plots).

A fake run directory holds random-weight tiny presets (no shipped weights needed) with three
"epoch" checkpoints each, in the layout of iavutils.world.training; the image set is tiny.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from safetensors.torch import save_file

from iavutils.analysis import checkpoints as ck
from iavutils.analysis import class_discrimination as ch07
from iavutils.analysis import disturbance as ch03
from iavutils.analysis import dynamics as ch02
from iavutils.analysis import global_iav as ch05
from iavutils.analysis import head_roles as ch06
from iavutils.analysis import iavs
from iavutils.analysis import images
from iavutils.analysis import receptive_field as ch04
from iavutils.analysis import robustness as ch01
from iavutils.analysis import runs
from iavutils.analysis.study import Study
from iavutils.core.spec import AnalysisSpec
from iavutils.publish import figures_dynamics, plots
from iavutils.world.models import build_model

PRESETS = ("tiny-dino", "tiny-sup")
EPOCHS = 3  # checkpoints epoch_000 .. epoch_002
SMALL = AnalysisSpec(num_images=6, n_samples=2, noise_level=0.15, seed=0, device="cpu", progress=False)


def _spread(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    # Random weights of a larger scale than timm's init: peaked, model-specific attention.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                continue
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    for k, preset in enumerate(PRESETS):
        run = root / "embedded" / preset
        (run / "checkpoints").mkdir(parents=True)
        torch.manual_seed(k)
        model = _spread(build_model(preset, num_classes=10), seed=k)
        metrics = []
        for e in range(EPOCHS):
            if e:
                _spread(model, seed=100 * k + e)  # each "epoch" moves the weights a bit
            state = {n: v.detach().clone().contiguous() for n, v in model.state_dict().items()}
            save_file(state, run / "checkpoints" / f"epoch_{e:03d}.safetensors")
            metrics.append({"epoch": e, "train_loss": None if e == 0 else 1.0 / e, "train_acc": None if e == 0 else 0.1 * e,
                            "val_acc": 0.1 + 0.1 * e, "seconds": 1.0})
        (run / "config.json").write_text(json.dumps({"preset": preset, "dataset": "embedded", "num_classes": 10}))
        (run / "metrics.json").write_text(json.dumps(metrics))
    return root


# ----------------------------------------------------------------------------- names and paths


def test_resolve_run_dir_from_another_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IAV_RUN_DIR", raising=False)
    repo = runs.repo_root()
    assert repo is not None and (repo / "iavutils").is_dir()
    code = "from iavutils.analysis.runs import resolve_run_dir; print(resolve_run_dir(''))"
    env = {k: v for k, v in os.environ.items() if k != "IAV_RUN_DIR"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) == repo / "runs"
    monkeypatch.setenv("IAV_RUN_DIR", str(tmp_path / "elsewhere"))
    assert runs.resolve_run_dir(None) == (tmp_path / "elsewhere").resolve()
    monkeypatch.chdir(tmp_path)
    assert runs.resolve_run_dir("rel") == (tmp_path / "rel").resolve()


def test_parse_models() -> None:
    assert runs.parse_models("tiny") == ["tiny-mim", "tiny-dino", "tiny-sup", "tiny-sup21k"]
    assert runs.parse_models(ck.DEFAULT_TINY) == ["tiny-mim", "tiny-dino", "tiny-sup", "tiny-sup21k"]
    assert runs.parse_models(" tiny-dino , deit,tiny-dino") == ["tiny-dino", "deit"]
    assert runs.parse_models("real") == ["beit", "dino", "deit", "in21k"]
    assert runs.parse_models(["dino"]) == ["dino"]
    with pytest.raises(ValueError, match="unknown preset"):
        runs.parse_models("tiny-nope")
    with pytest.raises(ValueError):
        runs.parse_models(" , ")


def test_models_in_run_adds_finetuned_presets(run_dir: Path) -> None:
    assert ck.models_in_run(["tiny-mim"], "embedded", run_dir) == ["tiny-mim", "tiny-dino", "tiny-sup"]
    assert ck.models_in_run(["deit"], "cifar10", run_dir) == ["deit"]


def test_analysis_epochs_keep_the_last(run_dir: Path) -> None:
    assert ck.analysis_epochs("tiny-dino", "embedded", run_dir, stride=1) == [0, 1, 2]
    assert ck.analysis_epochs("tiny-dino", "embedded", run_dir, stride=2) == [0, 2]
    assert ck.analysis_epochs("tiny-dino", "embedded", run_dir, stride=5) == [0, 2]
    with pytest.raises(FileNotFoundError, match="00_finetune"):
        ck.analysis_epochs("tiny-mim", "embedded", run_dir)


# ----------------------------------------------------------------------------- maths


def test_normalized_distance() -> None:
    a = torch.rand(4, 5, 6)
    assert torch.allclose(ch02.normalized_distance(a, a, dims=2), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    # Scale does not matter; orthogonal non-negative maps are sqrt(2) apart.
    assert torch.allclose(ch02.normalized_distance(a, 3 * a, dims=2), torch.zeros(4, dtype=torch.float64), atol=1e-6)
    e0, e1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert torch.allclose(ch02.normalized_distance(e0, e1), torch.tensor([2**0.5], dtype=torch.float64))
    z = ch02.normalized_distance(torch.zeros(1, 3), torch.ones(1, 3))
    assert torch.isnan(z).all()


def test_rank_within_layer() -> None:
    v = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    assert iavs._rank_within_layer(v).tolist() == [[2, 0, 1], [0, 1, 2]]


def test_knn_accuracy() -> None:
    import numpy as np

    f = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    y = np.array([0, 0, 0, 1, 1, 1])
    assert ch07._loo_knn_accuracy(f, y, k=2) == 1.0


def _reference_iavs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AnalysisSpec) -> dict:
    """The straightforward reference of compute_iavs: every block's attention recorded, and the
    oracle SmoothGrad with the generator contract (noise seeds from ``Generator(seed)``)."""
    import iavutils as iu
    from oracles import smoothgrad as smoothgrad_reference  # tests/oracles.py: the reference implementations

    geo = iu.model_geometry(model)
    _, attn = iu.record_attention(model, x)
    cls = iu.cls_attention(attn, geo.num_prefix_tokens).detach().float()
    phi = smoothgrad_reference(model, x, y, spec.n_samples, spec.noise_level,
                               generator=torch.Generator().manual_seed(int(spec.seed))).detach()
    return {"iav": iu.ia_score(iu.patch_pool(phi, geo.grid), cls), "smoothgrad": phi, "cls_attn": cls}


def test_compute_iavs_engine_matches_reference(run_dir: Path) -> None:
    model, info = ck.load_finetuned("tiny-dino", "embedded", run_dir, 2, torch.device("cpu"))
    data = images.load_images("embedded", info, 3, seed=1)
    spec = AnalysisSpec(n_samples=3, noise_level=0.1, seed=5, device="cpu", progress=False)
    fast = iavs.compute_iavs(model, data["x"], data["y"], spec)
    ref = _reference_iavs(model, data["x"], data["y"], spec)
    assert fast["iav"].shape == (3, 6, 4) and fast["smoothgrad"].shape == (3, 32, 32)
    assert fast["cls_attn"].shape == (3, 6, 4, 64)
    torch.testing.assert_close(fast["cls_attn"], ref["cls_attn"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast["smoothgrad"], ref["smoothgrad"], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(fast["iav"], ref["iav"], atol=1e-5, rtol=1e-4)
    # Per-image seeds from dataset indices: an image's IAV does not depend on its companions.
    both = iavs.compute_iavs(model, data["x"], data["y"], spec, indices=data["indices"])
    one = iavs.compute_iavs(model, data["x"][1:2], data["y"][1:2], spec, indices=data["indices"][1:2])
    torch.testing.assert_close(both["iav"][1:2], one["iav"], atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- caching


def test_checkpoint_analysis_is_cached(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original, calls = iavs.compute_iavs, []

    def spy(*a, **k):
        calls.append(1)
        return original(*a, **k)

    monkeypatch.setattr(iavs, "compute_iavs", spy)
    spec = SMALL.replace(seed=7)
    first = iavs.checkpoint_analysis("tiny-sup", "embedded", 1, run_dir=run_dir, spec=spec)
    assert len(calls) == 1
    second = iavs.checkpoint_analysis("tiny-sup", "embedded", 1, run_dir=run_dir, spec=spec)
    assert len(calls) == 1, "the second call must come from the store"
    assert set(first) == set(second) >= {"iav", "smoothgrad", "cls_attn", "logits", "labels", "indices", "mask"}
    for k in first:
        assert torch.equal(first[k], second[k])
    assert first["iav"].shape == (6, 6, 4)
    # Another parameter is another entry.
    iavs.checkpoint_analysis("tiny-sup", "embedded", 1, run_dir=run_dir, spec=spec.replace(n_samples=3))
    assert len(calls) == 2
    assert any((run_dir / "cache" / "analysis").glob("*.safetensors"))
    # The key is the one written before the analysis specification existed: old caches stay valid.
    path = ck.checkpoint_path("tiny-sup", "embedded", run_dir, 1)
    old_key = {"v": 1, "preset": "tiny-sup", "dataset": "embedded", "epoch": 1,
               "checkpoint": ck.checkpoint_fingerprint(path), "split": "val", "num_images": 6, "n_samples": 2,
               "noise_level": 0.15, "seed": 7, "target": "label"}
    assert ("analysis", old_key) in ck.result_store(run_dir)
    # Another noise stream is another entry; the Gaussian one keeps the old key.
    assert spec.replace(noise="antithetic").cache_key() == {**spec.cache_key(), "noise": "antithetic"}


def test_same_images_for_every_model(run_dir: Path) -> None:
    a = iavs.checkpoint_analysis("tiny-dino", "embedded", None, run_dir=run_dir, spec=SMALL)
    b = iavs.checkpoint_analysis("tiny-sup", "embedded", None, run_dir=run_dir, spec=SMALL)
    assert torch.equal(a["indices"], b["indices"]) and torch.equal(a["labels"], b["labels"])


# ----------------------------------------------------------------------------- sections and figures


def test_sections_and_figures(run_dir: Path) -> None:
    models = list(PRESETS)
    hist = ck.training_history(models, "embedded", run_dir)
    assert set(hist["model"]) == set(models) and hist["val_acc"].notna().all()
    plots.accuracy_curves(hist)
    study = Study(models, "embedded", run_dir, SMALL)

    dyn = ch02.training_dynamics(study, stride=1)
    last = dyn[dyn["epoch"] == EPOCHS - 1]
    assert (last["phi_distance"].abs() < 1e-9).all() and (last["attention_distance"].abs() < 1e-9).all()
    assert (dyn[dyn["epoch"] == 0]["attention_distance"] > 0).all()
    assert (last["attention_distance_per_head"].abs() < 1e-9).all()
    assert list(dyn[dyn["model"] == "tiny-dino"]["stage"]) == ["before finetuning", "finetuned", "finetuned"]
    plots.training_dynamics(dyn)
    figures_dynamics.training_dynamics(dyn)
    summary = ch02.dynamics_summary(dyn)
    assert list(summary["epochs"]) == ["1 → 2"] * 2
    assert ch02.dynamics_reading(summary).startswith("*SmoothGrad*")
    assert "not found" in ch02.learning_rate_sentence(study)  # the fake run's config.json has no lr

    # Issue 11: a stride of 2 used to analyse epochs 0 and 2 only; the first finetuned epoch (the
    # reference of every change) is now always analysed.
    ent = ch04.entropy_over_epochs(study, stride=2)
    assert list(ch04.entropy_change(ent)["epochs"]) == ["1 → 2"] * 2
    figures_dynamics.head_profiles_over_finetuning(ent, value="entropy", ylabel="entropy (nats)")
    assert set(ent["epoch"]) == {0, 1, 2} and ((ent["entropy"] >= 0) & (ent["entropy"] <= torch.log(torch.tensor(64.0)).item() + 1e-6)).all()
    plots.head_profiles(ent, value="entropy", ylabel="entropy (nats)")
    box = ch04.last_layer_entropy(study)
    assert set(box["layer"]) == {6} and len(box) == 2 * 4 * 6
    plots.entropy_boxes(box, max_entropy=float(torch.log(torch.tensor(64.0))))

    glob = ch05.global_scores_over_epochs(study, stride=1)
    assert set(glob["score"]) == {"IAV", "AAV (tiny-dino)", "AAV (mask)"}
    assert glob["value"].between(0, 1).all()
    # The reference model's AAV at its last epoch is its own global-IAV.
    own = glob[(glob["model"] == "tiny-dino") & (glob["epoch"] == EPOCHS - 1)]
    iav = own[own["score"] == "IAV"].sort_values(["layer", "head"])["value"].to_numpy()
    aav = own[own["score"] == "AAV (tiny-dino)"].sort_values(["layer", "head"])["value"].to_numpy()
    assert abs(iav - aav).max() < 1e-6
    ub = ch05.uniform_baselines(study, stride=1)
    assert ub["baseline"].between(0, 1).all()
    # AAV maps are the same for every model, so is their uniform-attention score.
    assert ub[ub["score"] == "AAV (mask)"].groupby("epoch")["baseline"].nunique().eq(1).all()
    plots.head_profiles(glob, row="score", ylabel="global score", ylim=(0, 1), baselines=ub)
    table = ch05.later_layers_table(glob, ub)
    assert table.loc[("AAV (tiny-dino)", "tiny-dino"), "role"] == ch05.SELF_REFERENCE
    assert any("tiny-dino is the AAV reference" in t for t in ch05.contrast_sentences(table))
    figures_dynamics.head_profiles_over_finetuning(glob, row="score", baselines=ub, self_reference=ch05.SELF_REFERENCE)
    plots.global_iav_heatmaps(glob)

    hs = ch06.head_scores(study)
    assert len(hs) == 2 * 6 * 6 * 4
    table = ch06.head_type_table(hs)
    assert table.shape == (2, 6)
    plots.head_boxes(hs, baselines={"tiny-dino": 0.6})

    ts = ch06.iav_tsne(study, perplexity=3.0)
    assert set(ts["layer"]) == {f"L{i}" for i in range(1, 7)} | {"classifier"}
    plots.tsne_grid(ts, classes=images.class_names("embedded"))
    sep = ch07.class_separability(study)
    assert sep["knn_accuracy"].between(0, 100).all()
    plots.separability_curves(sep, chance=10.0)

    exm = [ch07.example_maps(study, p) for p in models]
    plots.example_maps(exm, classes=images.class_names("embedded"))

    mc = ch03.masking_curves(study, ratios=(0.5, 1.0))
    assert set(mc["method"]) == set(ch03.MASK_METHODS) and set(mc["ratio"]) == {0.0, 50.0, 100.0}
    plots.masking_curves(mc)

    acc = ch01.accuracy_table(study.replace(spec=AnalysisSpec(device="cpu")), num_eval=16)
    assert acc.shape[0] == 2
    rob = ch01.robustness_curves(study.replace(spec=AnalysisSpec(device="cpu", progress=False)), num_eval=16,
                                 blur_degrees=(0.0, 1.0))
    assert set(rob["shift_kind"]) == {"blur", "jigsaw-2", "jigsaw-grid"}
    assert set(rob[rob["shift_kind"] == "jigsaw-grid"]["level"]) == {0, 1, 4, 16, 64}
    clean = rob[rob["level"] == 0].groupby("model")["accuracy"].nunique()
    assert (clean == 1).all(), "every shift's level 0 is the same clean accuracy"
    plots.robustness_curves(rob)
    matplotlib.pyplot.close("all")


def test_model_colors_are_fixed() -> None:
    assert plots.model_color("tiny-dino") == plots.model_color("dino")
    assert len({plots.model_color(p) for p in runs.parse_models("tiny")}) == 4
    assert plots.model_color("something-new") == plots.model_color("something-new")
    shades = plots.epoch_shades("tiny-sup", [0, 3, 6])
    lum = [sum(shades[e]) for e in (0, 3, 6)]
    assert lum[0] > lum[1] > lum[2]  # later = darker


def test_pretraining_contrast() -> None:
    sep = ch05.pretraining_contrast({"tiny-mim": 0.2, "tiny-dino": 0.3, "tiny-sup": 0.5, "tiny-sup21k": 0.6},
                                  "self-supervised lower", "d")
    assert "separates" in sep
    avg = ch05.pretraining_contrast({"tiny-mim": 0.2, "tiny-dino": 0.7, "tiny-sup": 0.5, "tiny-sup21k": 0.6},
                                  "self-supervised lower", "d")
    assert "on average only" in avg
    no = ch05.pretraining_contrast({"tiny-mim": 0.2, "tiny-dino": 0.7, "tiny-sup": 0.5, "tiny-sup21k": 0.6},
                                 "self-supervised higher", "d")
    assert "does not hold" in no
    assert "needs both" in ch05.pretraining_contrast({"tiny-sup": 1.0}, "self-supervised higher", "d")


def test_ensure_finetuned_takes_the_existing_run(tmp_path: Path) -> None:
    # 00_finetune makes a run with its own epochs; later chapters ask for "a finetuned model"
    # without overrides and must take that run instead of failing on a config mismatch.
    first = ck.ensure_finetuned("tiny-sup", "embedded", tmp_path, epochs=1, max_train=16, device="cpu", progress=False)
    ckpt = tmp_path / "embedded" / "tiny-sup" / "checkpoints" / "epoch_001.safetensors"
    stamp = ckpt.stat().st_mtime_ns
    again = ck.ensure_finetuned("tiny-sup", "embedded", tmp_path, device="cpu", progress=False)
    assert list(again["epoch"]) == list(first["epoch"]) == [0, 1]
    assert ckpt.stat().st_mtime_ns == stamp  # nothing retrained
    with pytest.raises(ValueError, match="different configuration"):
        ck.ensure_finetuned("tiny-sup", "embedded", tmp_path, epochs=2, device="cpu", progress=False)


def test_checkpoint_analysis_with_tol_reports_n_and_error(run_dir: Path) -> None:
    spec = SMALL.replace(tol=0.2, max_samples=32)
    r = iavs.checkpoint_analysis("tiny-dino", "embedded", None, run_dir=run_dir, spec=spec)
    assert r["error"].shape == r["iav"].shape[1:] == (6, 4)
    assert int(r["n_used"]) in (16, 32)
    assert int(r["n_used"]) == 32 or bool((r["error"] <= 0.2).all())  # stopped at tol, or at the cap
    again = iavs.checkpoint_analysis("tiny-dino", "embedded", None, run_dir=run_dir, spec=spec)  # from the store
    assert torch.equal(again["n_used"], r["n_used"]) and torch.equal(again["error"], r["error"])
    assert "n_used" not in iavs.checkpoint_analysis("tiny-dino", "embedded", None, run_dir=run_dir, spec=SMALL)
    table = iavs.precision_table(Study(["tiny-dino"], "embedded", run_dir, spec))
    assert table.loc[0, "n per image"] == int(r["n_used"]) and table.loc[0, "largest error"] >= 0
