"""benchmarks/bench_iav.py --quick runs on the CPU and writes every key of its JSON with sane values.

One subprocess run of the real command line in its smoke setting (tiny-dino, 4 images, n=4, one
round; time to precision at tol 0.05 against an n=64 reference): this checks the plumbing, not
the speed, so nothing here asserts a timing or a speed-up. The argument handling is checked
in-process, without running anything.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_iav.py"

REQUIRED = (
    "model", "threads", "per_pass.ours.img_per_s", "per_pass.baseline.img_per_s",
    "per_pass.baseline_equal_threads.img_per_s", "fraction_of_flop_limit", "fraction_of_roofline",
    "time_to_precision.tol", "time_to_precision.ours_s", "time_to_precision.baseline_s",
    "time_to_precision.baseline_n", "time_to_precision.ours_n", "time_to_precision.coverage",
)
# Loose on purpose: on a loaded CPU the GEMM or the copy can be slowed more than the model's
# passes, so a fraction may pass 1; a unit slip (GFLOP vs FLOP, MiB vs bytes) is far outside.
MAX_FRACTION = 3.0


def _get(report: dict[str, Any], dotted: str) -> Any:
    node: Any = report
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, dotted
        node = node[part]
    return node


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _load_module():
    spec = importlib.util.spec_from_file_location("bench_iav", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    out_dir = tmp_path_factory.mktemp("bench_iav")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--threads", "1", "--results-dir", str(out_dir)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    print(proc.stdout)  # the script's tables, for a CI log read with -s
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = list(out_dir.iterdir())
    assert len(files) == 1, files  # one JSON, no temporary file left behind
    return json.loads(files[0].read_text()), files[0], proc.stdout


def test_quick_run_writes_every_key(quick_run: tuple[dict, Path, str]) -> None:
    report, path, stdout = quick_run
    assert re.fullmatch(r"tiny-dino_\d{8}-\d{6}\.json", path.name), path.name
    for key in REQUIRED:
        _get(report, key)
    assert report["model"] == "tiny-dino" and report["threads"] == 1 and report["quick"] is True
    assert report["equality"]["ok"] is True  # ours and captum agree on the same noise
    assert "wrote" in stdout and "equal threads" in stdout and "roofline" in stdout


def test_per_pass_rows_are_sane(quick_run: tuple[dict, Path, str]) -> None:
    report = quick_run[0]
    pp = report["per_pass"]
    for row in ("ours", "baseline", "baseline_equal_threads"):
        assert _positive(pp[row]["img_per_s"]), row
    assert pp["ours"]["threads"] == pp["baseline_equal_threads"]["threads"] == 1
    assert pp["baseline"]["threads"] == 1
    # one thread everywhere: the equal-threads row at 1 is the ours/baseline pair itself
    assert list(pp["equal_threads"]) == ["1"] and report["threads_equal"] == [1]
    eq = pp["equal_threads"]["1"]
    assert eq["ours_img_per_s"] == pp["ours"]["img_per_s"]
    assert eq["baseline_img_per_s"] == pp["baseline_equal_threads"]["img_per_s"]
    assert math.isclose(eq["speedup"], eq["ours_img_per_s"] / eq["baseline_img_per_s"])  # one round: the ratio itself


def test_roofline_is_consistent(quick_run: tuple[dict, Path, str]) -> None:
    report = quick_run[0]
    rf, pp = report["roofline"], report["per_pass"]
    for key in ("flops_per_image", "bytes_per_image", "matmul_flops_per_s", "bandwidth_bytes_per_s",
                "arithmetic_intensity", "flop_limit_img_per_s", "bandwidth_limit_img_per_s"):
        assert _positive(rf[key]), key
    assert rf["flops_per_image"] == report["flops"]["per_image_limit"]
    by = rf["bytes_model"]
    assert by["per_sample_activations"] > 0 and by["chunk"] == report["chunk_plan"]["chunk_size"]
    assert math.isclose(rf["bytes_per_image"], report["n"] * by["per_sample_at_chunk"])
    # the roofline is the lower of the two limits, so ours is a larger share of it
    assert math.isclose(pp["roofline_limit"]["img_per_s"], min(rf["flop_limit_img_per_s"], rf["bandwidth_limit_img_per_s"]))
    assert pp["roofline_limit"]["img_per_s"] <= pp["flop_limit"]["img_per_s"]
    assert rf["bound"] == pp["roofline_limit"]["bound"] in ("memory", "compute")
    assert 0 < report["fraction_of_flop_limit"] <= report["fraction_of_roofline"] <= MAX_FRACTION


def test_time_to_precision_is_sane(quick_run: tuple[dict, Path, str]) -> None:
    tp = quick_run[0]["time_to_precision"]
    assert tp["tol"] == 0.05 and tp["reference_n"] == 64 and tp["grid"] == [8, 16, 32] and tp["images"] == 4
    assert tp["threads"] == 1 and tp["data"] == "random"
    # the precision mode grows n by whole antithetic pairs in each of its 8 groups, up to the cap
    assert tp["ours_n"] % 16 == 0 and 16 <= tp["ours_n"] <= tp["ours_max_samples"] == 64
    assert tp["baseline_n"] in tp["grid"]
    assert _positive(tp["ours_s"]) and _positive(tp["baseline_s"]) and _positive(tp["reference_s"])
    assert math.isclose(tp["speedup"], tp["baseline_s"] / tp["ours_s"])  # one round: the ratio itself
    assert 0.0 <= tp["coverage"] <= 1.0 and 0.0 <= tp["baseline_coverage"] <= 1.0
    assert set(tp["plain_coverage_by_n"]) == {"8", "16", "32"}
    if tp["baseline_n_reached"]:
        assert tp["baseline_coverage"] >= tp["need"] == 0.95
    assert tp["ours_estimated_error_max"] >= 0 and tp["ours_actual_error_max"] >= 0


@pytest.mark.parametrize(
    ("argv", "tol"),
    [([], 0.005), (["--quick"], 0.05), (["--model", "vit-b16"], None), (["--model", "vit-b16", "--tol", "0.005"], 0.005),
     (["--tol", "off"], None)],
)
def test_tol_defaults(argv: list[str], tol: float | None) -> None:
    args = _load_module()._args(argv)
    assert args.tol == tol
    if "--quick" in argv:
        assert (args.ref_n, args.grid, args.max_samples, args.ttp_images) == (64, [8, 16, 32], 64, 4)
    elif not argv:
        assert (args.ref_n, args.max_samples, args.ttp_images, args.ttp_rounds) == (400, 400, 32, 3)
        assert args.grid[0] <= 16 and args.grid[-1] == 400


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tol", "fine"], "--tol: expected a number, 'off' or 'auto'"),
        (["--tol", "2"], "tol=2.0 is not valid"),
        (["--grid", "8,x"], "--grid: expected a comma list of integers"),
        (["--grid", "800", "--ref-n", "400"], "--grid: no n in 1..--ref-n"),
        (["--equal-threads", "one"], "--equal-threads: expected a comma list of integers"),
        (["--model", "vit-b16", "--ttp-data", "embedded"], "tiny presets only"),
        (["--ttp-threads", "many"], "--ttp-threads: expected a positive integer or auto"),
    ],
)
def test_bad_argument_is_a_clear_error(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        _load_module()._args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_help_says_where_vit_b16_runs(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        _load_module()._args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--tol", "--quick", "--ref-n", "--grid", "--equal-threads", "--bandwidth-mib", "--ttp-data"):
        assert option in text, option
    assert "vit-b16" in text and "GPU or a long quiet run" in text
