"""Using a chapter the way the README says: missing finetuning (iavutils.analysis.runs.finetuned_models)
and which models the figures show.

Every analysis chapter calls ``finetuned_models`` in its setup cell: a model without a complete
finetuning is finetuned there (announced, with the recipe and an estimated time) or the chapter
stops at once with the exact commands to run, depending on ``finetune``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_runs import write_fake_run

from iavutils.analysis import checkpoints
from iavutils.analysis import runs as ex

REPO = Path(__file__).resolve().parents[1]
# The bar for `papermill notebooks/05_global_iav.ipynb out.ipynb -p model beit` offline.
FAIL_FAST_S = float(os.environ.get("IAV_TEST_FAIL_FAST_S", "15"))


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@pytest.fixture
def fake_finetune(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replaces the finetuning by writing a fake run; records which presets were finetuned."""
    calls: list[str] = []

    def fake(preset: str, dataset: str = "embedded", run_dir: object = "", **kw: object) -> None:
        calls.append(preset)
        write_fake_run(Path(run_dir), preset)

    monkeypatch.setattr(checkpoints, "ensure_finetuned", fake)
    return calls


def test_papermill_05_beit_offline_fails_fast_with_the_commands(tmp_path: Path) -> None:
    """The design card's own command, from another working directory, with an empty run directory."""
    env = {**os.environ, "IAV_RUN_DIR": str(tmp_path / "run"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out.ipynb"
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "papermill", str(REPO / "notebooks" / "05_global_iav.ipynb"),
                           str(out), "-p", "model", "beit"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    seconds = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "FinetuningRequired: 05_global_iav needs finetuned checkpoints" in log
    assert "beit on cifar10: not finetuned; recipe 'paper': 30 epochs" in log
    assert f"papermill {REPO / 'notebooks' / '00_finetune.ipynb'} 00_finetune.out.ipynb -p model beit" in log
    assert f"papermill {REPO / 'notebooks' / '05_global_iav.ipynb'} 05_global_iav.out.ipynb -p model beit " \
           "-p finetune True" in log
    assert "IndexError" not in log and "KeyError" not in log
    # The work itself (papermill, the kernel and its setup cell: about 5 s of CPU) fits the bar;
    # the wall-clock bar stretches only when other jobs keep this machine's cores busy.
    assert cpu < FAIL_FAST_S, f"used {cpu:.1f} s of CPU (bar: {FAIL_FAST_S:g} s)"
    load = max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    assert seconds < FAIL_FAST_S * load, f"took {seconds:.1f} s (bar: {FAIL_FAST_S:g} s x load {load:.1f})"
    assert not (tmp_path / "run" / "cifar10" / "beit").exists()  # nothing was started


def test_auto_stops_for_hub_presets_and_names_the_make_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    # The repository's runs/ (read only here): `make book` finetunes into it, so make is offered.
    root = ex.repo_root()
    if root is None or (root / "runs" / "cifar10" / "deit").exists():
        pytest.skip("needs the checkout's runs/ without a deit finetuning")
    monkeypatch.delenv("IAV_RUN_DIR", raising=False)
    monkeypatch.chdir(root)
    with pytest.raises(ex.FinetuningRequired) as info:
        ex.finetuned_models("deit", notebook="03_input_disturbance")
    text = str(info.value)
    assert "PRESETS=real make book" in text
    assert "papermill notebooks/00_finetune.ipynb 00_finetune.out.ipynb -p model deit   #" in text
    assert "papermill notebooks/03_input_disturbance.ipynb 03_input_disturbance.out.ipynb -p model deit " \
           "-p finetune True" in text


def test_false_stops_even_for_tiny_presets(tmp_path: Path, fake_finetune: list[str]) -> None:
    t0 = time.perf_counter()
    with pytest.raises(ex.FinetuningRequired) as info:
        ex.finetuned_models("tiny-dino,tiny-sup", "auto", tmp_path, finetune=False, notebook="06_head_roles")
    assert time.perf_counter() - t0 < 5
    text = str(info.value)
    assert f"06_head_roles needs finetuned checkpoints that the run directory {tmp_path} does not hold" in text
    assert "tiny-dino on embedded: not finetuned; recipe 'tiny': 4 epochs, batch 64" in text
    assert "estimated" in text and "Nothing was started (finetune=False)" in text
    assert f"-p model tiny-dino,tiny-sup -p run_dir {tmp_path}" in text
    assert fake_finetune == []


def test_auto_finetunes_tiny_presets_and_announces_it(tmp_path: Path, fake_finetune: list[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    write_fake_run(tmp_path, "tiny-sup")
    models, dataset, run = ex.finetuned_models("tiny-dino,tiny-sup", "auto", tmp_path, notebook="05_global_iav")
    assert (models, dataset, run) == (["tiny-dino", "tiny-sup"], "embedded", tmp_path)
    assert fake_finetune == ["tiny-dino"]  # tiny-sup was there
    out = capsys.readouterr().out
    assert f"tiny-dino has no finetuning on embedded in {tmp_path}: finetuning it now, recipe 'tiny': 4 epochs" in out
    assert "estimated" in out and "an interrupted run resumes" in out
    assert "tiny-dino: finetuned in" in out


def test_true_finetunes_hub_presets_too(tmp_path: Path, fake_finetune: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert ex.finetuned_models("deit", "embedded", tmp_path, finetune=True, device="cpu")[0] == ["deit"]
    assert fake_finetune == ["deit"]
    out = capsys.readouterr().out
    assert "deit has no finetuning on embedded" in out
    assert "recipe 'paper': 30 epochs, batch 768, lr 1e-05, 5000 training images; estimated 10.4 h on a CPU" in out


def test_interrupted_run_is_named_as_such(tmp_path: Path, fake_finetune: list[str]) -> None:
    write_fake_run(tmp_path, "tiny-mim")
    run = tmp_path / "embedded" / "tiny-mim"
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "epochs": 4, "batch_size": 64, "lr": 5e-4}))
    (run / "metrics.json").write_text(json.dumps([{"epoch": 0, "val_acc": 0.1}]))
    assert ex.finetuning_status("tiny-mim", "embedded", tmp_path) == ("incomplete", 0, 4)
    with pytest.raises(ex.FinetuningRequired, match=r"tiny-mim on embedded: interrupted at epoch 0 of 4; "
                                                    r"recipe as stored in the run: epochs 1-4 of an interrupted run"):
        ex.finetuned_models("tiny-mim", "auto", tmp_path, finetune=False)


def test_bad_finetune_value() -> None:
    with pytest.raises(ValueError, match="finetune must be True, False or 'auto', got 'yes'"):
        ex.finetuned_models("tiny-dino", finetune="yes")


def test_figures_show_the_requested_models_only(tmp_path: Path) -> None:
    for p in ("tiny-mim", "tiny-dino", "tiny-sup"):
        write_fake_run(tmp_path, p)
    assert ex.finetuned_models("tiny-dino", "auto", tmp_path)[0] == ["tiny-dino"]
    assert ex.select_models("tiny-sup,tiny-dino", "auto", tmp_path)[0] == ["tiny-sup", "tiny-dino"]
    # Every model of the run only on request.
    assert ex.finetuned_models("all", "auto", tmp_path)[0] == ["tiny-mim", "tiny-dino", "tiny-sup"]
    assert ex.select_models("tiny-sup,all", "auto", tmp_path)[0] == ["tiny-sup", "tiny-mim", "tiny-dino"]


def test_all_with_an_empty_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"'all' means every model finetuned in the run directory, and {tmp_path} "
                                         "holds no finetuned model on embedded or cifar10"):
        ex.select_models("all", "auto", tmp_path)


def test_the_setup_cells_first_step_imports_no_torch(tmp_path: Path) -> None:
    """What a setup cell runs before its heavy imports must not import torch or timm (fail fast)."""
    code = f"""
import sys
from iavutils.analysis.parameters import check_parameters
from iavutils.analysis.parameters import analysis_spec
from iavutils.analysis.runs import FinetuningRequired, finetuned_models
check_parameters(dict(model="beit", run_dir="", dataset="auto", num_images=64, n_samples=25, noise_level=0.15,
                      device="auto", seed=0, finetune="auto", target="label", epoch_stride=2, example=0,
                      aav_reference="auto", recipe=""))
spec = analysis_spec(dict(num_images=64, n_samples=25, noise_level=0.15, device="auto", seed=0, target="label"))
try:
    finetuned_models("beit", run_dir={str(tmp_path)!r}, notebook="05_global_iav")
except FinetuningRequired:
    pass
heavy = sorted(m for m in ("torch", "timm", "pandas", "matplotlib") if m in sys.modules)
print("heavy:", heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "heavy: []" in out.stdout, out.stdout + out.stderr


def test_literal_tables_agree_with_the_library() -> None:
    from iavutils.world import data, models, training
    from iavutils.analysis import run_dirs, runs

    assert runs.PRESET_NAMES == tuple(models.PRESETS)
    assert runs.TINY_PRESETS == tuple(models.TINY_PRESETS) and runs.REAL_PRESETS == tuple(models.REAL_PRESETS)
    assert runs.RECIPE_SUMMARY == {k: {"epochs": r.epochs, "batch_size": r.batch_size, "lr": r.lr}
                                   for k, r in training.RECIPES.items()}
    assert runs.TRAIN_IMAGES["embedded"] == data.DATASETS["embedded"].splits["train"]
    # runs re-exports run_dirs' parsing: one implementation, the same answers
    assert runs.parse_models is run_dirs.parse_models
    for spec in ("tiny", "real", "tiny-dino, deit,tiny-dino", "embedded"):
        assert runs.parse_models(spec) == run_dirs.parse_models(spec)
    for bad in ("tiny-nope", " , "):
        with pytest.raises(ValueError) as a:
            runs.parse_models(bad)
        with pytest.raises(ValueError) as b:
            run_dirs.parse_models(bad)
        assert str(a.value) == str(b.value)
