"""Tables and verdicts of chapters 08, 10 and 11 (and chapter 03's generated reading) on hand-made inputs.

One test per verdict case; the rules themselves are also tested in ``test_verdict_rules.py``.

The rules are those the notebooks applied before they moved into
``iavutils.analysis.explanation_report``, ``head_ablation`` and ``pretraining_types``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from iavutils.analysis import disturbance as ch03
from iavutils.analysis import explanation_report as er
from iavutils.analysis import head_ablation as ha
from iavutils.analysis import pretraining_types as pt
from iavutils.analysis.explanations import explanation_table
from iavutils.analysis.separability import SeparabilityResult

# --------------------------------------------------------------------------- chapter 10

GROUP_KEYS = ("high", "low", "all", "high_control", "low_control")


def _ablation_result(lower: float, upper: float, all_high: bool = False, L: int = 2, H: int = 4) -> dict:
    """A run_head_ablation-like result: heads 0-1 of each layer in the lower half, 2-3 in the upper."""
    ia = torch.tensor([[0.2, 0.3, 0.7, 0.8]] * L)
    high_rel = ia > 0.5
    high_ia = torch.ones(L, H, dtype=torch.bool) if all_high else high_rel
    drop = torch.where(high_rel, torch.tensor(upper), torch.tensor(lower))
    r = {
        "ia": ia, "high_ia": high_ia.float(), "high_rel": high_rel.float(), "gmar_weight": torch.full((L, H), 1 / H),
        "single.accuracy": torch.tensor(0.5), "single.accuracy_drop": drop / 10, "single.logit_drop": drop,
    }
    for prefix, split in (("group", high_ia), ("rgroup", high_rel)):
        for k in GROUP_KEYS:
            v = {"high": upper, "low": lower, "all": upper + lower, "high_control": 0.5, "low_control": 0.5}[k]
            if k == "low" and not (~split).any():
                v = float("nan")  # an empty group
            r[f"{prefix}.{k}_logit_drop"] = torch.full((L,), v)
            r[f"{prefix}.{k}_accuracy_drop"] = torch.full((L,), v / 10)
        r[f"{prefix}.n_high"] = split.sum(1).float()
        r[f"{prefix}.n_low"] = (~split).sum(1).float()
    return r


def _ablation_tables(lower: float, upper: float, all_high: bool = False):
    models = ["tiny-a", "tiny-b"]
    results = {p: _ablation_result(lower, upper, all_high) for p in models}
    clean = ha.clean_table(results, models)
    heads = ha.head_frame(results, models)
    corr = ha.correlation_table(heads, models)
    groups_rel = ha.group_frame(results, models, "rgroup")
    return models, results, clean, heads, corr, groups_rel


def test_ablation_tables():
    models, results, clean, heads, corr, groups_rel = _ablation_tables(0.1, 1.0)
    assert clean["clean accuracy (%)"].tolist() == [50.0, 50.0]
    assert clean["High-IA heads"].tolist() == [4, 4] and clean["Low-IA heads"].tolist() == [4, 4]
    assert clean["lowest global-IAV"].tolist() == pytest.approx([0.2, 0.2])
    assert list(heads["model"].cat.categories) == models
    assert set(heads["head type"]) == {"High-IA", "Low-IA"} and len(heads) == 16
    assert list(corr.index) == models + ["all models (pooled)"]
    assert corr.loc["all models (pooled)", "heads"] == 16
    assert corr.loc["tiny-a", "mean drop lower half"] == pytest.approx(0.1)
    assert corr.loc["tiny-a", "mean drop upper half"] == pytest.approx(1.0)
    assert corr.loc["tiny-a", "ρ(logit drop, IA-Score)"] > 0.8
    assert set(groups_rel["group"]) == {g for g, _ in ha.GROUPS} and set(groups_rel["model"]) == set(models)
    assert len(groups_rel) == 2 * 2 * len(ha.GROUPS)


def test_ablation_verdict_cannot_tell():
    models, _, clean, _, corr, groups_rel = _ablation_tables(0.0, 0.0)
    text = ha.ablation_verdict(corr, groups_rel, clean, models)
    body = text.split("\n\n", 1)[1]  # after the rule, which names every case
    assert "**Cannot tell**" in body and "**Yes**" not in body and "**No**" not in body and "Partly" not in text
    assert text.startswith("Rule (α = 0.05") and text.count("\n- ") == 2 and "\n\n- **tiny-a**" in text


# The old rule called (0.8, 1.0) "No" (0.8 >= 0.5 * 1.0) and (0.1, 1.0) "Partly" from a ratio of the
# means (issue 11, protocol error 3). With every upper-half head costing more than every lower-half
# one, the one-sided test and the interval of rho both say "Yes" now.
def test_ablation_verdict_yes_when_upper_half_costs_more():
    models, _, clean, _, corr, groups_rel = _ablation_tables(0.8, 1.0)
    text = ha.ablation_verdict(corr, groups_rel, clean, models, label=str.upper)
    assert "**Yes** (all heads pooled: 0.800 vs 1.000 logits per ablated lower-/upper-half head" in text
    assert "Heads with low IA-Scores matter less here" in text
    assert "- **TINY-A**: **Yes**" in text and "4 Low-IA head(s)" in text  # the label function names the models
    assert "no Low-IA head in this run" not in text


def test_ablation_verdict_yes_with_group_controls():
    models, _, clean, _, corr, groups_rel = _ablation_tables(0.1, 1.0)
    text = ha.ablation_verdict(corr, groups_rel, clean, models)
    assert "**Yes** (all heads pooled: 0.100 vs 1.000 logits" in text and "Partly" not in text
    assert "by 0.100 on average vs 0.500 for same-size sets of that layer's heads (less)" in text


def test_ablation_verdict_no_when_lower_half_costs_more():
    models, _, clean, _, corr, groups_rel = _ablation_tables(1.0, 0.1)
    text = ha.ablation_verdict(corr, groups_rel, clean, models)
    assert "**No** (all heads pooled: 1.000 vs 0.100 logits" in text
    assert "cost more than the others when ablated" in text


def test_ablation_verdict_without_low_ia_heads_uses_the_relative_split():
    models, _, clean, _, corr, groups_rel = _ablation_tables(0.1, 1.0, all_high=True)
    assert (clean["Low-IA heads"] == 0).all()
    text = ha.ablation_verdict(corr, groups_rel, clean, models)
    assert "**Yes**" in text  # "Partly" before the rule became a test (issue 11)
    assert text.endswith("so the paper's question is answered here with the relative split.")


# --------------------------------------------------------------------------- chapter 08


def _explanation_results(masks: bool = True) -> dict:
    fr = torch.tensor([0.0, 0.5, 1.0])
    ones, zeros = torch.ones(3, 4), torch.zeros(3, 4)
    res = {"fractions": fr, "labels": torch.zeros(4, dtype=torch.long), "target": torch.zeros(4, dtype=torch.long)}
    for m, good in (("rollout", 0.5), ("gmar_l1", 1.0), ("random", 0.0)):
        res[f"map.{m}"] = torch.rand(4, 64)  # an 8x8 patch grid, as the tiny presets
        res[f"positive.{m}"] = zeros + (1 - good)
        res[f"negative.{m}"] = zeros + good
        if masks:
            for k in ("pixel_accuracy", "miou", "ap", "pointing"):
                res[f"loc.{k}.{m}"] = torch.full((4,), good)
    res["patch_positive.rollout"] = ones
    if masks:
        res["aav_mask"] = torch.rand(4, 2, 3)  # [B,L,H]
    return res


def test_explanation_tables():
    results = {"tiny-a": _explanation_results(), "tiny-b": _explanation_results()}
    table = explanation_table(results)
    order = er.method_order(table)
    assert order == ["rollout", "gmar_l1", "random"]  # EXPLANATION_METHODS order
    aucs = er.auc_tables(table, ["tiny-b", "tiny-a"])
    assert list(aucs) == [title for _, title in er.AUC_TABLES]
    pos = aucs["positive perturbation AUC (lower = better)"]
    assert list(pos.columns) == ["tiny-b", "tiny-a"] and list(pos.index) == order
    assert pos.loc["gmar_l1", "tiny-a"] == 0.0 and pos.loc["random", "tiny-a"] == 100.0
    patch = aucs["patch masking AUC, IAV Fig. 5 (lower = better)"]
    assert list(patch.index) == ["rollout"]  # methods without a value are dropped
    loc = er.localization_tables(table, ["tiny-a", "tiny-b"])
    assert list(loc) == ["pixel_accuracy", "miou", "ap", "pointing"] and loc["miou"].loc["rollout", "tiny-a"] == 0.5
    curves = er.perturbation_frame(results)
    assert len(curves) == 2 * 3 * 2 * 3 and set(curves["mode"]) == {"positive", "negative"}
    assert curves["removed pixels (%)"].max() == 100.0
    aav = er.mask_aav_frame(results)
    assert len(aav) == 2 * 2 * 3 and aav["layer"].min() == 1


def test_explanation_tables_without_masks():
    results = {"tiny-a": _explanation_results(masks=False)}
    table = explanation_table(results)
    assert er.localization_tables(table, ["tiny-a"]) == {}
    assert er.mask_aav_frame(results).empty
    assert "{dataset}" in er.NO_MASKS_LOCALIZATION and "{dataset}" in er.NO_MASKS_AAV


def _comparisons(verdicts: list[str]) -> pd.DataFrame:
    rows = []
    for i, v in enumerate(verdicts):
        d = {"better": -1.0, "worse": 1.0, "no difference": 0.0}[v]
        rows.append({"model": f"m{i // 4}", "method": "gmar_l1", "reference": "rollout",
                     "mode": ("positive", "negative")[i % 2], "diff": d, "low": d - 0.5, "high": d + 0.5,
                     "n_images": 8, "verdict": v})
    return pd.DataFrame(rows)


def test_gmar_verdict_better():
    table = pd.DataFrame({"model": ["m0", "m0"], "method": ["gmar_l1", "rollout"], "miou": [0.6, 0.4]})
    text = er.gmar_verdict(_comparisons(["better", "better", "better", "no difference"]), table, 1)
    assert text.startswith("Over 1 model(s) × 2 GMAR norms × 2 tests = 4 comparisons: GMAR is **better** than "
                           "rollout in 3, **worse** in 0 and **indistinguishable** in 1.")
    assert "mean mIoU difference GMAR-L1 − rollout = +0.200" in text
    assert text.endswith("**Verdict: on these models GMAR beats rollout.**")


def test_gmar_verdict_worse():
    table = pd.DataFrame({"model": ["m0"], "method": ["rollout"], "miou": [float("nan")]})
    text = er.gmar_verdict(_comparisons(["worse", "worse", "worse", "better"]), table, 1)
    assert "mIoU" not in text  # no masks: no localization sentence
    assert text.endswith("**Verdict: on these models GMAR does not beat rollout — it is worse.**")


def test_gmar_verdict_cannot_say():
    table = pd.DataFrame({"model": ["m0"], "method": ["rollout"], "miou": [float("nan")]})
    text = er.gmar_verdict(_comparisons(["better", "better", "worse", "no difference"]), table, 1)
    assert "**Verdict: on these models we cannot say that GMAR beats rollout**" in text


def test_comparison_table_labels_every_interval():
    fr = torch.tensor([0.0, 0.5, 1.0])
    res = {"fractions": fr}
    for m, pos, neg in (("rollout", 0.5, 0.5), ("gmar_l1", 0.0, 1.0), ("gmar_l2", 1.0, 0.0)):
        res[f"positive.{m}"] = torch.full((3, 10), pos)
        res[f"negative.{m}"] = torch.full((3, 10), neg)
    cmp = er.comparison_table({"m": res}, n_boot=50).set_index(["method", "mode"])
    assert cmp.loc[("gmar_l1", "positive"), "verdict"] == "better"
    assert cmp.loc[("gmar_l2", "negative"), "verdict"] == "worse"
    res["positive.gmar_l1"] = res["positive.rollout"]
    cmp = er.comparison_table({"m": res}, n_boot=50).set_index(["method", "mode"])
    assert cmp.loc[("gmar_l1", "positive"), "verdict"] == "no difference"


# --------------------------------------------------------------------------- chapter 11


def _result(accuracy: float, p_value: float, min_p: float, per_group: dict | None = None) -> SeparabilityResult:
    per_group = per_group or {"tiny-a": accuracy, "tiny-b": accuracy}
    return SeparabilityResult(accuracy=accuracy, per_group=per_group, predictions=np.zeros(4), null=np.array([0.5]),
                              p_value=p_value, min_p_value=min_p, n_groups=len(per_group), n_rows=4, exact=True)


def test_separability_verdict_separates():
    text = pt.separability_verdict({"global-IAV": _result(1.0, 0.01, 0.01)})
    assert "beyond what chance labellings of these models achieve" in text
    assert "does recognise every held-out model's pretraining type" in text
    assert "Controls" not in text


def test_separability_verdict_cannot_be_established():
    results = {"global-IAV": _result(0.8, 0.4, 1 / 3, {"tiny-a": 1.0, "tiny-b": 0.6}),
               "entropy (control)": _result(0.25, 1.0, 1 / 3), "accuracy (control)": _result(0.5, 0.7, 1 / 3)}
    text = pt.separability_verdict(results)
    paragraphs = text.split("\n\n")
    assert paragraphs[0].startswith("**global-IAV**: leave-one-model-out accuracy 0.80")
    assert paragraphs[1].startswith("**entropy (control)**") and paragraphs[2].startswith("**accuracy (control)**")
    assert "the embedded world cannot establish the paper's claim statistically" in text and "(the minimum is 0.33)" in text
    assert "mostly recognises held-out models (accuracy 0.80; not every checkpoint of tiny-b)" in text
    assert "the best control (accuracy (control)) reaches 0.50 against 0.80" in text


def test_separability_verdict_does_not_separate():
    text = pt.separability_verdict({"global-IAV": _result(0.5, 0.3, 0.01)})
    assert "does not separate the pretraining types better than chance labellings here" in text
    assert "recognises held-out models only partly (accuracy 0.50)" in text


def test_pretraining_labels_and_tables():
    labels = pt.pretraining_labels(["tiny-mim", "tiny-dino", "tiny-sup", "tiny-sup21k"])
    assert labels == {"tiny-mim": 1, "tiny-dino": 1, "tiny-sup": 0, "tiny-sup21k": 0}
    assert pt.too_few_models(labels) == ""
    reason = pt.too_few_models({"tiny-mim": 1, "tiny-sup": 0, "tiny-sup21k": 0})
    assert reason.startswith("This run has 1 self-supervised and 2 supervised model(s)")
    assert list(pt.pretraining_table(["tiny-sup"])["pretraining"]) == ["supervised"]
    trends = {"tiny-sup": {"epochs": torch.tensor([0, 2]), "global_iav": torch.tensor([[[0.2, 0.4]], [[0.6, math.nan]]])}}
    df = pt.trend_frame(trends)
    assert df["global-IAV (layer mean)"].tolist() == pytest.approx([0.3, 0.6]) and set(df["layer"]) == {"layer 1"}
    acc = pt.per_model_accuracy({"global-IAV": _result(0.5, 1.0, 1.0, {"b": 1.0, "a": 0.0})}, ["a", "b"])
    assert acc["global-IAV"].tolist() == [0.0, 1.0]


# --------------------------------------------------------------------------- chapter 03


def test_masking_reading_takes_every_number_from_the_frame():
    rows = []
    for m, clean, at10 in (("tiny-a", 80.0, 30.0), ("tiny-b", 60.0, 55.0)):
        for k, meth in enumerate(("attention", "attention-mean", "smoothgrad", "random")):
            rows.append({"model": m, "method": meth, "ratio": 0.0, "accuracy": clean})
            rows.append({"model": m, "method": meth, "ratio": 20.0, "accuracy": at10 - 10 - (k if m == "tiny-a" else 0)})
            rows.append({"model": m, "method": meth, "ratio": 10.0, "accuracy": at10 - 2 * k})
    text = ch03.masking_reading(pd.DataFrame(rows), 50)
    assert text.startswith("At the smallest masking ratio (10 % of the patches black):")
    assert "- **tiny-a**: 80.0 % clean → 24.0 % with the random ordering, 26.0–30.0 % with the others." in text
    assert "- **tiny-b**: 60.0 % clean → 49.0 % with the random ordering" in text
    # Mean over ratios 10 and 20: tiny-a 25.0 (attention) ... 20.5 (random): 4.5 points = 2 of 50 images;
    # tiny-b 50.0 ... 47.0: 3.0 points.
    assert "differ by at most 4.5 points (tiny-a), i.e. about 2 of the 50 images" in text
    assert text.endswith("smallest spread: 3.0 points (tiny-b).")
