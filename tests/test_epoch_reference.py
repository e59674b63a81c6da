"""The epoch reference of every "change over finetuning" (chapters 02, 04, 05), the AAV reference
left out of its own contrast, and Fig. 4b's layer-averaged distance: hand-made inputs, hand-computed values."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
import torch

from iavutils.analysis import dynamics, global_iav, receptive_field


# ----------------------------------------------------------------------------- the reference epoch


def test_reference_epoch_is_the_first_finetuned_one() -> None:
    assert dynamics.reference_epoch([0, 1, 2, 3, 4]) == 1
    assert dynamics.reference_epoch([4, 2, 0]) == 2  # a stride that skipped epoch 1: the first finetuned analysed
    assert dynamics.reference_epoch([3]) == 3
    with pytest.raises(ValueError, match="no finetuned epoch"):
        dynamics.reference_epoch([0])
    assert dynamics.stage(0) == dynamics.BEFORE_FINETUNING == "before finetuning"
    assert dynamics.stage(1) == "finetuned"


def _frame() -> pd.DataFrame:
    # Two heads per epoch; model a: epoch 0 very different (random head), then 1.0 -> 1.5.
    rows = []
    for m, per_epoch in {"a": {0: (9.0, 11.0), 1: (0.5, 1.5), 2: (1.0, 2.0), 3: (1.0, 2.0)},
                         "b": {1: (2.0, 2.0), 3: (1.0, 1.0)}}.items():
        for e, heads in per_epoch.items():
            rows += [{"model": m, "epoch": e, "head": h, "v": v} for h, v in enumerate(heads)]
    return pd.DataFrame(rows)


def test_change_starts_at_the_first_finetuned_epoch_and_keeps_epoch_0_labelled() -> None:
    t = dynamics.change_over_finetuning(_frame(), "v").set_index("model")
    # a: reference epoch 1 (mean 1.0), last epoch 3 (mean 1.5); epoch 0 (mean 10) never enters the change.
    assert t.loc["a", "first finetuned epoch"] == 1.0 and t.loc["a", "last epoch"] == 1.5
    assert t.loc["a", "change"] == pytest.approx(0.5)
    assert t.loc["a", "epochs"] == "1 → 3"
    assert t.loc["a", dynamics.BEFORE_COLUMN] == 10.0 and "before finetuning" in dynamics.BEFORE_COLUMN
    # b has no epoch 0: its labelled column is NaN, its change is 1.0 - 2.0.
    assert math.isnan(t.loc["b", dynamics.BEFORE_COLUMN]) and t.loc["b", "change"] == pytest.approx(-1.0)
    # The old reference (epoch 0) would have given 1.5 - 10 = -8.5 for a: not what is reported.
    assert t.loc["a", "change"] != pytest.approx(1.5 - 10.0)


def test_change_groups_by_several_columns() -> None:
    f = pd.concat([_frame().assign(score="IAV"), _frame().assign(score="AAV (mask)", v=lambda d: 2 * d["v"])])
    t = dynamics.change_over_finetuning(f, "v", ("score", "model")).set_index(["score", "model"])
    assert t.loc[("AAV (mask)", "a"), "change"] == pytest.approx(1.0)
    assert t.loc[("IAV", "b"), "change"] == pytest.approx(-1.0)


def test_dynamics_summary_reads_the_reference_epoch_and_labels_epoch_0() -> None:
    d = pd.DataFrame({"model": ["a"] * 4, "epoch": [0, 1, 2, 3], "phi_distance": [0.9, 0.3, 0.1, 0.0],
                      "attention_distance": [0.8, 0.2, 0.1, 0.0], "attention_distance_per_head": [1.0, 0.5, 0.2, 0.0]})
    s = dynamics.dynamics_summary(d).iloc[0]
    assert s["epochs"] == "1 → 3"
    assert s["SmoothGrad: first finetuned → last"] == 0.3
    assert s["attention (layer-averaged map): first finetuned → last"] == 0.2
    assert s["SmoothGrad: before finetuning (epoch 0) → last"] == 0.9
    text = dynamics.dynamics_reading(dynamics.dynamics_summary(d))
    assert "0.300" in text and "0.200" in text and "0.900" not in text  # the prose uses the reference epoch


def test_entropy_change_and_its_sentence() -> None:
    e = _frame().rename(columns={"v": "entropy"}).replace({"model": {"a": "tiny-dino", "b": "tiny-sup"}})
    t = receptive_field.entropy_change(e)
    assert list(t["pretraining"]) == ["self-supervised", "supervised"]
    text = receptive_field.entropy_change_reading(t)
    assert "rose for tiny-dino (+0.500)" in text and "fell for tiny-sup (-1.000)" in text
    assert "64 patches" in receptive_field.entropy_ceiling_sentence("tiny-mim")
    assert "4.16" in receptive_field.entropy_ceiling_sentence("tiny-mim")


# ----------------------------------------------------------------------------- Fig. 4b: layer-averaged map


def test_layer_averaged_distance_hand_computed() -> None:
    # [N=1, L=2, H=1, P=2]: layer 1 looks at patch 0, layer 2 at patch 1; b swaps them.
    a = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    b = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]]]])
    # Layer averages are both (0.5, 0.5): identical maps, distance 0 ...
    assert dynamics.layer_averaged_distance(a, b).item() == pytest.approx(0.0)
    # ... while every head moved from one patch to the other: per-head distance √2.
    assert dynamics.per_head_distance(a, b).item() == pytest.approx(math.sqrt(2))


def test_layer_averaged_distance_second_case() -> None:
    # [N=1, L=1, H=2, P=2]: a's heads (1,0) and (1,0) -> mean (1,0); b's heads (1,0) and (0,1) -> mean (.5,.5).
    a = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    b = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    # unit maps (1,0) and (1/√2, 1/√2): distance² = (1 − 1/√2)² + 1/2 = 2 − √2.
    assert dynamics.layer_averaged_distance(a, b).item() == pytest.approx(math.sqrt(2 - math.sqrt(2)))
    # per head: 0 and √2, mean √2/2.
    assert dynamics.per_head_distance(a, b).item() == pytest.approx(math.sqrt(2) / 2)
    with pytest.raises(ValueError):
        dynamics.layer_averaged_distance(a[0], b[0])


# ----------------------------------------------------------------------------- the AAV reference apart


def _scores() -> tuple[pd.DataFrame, pd.DataFrame]:
    # Later layers = layer 2 of 2. The reference tiny-dino's own AAV is high (it is its IAV).
    vals = {("IAV", "tiny-mim"): (0.5, 0.6), ("IAV", "tiny-dino"): (0.7, 0.8),
            ("IAV", "tiny-sup"): (0.4, 0.3), ("IAV", "tiny-sup21k"): (0.45, 0.35),
            ("AAV (tiny-dino)", "tiny-mim"): (0.2, 0.3), ("AAV (tiny-dino)", "tiny-dino"): (0.8, 0.9),
            ("AAV (tiny-dino)", "tiny-sup"): (0.4, 0.5), ("AAV (tiny-dino)", "tiny-sup21k"): (0.4, 0.6)}
    rows, uni = [], []
    for (score, m), (first, last) in vals.items():
        for e, v in ((0, 0.1), (1, first), (2, last)):
            rows += [{"model": m, "epoch": e, "score": score, "layer": l, "head": 0, "rank": 0,
                      "value": v if l == 2 else 0.0} for l in (1, 2)]
            uni.append({"model": m, "epoch": e, "score": score, "baseline": 0.5})
    return pd.DataFrame(rows), pd.DataFrame(uni)


def test_aav_reference_is_left_out_of_its_contrast_and_labelled() -> None:
    scores, uniform = _scores()
    table = global_iav.later_layers_table(scores, uniform)
    assert list(table.index[:4]) == [("IAV", m) for m in ("tiny-mim", "tiny-dino", "tiny-sup", "tiny-sup21k")]
    assert table.loc[("AAV (tiny-dino)", "tiny-dino"), "role"] == global_iav.SELF_REFERENCE
    assert table.loc[("IAV", "tiny-dino"), "role"] == "" and table.loc[("AAV (tiny-dino)", "tiny-mim"), "role"] == ""
    assert table.loc[("IAV", "tiny-mim"), "change"] == pytest.approx(0.1)  # 0.6 - 0.5, not 0.6 - 0.1 (epoch 0)
    assert table.loc[("IAV", "tiny-mim"), "above uniform"] == pytest.approx(0.1)
    assert table.loc[("IAV", "tiny-mim"), dynamics.BEFORE_COLUMN] == pytest.approx(0.1)
    text = global_iav.contrast_sentences(table)
    aav_last = [t for t in text if t.startswith("*AAV (tiny-dino), later layers, last epoch*")][0]
    # Without the reference: self-supervised mean 0.3 (tiny-mim alone) vs supervised 0.55: not higher.
    assert "self-supervised mean 0.300" in aav_last and "supervised mean 0.550" in aav_last
    assert "tiny-dino 0.900" not in aav_last and "does not hold" in aav_last
    # With it, the self-supervised mean would have been 0.6 and the claim would "hold on average".
    assert "self-supervised mean 0.600" not in " ".join(text)
    assert any("tiny-dino is the AAV reference and is left out" in t and "0.900" in t for t in text)
    iav_last = [t for t in text if t.startswith("*IAV, later layers, last epoch*")][0]
    assert "tiny-dino 0.800" in iav_last  # its IAV stays in the IAV contrast
    assert global_iav.is_self_reference("AAV (tiny-dino)", "tiny-dino")
    assert not global_iav.is_self_reference("AAV (mask)", "tiny-dino")


def test_uniform_reading_uses_the_table() -> None:
    scores, uniform = _scores()
    t = global_iav.uniform_table(uniform)
    assert list(t.columns) == [dynamics.BEFORE_COLUMN, "epoch 1", "epoch 2"] and len(t) == 8
    text = global_iav.uniform_reading(global_iav.later_layers_table(scores, uniform))
    assert "tiny-mim 0.600 (+0.100, above uniform)" in text and "tiny-sup 0.300 (-0.200, below uniform)" in text


def test_figures_show_epoch_0_apart() -> None:
    from iavutils.publish import figures_dynamics

    d = pd.DataFrame({"model": ["tiny-dino"] * 3, "epoch": [0, 1, 2], "stage": ["before finetuning", "finetuned", "finetuned"],
                      "phi_distance": [0.9, 0.3, 0.0], "attention_distance": [0.8, 0.2, 0.0],
                      "attention_distance_per_head": [1.0, 0.5, 0.0]})
    fig = figures_dynamics.training_dynamics(d)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "epoch 0 (before finetuning)" in labels and len(fig.axes) == 3
    # The finetuned curve starts at epoch 1; epoch 0 is a separate marker.
    xs = [tuple(line.get_xdata()) for line in fig.axes[0].lines]
    assert (1, 2) in xs and (0,) in xs
    scores, uniform = _scores()
    fig = figures_dynamics.head_profiles_over_finetuning(scores, row="score", baselines=uniform,
                                                        self_reference=global_iav.SELF_REFERENCE)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[0] == "epoch 0 (before finetuning)" and "epoch 1" in legend and "epoch 0" not in legend
    texts = [" ".join(t.get_text().split()) for ax in fig.axes for t in ax.texts]
    assert texts == [global_iav.SELF_REFERENCE]  # only the reference's own AAV panel
    matplotlib.pyplot.close("all")


def test_learning_rate_sentence_reads_the_run(tmp_path) -> None:
    import json

    from iavutils.analysis.study import Study
    from iavutils.core.spec import AnalysisSpec

    for preset, lr in (("tiny-dino", 5e-4), ("tiny-sup", 5e-4)):
        run = tmp_path / "embedded" / preset
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"preset": preset, "lr": lr, "epochs": 4}))
    text = dynamics.learning_rate_sentence(Study(["tiny-dino", "tiny-sup"], "embedded", tmp_path, AnalysisSpec()))
    assert "0.0005" in text and "50×" in text and "4 epoch" in text


def test_uniform_reading_without_a_baseline() -> None:
    scores, uniform = _scores()
    table = global_iav.later_layers_table(scores, uniform[uniform["model"] != "tiny-sup"])
    assert "tiny-sup 0.300 (no uniform baseline)" in global_iav.uniform_reading(table)
