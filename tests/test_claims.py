"""The claims table (iavutils.analysis.claims) on hand-made inputs: verdicts, bootstrap, scratch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iavutils.analysis import claims

SSL, SUP = "self-supervised", "supervised"


def _claim(side: str = ">", kind: str = "contrast", null: float = 0.0, margin: float = 0.0) -> claims.Claim:
    return claims.Claim("test", "x is higher for self-supervised models", "mean of x",
                        lambda d: float(np.mean(d["x"])), kind=kind, side=side, null=null, margin=margin)


def _data(means: dict[str, float], sd: float = 0.1, n: int = 64, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {p: {"x": m + sd * rng.standard_normal(n)} for p, m in means.items()}


TYPES = {"a": "ssl-a", "b": "sup-b"}
GROUPS = {"ssl-a": SSL, "sup-b": SUP}


@pytest.mark.parametrize(("lo", "hi", "side", "null", "margin", "expected"), [
    (0.1, 0.3, ">", 0, 0, "reproduced"), (-0.3, -0.1, ">", 0, 0, "contradicted"), (-0.1, 0.1, ">", 0, 0, "inconclusive"),
    (-0.3, -0.1, "<", 0, 0, "reproduced"), (0.1, 0.3, "<", 0, 0, "contradicted"), (-0.1, 0.1, "<", 0, 0, "inconclusive"),
    (0.6, 0.7, ">", 0.5, 0, "reproduced"), (0.4, 0.45, ">", 0.5, 0, "contradicted"),
    (-0.01, 0.02, "≈", 0, 0.03, "reproduced"), (0.04, 0.1, "≈", 0, 0.03, "contradicted"),
    (0.0, 0.05, "≈", 0, 0.03, "inconclusive"), (math.nan, math.nan, ">", 0, 0, "inconclusive"),
])
def test_verdict_rule(lo, hi, side, null, margin, expected) -> None:
    assert claims.verdict(lo, hi, side, null, margin) == expected


def test_verdict_rejects_unknown_side() -> None:
    with pytest.raises(ValueError):
        claims.verdict(0, 1, "!=")


@pytest.mark.parametrize(("means", "side", "expected"), [
    ({"a": 1.0, "b": 0.0}, ">", "reproduced"),
    ({"a": 1.0, "b": 0.0}, "<", "contradicted"),
    ({"a": 0.0, "b": 0.0}, ">", "inconclusive"),
])
def test_claims_table_each_verdict(means, side, expected) -> None:
    sd = 1.0 if expected == "inconclusive" else 0.1
    table = claims.claims_table(_data(means, sd=sd), TYPES, GROUPS, [_claim(side)], n_boot=300)
    row = table.iloc[0]
    assert row["verdict"] == expected
    assert row["low"] <= row["estimate"] <= row["high"]
    if expected != "inconclusive":
        assert row["estimate"] == pytest.approx(means["a"] - means["b"], abs=0.05)
    assert row["seeds per type"].startswith("1 ")


def test_equivalence_claim() -> None:
    table = claims.claims_table(_data({"a": 0.5, "b": 0.5}, sd=0.01, n=200), TYPES, GROUPS,
                                [_claim("≈", margin=0.03)], n_boot=300)
    assert table.iloc[0]["verdict"] == "reproduced"
    table = claims.claims_table(_data({"a": 0.6, "b": 0.5}, sd=0.01, n=200), TYPES, GROUPS,
                                [_claim("≈", margin=0.03)], n_boot=300)
    assert table.iloc[0]["verdict"] == "contradicted"


def test_bootstrap_over_images_is_the_percentile_interval_of_the_mean() -> None:
    data = _data({"a": 1.0}, sd=1.0, n=400)
    est, lo, hi = claims.bootstrap(data, {"a": "t"}, {"t": SSL}, lambda d: float(np.mean(d["x"])), "level",
                                   n_boot=2000)
    se = np.std(data["a"]["x"], ddof=1) / math.sqrt(400)
    assert est == pytest.approx(np.mean(data["a"]["x"]))
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_bootstrap_over_seeds_widens_the_interval() -> None:
    """Two seeds of one self-supervised type, far apart: the seed spread must show in the interval."""
    q = _claim(">")
    one = claims.claims_table(_data({"a": 1.0, "b": 0.9}, sd=0.01), TYPES, GROUPS, [q], n_boot=400)
    data = _data({"a1": 0.0, "a2": 2.0, "b": 0.9}, sd=0.01)
    types = {"a1": "ssl-a", "a2": "ssl-a", "b": "sup-b"}
    two = claims.claims_table(data, types, GROUPS, [q], n_boot=400)
    assert one.iloc[0]["verdict"] == "reproduced"
    row = two.iloc[0]
    assert row["estimate"] == pytest.approx(0.1, abs=0.01)  # the type's mean over its seeds
    # Resampling the two seeds gives type means 0, 1 or 2: the interval spans them.
    assert row["low"] < -0.8 and row["high"] > 1.0
    assert row["verdict"] == "inconclusive"
    assert row["seeds per type"] == "2, 1"


def test_missing_and_present_scratch_control() -> None:
    data = _data({"a": 1.0, "b": 0.0})
    absent = claims.claims_table(data, TYPES, GROUPS, [_claim()], scratch=None, n_boot=100)
    assert absent.iloc[0]["scratch control"] == claims.NOT_IN_RUN == "not in this run"
    scratch = _data({"s": 0.25}, sd=0.01)["s"]
    present = claims.claims_table(data, TYPES, GROUPS, [_claim()], scratch=scratch, n_boot=100)
    text = present.iloc[0]["scratch control"]
    assert text.startswith("+0.25") and "[" in text
    # The scratch control never enters the contrast.
    assert present.iloc[0]["estimate"] == absent.iloc[0]["estimate"]


def test_a_group_without_models_is_not_defined() -> None:
    table = claims.claims_table(_data({"a": 1.0}), {"a": "ssl-a"}, GROUPS, [_claim()], n_boot=50)
    assert table.iloc[0]["ours [95 % CI]"] == "not defined in this run"
    assert table.iloc[0]["verdict"] == "inconclusive"


def _model_arrays(rng: np.random.Generator, n: int = 40, L: int = 6, H: int = 4) -> dict[str, np.ndarray]:
    return {"iav": rng.uniform(0, 1, (n, L, H)), "aav": rng.uniform(0, 1, (n, L, H)),
            "entropy": rng.uniform(0, 4, (n, L, H)), "labels": rng.integers(0, 3, n),
            "correct": rng.integers(0, 2, n).astype(float), "sg_change": rng.uniform(0, 1, n),
            "auc_patch_attention": rng.uniform(0, 90, n), "auc_patch_smoothgrad": rng.uniform(0, 90, n),
            "auc_pos_gmar_l1": rng.uniform(0, 90, n), "auc_pos_rollout": rng.uniform(0, 90, n)}


def test_every_paper_claim_has_a_row_and_its_quantity_runs() -> None:
    rng = np.random.default_rng(0)
    data = {p: _model_arrays(rng) for p in ("m", "d", "s", "s21")}
    del data["d"]["aav"]  # the AAV reference is not scored against its own SmoothGrad
    types = {p: p for p in data}
    groups = {"m": SSL, "d": SSL, "s": SUP, "s21": SUP}
    table = claims.claims_table(data, types, groups, n_boot=20)
    sources = list(table["claim"])
    for fig in ("3a", "3b–d", "4", "5", "6a", "6b", "7a", "7b", "8", "9"):
        assert f"IAV Fig. {fig}" in sources
    assert {"IAV: property of the head", "IAV: trend separates types", "GMAR beats rollout"} <= set(sources)
    computed = table[table["claim"] != "IAV Fig. 3b–d"]  # no chapter computes shifted accuracy per image
    assert np.isfinite(computed["estimate"]).all()
    assert set(table["verdict"]) <= {"reproduced", "contradicted", "inconclusive"}
    assert "Of 13 claims" in claims.summary(table)


def test_aav_reference_is_excluded_from_the_contrast() -> None:
    rng = np.random.default_rng(1)
    d = _model_arrays(rng)
    without = {k: v for k, v in d.items() if k != "aav"}
    q = next(c.q for c in claims.CLAIMS if c.source == "IAV Fig. 7b")
    assert math.isnan(q(without)) and math.isfinite(q(d))


def test_head_share_is_high_for_distinct_heads_and_near_zero_without_a_head_effect() -> None:
    rng = np.random.default_rng(0)
    q = next(c.q for c in claims.CLAIMS if c.source == "IAV: property of the head")
    heads = rng.uniform(0, 1, 24)
    distinct = heads + 0.1 * rng.standard_normal((400, 24))
    assert q({"iav": distinct.reshape(400, 6, 4)}) > 0.85
    noise = 0.5 + 0.1 * rng.standard_normal((400, 24))
    assert abs(q({"iav": noise.reshape(400, 6, 4)})) < 0.05
