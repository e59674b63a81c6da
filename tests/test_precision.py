"""The precision mode (iavutils.core.precision): its error bound holds against a large-n reference,
the fixed-n mode is unchanged, the result does not depend on batching, a tighter tol costs more
samples, and bad values fail with a clear message."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

import iavutils as iu
from iavutils.analysis.iavs import compute_iavs
from iavutils.analysis.parameters import ParameterError, analysis_spec, check_parameter
from iavutils.core.noise import image_seed, pair_seed
from iavutils.core.precision import check_precision, jackknife_error
from iavutils.core.spec import PRECISION_RULE, AnalysisSpec
from iavutils.core.sweep import iav_dataset

N_IMAGES = 12
TOLS = (0.02, 0.01)


@pytest.fixture(scope="module")
def world() -> tuple[torch.nn.Module, torch.utils.data.TensorDataset]:
    # 16x16 images, a 4x4 patch grid, 3 layers of 4 heads: 12 heads, a few thousand cheap passes
    model = make_model("vit", img_size=16, patch_size=4, depth=3, num_heads=4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_IMAGES, 3, 16, 16, generator=g)
    y = torch.randint(0, 5, (N_IMAGES,), generator=g)
    return model, torch.utils.data.TensorDataset(x, y)


@pytest.fixture(scope="module")
def runs(world) -> dict:
    model, ds = world
    out = {tol: iav_dataset(model, ds, target="label", tol=tol, progress=False) for tol in TOLS}
    # the reference: plain Gaussian noise at n = 400 on the same images (its own seeds)
    out["reference"] = iav_dataset(model, ds, target="label", n_samples=400, seed=7, progress=False)
    return out


def test_error_bound_holds_against_a_large_n_reference(runs) -> None:
    ref = iu.global_iav(runs["reference"]["iav"])
    covered, heads = 0, 0
    for tol in TOLS:
        r = runs[tol]
        assert r["error"].shape == ref.shape and bool((r["error"] <= tol).all()), "stopped before the bound met tol"
        actual = (iu.global_iav(r["iav"]) - ref).abs()
        covered += int((actual <= tol).sum())
        heads += actual.numel()
        print(f"tol {tol}: n_used {int(r['n_used'])}, largest bound {float(r['error'].max()):.4f}, "
              f"largest actual {float(actual.max()):.4f}")
    print(f"coverage {covered}/{heads}")
    assert covered >= 0.95 * heads


def test_tighter_tol_needs_more_samples(runs) -> None:
    n = [int(runs[tol]["n_used"]) for tol in TOLS]
    assert n[0] < n[1] <= AnalysisSpec().max_samples
    assert all(k % 16 == 0 for k in n)  # whole antithetic pairs in each of the 8 groups


def test_batching_does_not_change_the_result(world, runs) -> None:
    model, ds = world
    tol = TOLS[0]
    split = iav_dataset(model, ds, target="label", tol=tol, images_per_call=5, progress=False)
    whole = runs[tol]
    assert int(split["n_used"]) == int(whole["n_used"])
    torch.testing.assert_close(split["iav"], whole["iav"], rtol=0, atol=1e-6)
    torch.testing.assert_close(split["error"], whole["error"], rtol=0, atol=1e-6)
    assert torch.equal(split["seeds"], whole["seeds"])
    # the chapters' path (compute_iavs with dataset indices) draws the same pairs
    x, y = ds.tensors
    spec = AnalysisSpec(tol=tol, device="cpu", progress=False)
    res = compute_iavs(model, x, y, spec, indices=torch.arange(N_IMAGES))
    assert int(res["n_used"]) == int(whole["n_used"])
    torch.testing.assert_close(res["iav"], whole["iav"], rtol=0, atol=1e-5)
    assert res["smoothgrad"].shape == (N_IMAGES, 16, 16)


def test_fixed_n_mode_is_unchanged(world) -> None:
    model, ds = world
    x, y = ds.tensors
    seeds = torch.tensor([image_seed(3, i) for i in range(N_IMAGES)])
    swept = iav_dataset(model, ds, target="label", n_samples=4, seed=3, images_per_call=N_IMAGES, progress=False)
    direct = iu.iav(model, x, y, 4, 0.15, seeds=seeds)
    assert torch.equal(swept["iav"], direct)
    assert "n_used" not in swept and "error" not in swept
    spec = AnalysisSpec(n_samples=4, seed=3, device="cpu", progress=False)
    assert "n_used" not in compute_iavs(model, x, y, spec, indices=torch.arange(N_IMAGES))
    # today's cache key, exactly
    assert AnalysisSpec().cache_key() == {"num_images": 64, "n_samples": 25, "noise_level": 0.15, "seed": 0,
                                          "target": "label"}
    assert AnalysisSpec(noise="antithetic").cache_key()["noise"] == "antithetic"


def test_cache_key_with_tol_names_what_changes_the_numbers() -> None:
    key = AnalysisSpec(tol=0.005, noise="antithetic").cache_key()
    assert key == {"num_images": 64, "noise_level": 0.15, "seed": 0, "target": "label", "tol": 0.005,
                   "max_samples": 400, "precision": PRECISION_RULE}
    assert AnalysisSpec(tol=0.005, n_samples=3).cache_key() == AnalysisSpec(tol=0.005).cache_key()
    assert AnalysisSpec(tol=0.005, max_samples=64).cache_key() != AnalysisSpec(tol=0.005).cache_key()


def test_cap_stops_with_a_warning(world) -> None:
    model, ds = world
    with pytest.warns(RuntimeWarning, match=r"stopped at max_samples=16 .* before reaching tol=0.0001"):
        r = iav_dataset(model, ds, target="label", tol=1e-4, max_samples=20, num_images=4, progress=False)
    assert int(r["n_used"]) == 16 and bool((r["error"] > 1e-4).any())


@pytest.mark.parametrize("tol", [0, -0.1, 1.0, 2, float("nan"), True, "0.01"])
def test_bad_tol_is_refused(world, tol) -> None:
    model, ds = world
    with pytest.raises(ValueError, match="tol accepts"):
        AnalysisSpec(tol=tol)
    with pytest.raises(ValueError, match="tol accepts a number strictly between 0 and 1"):
        iav_dataset(model, ds, tol=tol, progress=False)
    with pytest.raises(ParameterError, match=r"parameter tol = .* is not accepted"):
        check_parameter("tol", tol)


@pytest.mark.parametrize("cap", [0, 8, 15, 2.5, None, True])
def test_bad_max_samples_is_refused(cap) -> None:
    with pytest.raises(ValueError, match=r"max_samples accepts an int >= 16"):
        AnalysisSpec(tol=0.01, max_samples=cap)
    with pytest.raises(ValueError, match=r"max_samples accepts an int >= 16"):
        check_precision(0.01, cap)


def test_quasi_noise_with_tol_is_refused() -> None:
    with pytest.raises(ValueError, match="precision mode draws antithetic pairs"):
        AnalysisSpec(tol=0.01, noise="quasi")
    with pytest.raises(ParameterError, match="precision mode draws antithetic pairs"):
        analysis_spec(tol=0.01, noise="quasi")
    assert analysis_spec(tol=0.01, max_samples=64) == AnalysisSpec(tol=0.01, max_samples=64)


def test_jackknife_on_known_groups() -> None:
    # identical groups: no spread, no bias; the cosine of the sum is that of each group
    cls = torch.rand(3, 2, 2, 5)
    one = torch.rand(3, 1, 5)
    est = jackknife_error(one.expand(3, 8, 5).contiguous(), cls)
    assert torch.allclose(est["error"], torch.zeros(2, 2), atol=1e-6)
    assert torch.allclose(est["global_iav"], iu.global_iav(iu.ia_score(one[:, 0], cls)), atol=1e-6)


def test_pair_seeds_are_distinct_and_in_range() -> None:
    seeds = {pair_seed(image_seed(s, i), u) for s in range(3) for i in range(20) for u in range(50)}
    assert len(seeds) == 3 * 20 * 50 and all(0 <= v < 2**62 for v in seeds)
