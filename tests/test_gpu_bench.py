"""benchmarks/gpu_bench.py runs on the CPU the way CI can (no GPU there) and writes a full JSON.

One subprocess run of the real command line with the tiny preset (a few seconds of compute),
then the layout and the sanity of every value; bad arguments end with a clear message.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_bench.py"

SETTING_KEYS = {
    "autocast", "compile", "skipped", "reason", "img_per_s", "steady_s_median", "steady_s", "first_call_s",
    "compile_s", "achieved_flops_per_s", "fraction_of_bf16_peak", "fraction_of_matmul_peak", "peak_memory_bytes",
    "peak_memory_first_call_bytes", "chunk_plan", "deviation",
}
# Loose on purpose: on a loaded CPU the small GEMM can be slowed more than the model's passes, so
# the fraction may pass 1; a unit slip (GFLOP vs FLOP) would still be far outside. The bf16 fraction
# has no upper bound on a CPU: without bf16 matrix units its GEMM is far below the fp32 one.
MAX_FRACTION = 3.0


def _load_module():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    out_dir = tmp_path_factory.mktemp("gpu_bench")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--model", "tiny", "--images", "2",
         "--n", "3", "--rounds", "2", "--threads", "1", "--results-dir", str(out_dir)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    print(proc.stdout)  # the script's table, for a CI log read with -s
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = list(out_dir.glob("gpu_tiny_*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text()), files[0], proc.stdout


def test_cpu_run_writes_every_key(cpu_run: tuple[dict, Path, str]) -> None:
    report, path, stdout = cpu_run
    assert path.name.startswith("gpu_tiny_") and not list(path.parent.glob("*.tmp*"))
    for key in ("schema", "time_utc", "date", "device", "torch", "timm", "python", "platform", "threads",
                "model", "config", "flops", "gemm", "settings", "total_s"):
        assert key in report, key
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    assert report["model"]["img_size"] == [32, 32] and report["model"]["num_classes"] == 10
    cfg = report["config"]
    assert (cfg["images"], cfg["n_samples"], cfg["rounds"], cfg["profile"]) == (2, 3, 2, "quick")
    assert cfg["settings"] == ["fp32", "bf16", "bf16_compile"]
    fl = report["flops"]
    assert fl["forward"] > 0 and fl["backward_input"] > 0
    assert fl["per_image"] == 3 * (fl["forward"] + fl["backward_input"])
    gemm = report["gemm"]
    assert gemm["bf16_flops_per_s"] > 0 and gemm["fp32_flops_per_s"] > 0
    assert gemm["matmul_peak_flops_per_s"] == max(gemm["bf16_flops_per_s"], gemm["fp32_flops_per_s"])
    assert len(gemm["bf16_flops_per_s_rounds"]) == 2
    assert set(report["settings"]) == {"fp32", "bf16", "bf16_compile"}
    assert "wrote" in stdout


def test_cpu_run_rows_are_sane(cpu_run: tuple[dict, Path, str]) -> None:
    report, _, _ = cpu_run
    for name in ("fp32", "bf16"):
        row = report["settings"][name]
        assert set(row) == SETTING_KEYS, name
        assert not row["skipped"] and row["reason"] is None
        assert row["img_per_s"] > 0 and len(row["steady_s"]) == 2
        assert row["first_call_s"] > 0 and row["compile_s"] is None  # eager rows compile nothing
        assert 0 < row["fraction_of_matmul_peak"] <= MAX_FRACTION
        assert row["fraction_of_bf16_peak"] >= row["fraction_of_matmul_peak"]
        assert math.isclose(row["achieved_flops_per_s"], row["img_per_s"] * report["flops"]["per_image"])
        assert row["peak_memory_bytes"] is None  # CUDA only
        assert row["chunk_plan"]["sizes"] and sum(row["chunk_plan"]["sizes"]) == 2 * 3
        dev = row["deviation"]
        assert math.isfinite(dev["max_abs"]) and dev["max_abs"] >= 0 and dev["tolerance"] > 0
    assert report["settings"]["fp32"]["deviation"]["max_abs"] == 0.0  # the CPU is deterministic
    assert report["settings"]["fp32"]["deviation"]["within_tolerance"] is True
    assert report["settings"]["bf16"]["autocast"] == "bfloat16"


def test_cpu_run_skips_compile_with_reason(cpu_run: tuple[dict, Path, str]) -> None:
    row = cpu_run[0]["settings"]["bf16_compile"]
    assert set(row) == SETTING_KEYS
    assert row["skipped"] is True and "--cpu-compile" in row["reason"]
    assert row["compile"] is True and row["img_per_s"] is None and row["steady_s"] == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n", "0"], "--n: expected a positive integer, got 0"),
        (["--images", "two"], "--images: expected a positive integer, got 'two'"),
        (["--settings", "fp32,fp16"], "--settings: unknown 'fp16'"),
        (["--settings", "bf16"], "--settings must include fp32"),
        (["--device", "tpu"], "--device 'tpu'"),
        (["--device", "cpu", "--model", "vit-h99"], "--model 'vit-h99'"),
    ],
)
def test_bad_argument_is_a_clear_error(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    mod = _load_module()
    with pytest.raises(SystemExit) as exc:
        mod.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_without_cuda_says_what_to_do(capsys: pytest.CaptureFixture) -> None:
    mod = _load_module()
    if mod.torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit) as exc:
        mod.main(["--device", "cuda"])
    assert exc.value.code == 2
    assert "CUDA is not available here; use --device cpu --quick" in capsys.readouterr().err


def test_help_documents_every_option(capsys: pytest.CaptureFixture) -> None:
    mod = _load_module()
    with pytest.raises(SystemExit) as exc:
        mod.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--device", "--quick", "--model", "--images", "--n", "--rounds", "--settings",
                   "--cpu-compile", "--gemm-size", "--results-dir", "--out", "vit-b16", "tiny"):
        assert option in text, option
