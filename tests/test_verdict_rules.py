"""The verdict rules of chapters 10, 08 and 11 on hand-made inputs: each case follows from a test
or an interval, and the text states the rule (issue 11, protocol error 3)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from iavutils.analysis import explanation_report as er
from iavutils.analysis import head_ablation as ha
from iavutils.analysis import pretraining_types as pt
from iavutils.analysis.separability import SeparabilityResult

NAN = float("nan")

# --------------------------------------------------------------------------- chapter 10: the rule


@pytest.mark.parametrize(("p_upper", "p_lower", "low", "high", "case"), [
    (0.01, 0.99, 0.2, 0.8, "Yes"),
    (0.99, 0.01, -0.8, -0.2, "No"),
    (0.01, 0.99, -0.1, 0.8, "Cannot tell"),   # significant test, but the interval contains 0
    (0.20, 0.80, 0.1, 0.8, "Cannot tell"),    # interval above 0, but the test is not significant
    (0.99, 0.01, -0.8, 0.1, "Cannot tell"),   # the "No" direction needs both too
    (0.05, 0.95, 0.01, 0.5, "Yes"),           # p = alpha counts
    (NAN, NAN, NAN, NAN, "Cannot tell"),      # an empty half or constant drops
])
def test_verdict_case(p_upper, p_lower, low, high, case):
    assert ha.verdict_case(p_upper, p_lower, low, high) == case


def test_verdict_case_alpha():
    assert ha.verdict_case(0.03, 0.97, 0.1, 0.5, alpha=0.01) == "Cannot tell"


def test_rank_correlation_interval():
    x = np.arange(20.0)
    r = ha.rank_correlation(x, x + 0.1 * np.sin(x), n_boot=200, seed=1)
    assert r["rho"] == pytest.approx(1.0) and 0.9 < r["low"] <= r["high"] <= 1.0
    again = ha.rank_correlation(x, x + 0.1 * np.sin(x), n_boot=200, seed=1)
    assert (again["low"], again["high"]) == (r["low"], r["high"])  # seeded
    assert "low" not in ha.rank_correlation(x, x)  # no interval unless asked
    assert math.isnan(ha.rank_correlation(x, np.ones(20), n_boot=10)["low"])


def test_group_comparison_one_sided():
    c = ha.head_group_comparison(np.array([1.0, 2.0, 3.0, 10.0, 11.0, 12.0]), np.array([0, 0, 0, 1, 1, 1]))
    assert c["p_high_greater"] == pytest.approx(0.05) and c["p_low_greater"] == pytest.approx(1.0)
    assert c["p_value"] == pytest.approx(0.1)


def _heads(lower: list[float], upper: list[float], models: tuple[str, ...] = ("m1", "m2")) -> pd.DataFrame:
    """Per model: the lower half (IA 0.1, 0.2, ...) has drops ``lower``, the upper half ``upper``."""
    rows = []
    for m in models:
        n = len(lower)
        for i, (d, hi) in enumerate([(d, False) for d in lower] + [(d, True) for d in upper]):
            rows.append({"model": m, "layer": 1, "head": i, "ia": 0.1 * (i + 1), "high_ia": hi, "high_rel": hi,
                         "gmar_weight": 1 / (2 * n), "accuracy_drop": 10 * d, "logit_drop": d})
    heads = pd.DataFrame(rows)
    heads["model"] = pd.Categorical(heads["model"], list(models))
    return heads


def _verdict(heads: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    models = list(heads["model"].cat.categories)
    corr = ha.correlation_table(heads, models, n_boot=500)
    groups = pd.DataFrame([{"model": m, "layer": 1, "group": g, "logit drop": 0.0, "accuracy drop (pp)": 0.0}
                           for m in models for g in ("low-IA heads", "same-size control (low)")])
    clean = pd.DataFrame({"model": models, "Low-IA heads": [4] * len(models)})
    return corr, ha.ablation_verdict(corr, groups, clean, models)


def test_reported_situation_is_cannot_tell():
    """Issue 11: drops 0.004 vs 0.009 logits, p = 0.43, pooled rho of the opposite sign -> not "Partly"/"Yes"."""
    # The upper half's mean is pulled up by one head; most upper-half heads cost less than the lower half's first.
    corr, text = _verdict(_heads([0.010, 0.004, 0.001, 0.001], [0.029, 0.003, 0.002, 0.002]))
    pooled = corr.loc["all models (pooled)"]
    assert pooled["mean drop lower half"] == pytest.approx(0.004) and pooled["mean drop upper half"] == pytest.approx(0.009)
    assert pooled["Mann–Whitney p (halves)"] == pytest.approx(0.43, abs=0.01) and pooled["p (upper > lower)"] > 0.05
    assert pooled["ρ(logit drop, IA-Score)"] < 0  # the opposite sign
    assert pooled["ρ 95% low"] < 0 < pooled["ρ 95% high"] or pooled["ρ 95% high"] < 0
    body = text.split("\n\n", 1)[1]
    assert "**Cannot tell** (all heads pooled: 0.004 vs 0.009 logits" in body
    assert "**Yes**" not in body and "Partly" not in text
    # The old ratio rule would have said "Partly" here: 0.004 < 0.5 * 0.009.
    assert pooled["mean drop lower half"] < 0.5 * pooled["mean drop upper half"]


def test_ablation_verdict_states_the_rule_and_decides_per_model():
    heads = pd.concat([_heads([0.1, 0.2, 0.3, 0.4], [1.0, 1.1, 1.2, 1.3], ("m1",)),
                       _heads([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], ("m2",))])
    heads["model"] = pd.Categorical(heads["model"], ["m1", "m2"])
    corr, text = _verdict(heads)
    assert text.startswith(ha.VERDICT_RULE.format(alpha=ha.ALPHA))
    assert "- **m1**: **Yes**" in text and "- **m2**: **Cannot tell**" in text  # m2: every drop equal


def test_ablation_verdict_no():
    corr, text = _verdict(_heads([1.0, 1.1, 1.2, 1.3], [0.1, 0.2, 0.3, 0.4]))
    assert corr.loc["all models (pooled)", "ρ 95% high"] < 0
    assert "**No** (all heads pooled: 1.150 vs 0.250 logits" in text


# --------------------------------------------------------------------------- chapters 08 and 11: rule on the page


def _comparisons(verdicts: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{"model": "m", "method": "gmar_l1", "reference": "rollout", "mode": "positive",
                          "diff": 0.0, "low": -1.0, "high": 1.0, "n_images": 8, "verdict": v} for v in verdicts])


@pytest.mark.parametrize(("verdicts", "ending"), [
    (["better", "better", "no difference"], "GMAR beats rollout.**"),
    (["worse", "worse", "better"], "it is worse.**"),
    (["better", "worse", "no difference", "no difference"], "cannot say that GMAR beats rollout**"),
    (["better", "better", "worse", "worse"], "cannot say that GMAR beats rollout**"),  # exactly half is not more
])
def test_gmar_verdict_states_its_rule(verdicts, ending):
    table = pd.DataFrame({"model": ["m"], "method": ["rollout"], "miou": [NAN]})
    text = er.gmar_verdict(_comparisons(verdicts), table, 1)
    assert er.GMAR_RULE in text and text.index(er.GMAR_RULE) < text.index("**Verdict")
    assert ending in text
    if "cannot say" in ending:
        assert f"{verdicts.count('no difference')} of the {len(verdicts)} intervals contain 0." in text


def _sep(p: float, min_p: float) -> SeparabilityResult:
    return SeparabilityResult(accuracy=0.75, per_group={"a": 1.0, "b": 0.5}, predictions=np.zeros(4),
                              null=np.array([0.5]), p_value=p, min_p_value=min_p, n_groups=8, n_rows=8, exact=True)


@pytest.mark.parametrize(("p", "min_p", "case"), [
    (0.03, 0.03, "**Yes** (p = 0.030)"),
    (0.05, 0.03, "**Yes** (p = 0.050)"),          # p = alpha counts
    (0.40, 1 / 3, "**Cannot tell** (p = 0.400)"),  # no labelling could reach alpha
    (0.20, 0.03, "**No** (p = 0.200)"),            # alpha was reachable and not reached
])
def test_separability_verdict_states_its_rule(p, min_p, case):
    text = pt.separability_verdict({"global-IAV": _sep(p, min_p)})
    paragraphs = text.split("\n\n")
    assert paragraphs[1] == pt.SEPARABILITY_RULE.format(alpha=pt.ALPHA)
    assert paragraphs[2].startswith(case)
