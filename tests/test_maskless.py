"""A dataset without object masks (CIFAR-10) reaches every chapter's computation.

CIFAR-10 in its official format (written by :func:`iavutils.publish.rehearsal.write_cifar10`) and two
tiny presets (timm ``Beit`` and ``VisionTransformer``; CIFAR's 32×32 is their input size), each
finetuned for one epoch; then the functions every chapter 01–11 calls, with small parameters.
What needs masks (localization, the AAV with the mask) is skipped with a stated reason; the
rest is computed.
"""

from __future__ import annotations

import math

import pytest
import torch

from iavutils.analysis import checkpoints as ck
from iavutils.analysis import class_discrimination as ch07
from iavutils.analysis import disturbance as ch03
from iavutils.analysis import dynamics as ch02
from iavutils.analysis import explanations as ev
from iavutils.analysis import global_iav as ch05
from iavutils.analysis import head_ablation as ab
from iavutils.analysis import head_roles as ch06
from iavutils.analysis import iavs
from iavutils.analysis import images
from iavutils.analysis import receptive_field as ch04
from iavutils.analysis import robustness as ch01
from iavutils.analysis import separability as sp
from iavutils.analysis.study import Study
from iavutils.core import metrics
from iavutils.core.spec import AnalysisSpec
from iavutils.publish.explorer import build_explorer, summary_figure, top_heads
from iavutils.publish.rehearsal import write_cifar10

PRESETS = ["tiny-mim", "tiny-sup"]
SMALL = AnalysisSpec(num_images=4, n_samples=2, noise_level=0.15, seed=0, target="label", device="cpu",
                     progress=False)


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """A run directory with both presets finetuned on a small CIFAR-10 (one epoch)."""
    root = tmp_path_factory.mktemp("maskless")
    write_cifar10(root / "data", folder=True, archive=False)
    mp = pytest.MonkeyPatch()
    mp.setenv("IAV_DATA", str(root / "data"))
    mp.setenv("TQDM_DISABLE", "1")
    run = root / "runs"
    for p in PRESETS:
        ck.ensure_finetuned(p, "cifar10", run, epochs=1, max_train=32, device="cpu", progress=False)
    yield run
    mp.undo()


def test_load_images_without_masks(cifar_run):
    from iavutils.world.models import PRESETS as INFO

    data = images.load_images("cifar10", INFO["tiny-sup"], 4, seed=0)
    assert set(data) == {"x", "y", "indices"}
    assert data["x"].shape == (4, 3, 32, 32) and data["y"].dtype == torch.long
    assert not images.has_masks("cifar10") and images.has_masks("embedded")


def test_analysis_chapters_02_to_07(cifar_run):
    run = cifar_run
    common = dict(run_dir=run, spec=SMALL)
    r = iavs.checkpoint_analysis("tiny-sup", "cifar10", **common)
    study = Study(PRESETS, "cifar10", run, SMALL)
    assert "mask" not in r and r["iav"].shape == (4, 6, 4)
    # 01
    acc = ch01.accuracy_table(study.replace(spec=AnalysisSpec(device="cpu")))
    assert list(acc.columns) == ["model", "pretraining", "test accuracy (%)"]
    rob = ch01.robustness_curves(study.replace(spec=AnalysisSpec(device="cpu", progress=False)), num_eval=4)
    assert set(rob["shift_kind"]) == {"blur", "jigsaw-2", "jigsaw-grid"}
    # 02, 03, 04
    dyn = ch02.training_dynamics(study, stride=1)
    assert sorted(dyn["epoch"].unique()) == [0, 1]
    mask = ch03.masking_curves(study)
    assert set(mask["method"]) == set(ch03.MASK_METHODS)
    assert not ch04.entropy_over_epochs(study, stride=1).empty
    assert not ch04.last_layer_entropy(study).empty
    # 05: everything but the AAV with the mask, which is skipped with its reason
    examples = [ch07.example_maps(study, p, sample=0) for p in PRESETS]
    assert all("mask" not in e and e["image"].shape == (32, 32, 3) for e in examples)
    with pytest.warns(images.NoMasksWarning, match="cifar10 has no object masks"):
        scores = ch05.global_scores_over_epochs(study, stride=1, aav_reference="tiny-sup")
    assert set(scores["score"]) == {"IAV", "AAV (tiny-sup)"}
    uni = ch05.uniform_baselines(study, stride=1, aav_reference="tiny-sup")
    assert set(uni["score"]) == {"IAV", "AAV (tiny-sup)"}
    # 06, 07
    hs = ch06.head_scores(study)
    assert not ch06.head_type_table(hs).empty
    assert set(ch06.iav_tsne(study, perplexity=2.0)["model"]) == set(PRESETS)
    assert not ch07.class_separability(study).empty
    assert len(images.class_names("cifar10")) == 10


def test_gmar_chapter_08_skips_localization_with_reason(cifar_run):
    with pytest.warns(images.NoMasksWarning, match="localization"):
        results = {p: ev.run_explanation_eval(Study(PRESETS, "cifar10", cifar_run, SMALL), p) for p in PRESETS}
    assert all("aav_mask" not in r and not any(k.startswith("loc.") for k in r) for r in results.values())
    table = ev.explanation_table(results)
    assert table[table["method"].isin(ev.PERTURBATION_METHODS)]["auc_positive"].notna().all()
    assert table[table["method"].isin(ev.PATCH_MASKING_METHODS)]["auc_patch_positive"].notna().all()
    assert table["miou"].isna().all()
    assert len(ev.gmar_vs_rollout(results, n_boot=50)) == 2 * 2 * len(PRESETS)


def test_explorer_ablation_separability_09_to_11(cifar_run):
    widget, maps = build_explorer(",".join(PRESETS), str(cifar_run), "cifar10", image_index="0,1", n_samples=2,
                                  device="cpu")
    assert len(maps) == 2 * len(PRESETS)
    summary_figure(maps)
    assert len(top_heads(maps, k=2)) > 0
    res = {p: ab.run_head_ablation(Study(PRESETS, "cifar10", cifar_run, SMALL), p, ablation_images=4) for p in PRESETS}
    frame = ab.ablation_frame(res)
    assert len(frame) == 2 * 6 * 4 and frame["logit_drop"].notna().all()
    trends = sp.checkpoint_trends(Study(PRESETS, "cifar10", cifar_run, SMALL), epoch_stride=1)
    assert set(trends) == set(PRESETS) and trends["tiny-sup"]["epochs"].tolist() == [0, 1]
    assert not math.isnan(float(trends["tiny-sup"]["global_iav"].double().nanmean()))


def test_perturbation_fractions():
    assert metrics.perturbation_fractions(9) == metrics.DEFAULT_FRACTIONS
    assert metrics.perturbation_fractions(1) == (0.5,)
    with pytest.raises(ValueError, match="perturbation steps must be an integer >= 1, got 0"):
        metrics.perturbation_fractions(0)
