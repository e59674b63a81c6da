"""The one validator of notebook parameters (iavutils.analysis.parameters): each rejected value names the
parameter, the value and what is accepted; every parameter a notebook declares is in its table;
every notebook checks its parameters first; every notebook's defaults pass."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from iavutils.publish import runner
from iavutils.analysis.parameters import (
    PARAMETERS,
    SPEC_PARAMETERS,
    ParameterError,
    analysis_spec,
    check_parameter,
    check_parameters,
)
from iavutils.core.spec import AnalysisSpec

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _defaults(notebook: Path) -> dict:
    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    out = {}
    for node in ast.parse("".join(cell["source"])).body:
        if isinstance(node, ast.Assign):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


# The cases of the issue, and the text a user now sees for each.
CASES = [
    ("num_images", 0, {}, "parameter num_images = 0 is not accepted (below 1): expected an integer >= 1"),
    ("num_images", -5, {}, "parameter num_images = -5 is not accepted (below 1): expected an integer >= 1"),
    ("num_images", "abc", {}, "parameter num_images = 'abc' is not accepted (not an integer): expected an integer >= 1"),
    ("n_samples", 2.5, {}, "parameter n_samples = 2.5 is not accepted (not an integer): expected an integer >= 1"),
    ("noise_level", math.nan, {}, "parameter noise_level = nan is not accepted (not finite): expected a finite number >= 0"),
    ("noise_level", -0.1, {}, "parameter noise_level = -0.1 is not accepted (below 0): expected a finite number >= 0"),
    ("example", 99, {"num_images": 64},
     "parameter example = 99 is not accepted (not below num_images = 64): expected an integer from 0 to num_images - 1"),
    ("example", -1, {"num_images": 64}, "parameter example = -1 is not accepted (negative)"),
    ("model", "tiny-dinoo", {}, "parameter model = 'tiny-dinoo' is not accepted (unknown preset 'tiny-dinoo'): "
                                "expected a preset (tiny-mim, tiny-dino"),
    ("dataset", "imagenet", {}, "parameter dataset = 'imagenet' is not accepted (not one of the choices): "
                                "expected 'auto', 'embedded' or 'cifar10'"),
    ("target", "true", {}, "expected 'label' or 'predicted'"),
    ("finetune", "yes", {}, "parameter finetune = 'yes' is not accepted (not True, False or 'auto'): "
                            "expected True, False or 'auto'"),
    ("seed", 1.5, {}, "parameter seed = 1.5 is not accepted (not an integer): expected an integer >= 0"),
    ("epoch_stride", 0, {}, "parameter epoch_stride = 0 is not accepted (below 1)"),
    ("perplexity", 0.0, {}, "parameter perplexity = 0.0 is not accepted (not above 0): expected a finite number > 0"),
    ("num_eval", -1, {}, "parameter num_eval = -1 is not accepted (below 0): expected an integer >= 0 (0: the whole split)"),
    ("epochs", 0, {}, "parameter epochs = 0 is not accepted (below 1): expected None (the recipe's) or an integer >= 1"),
    ("recipe", "fast", {}, "parameter recipe = 'fast' is not accepted (not a recipe)"),
    ("image_index", "0,x", {}, "parameter image_index = '0,x' is not accepted"),
    ("ablation_mode", "one", {}, "expected 'zero' or 'mean'"),
    ("unit", "model", {}, "expected 'checkpoint' or 'run'"),
    ("aav_reference", "dinov2", {}, "parameter aav_reference = 'dinov2' is not accepted (not a preset)"),
    ("num_images", True, {}, "parameter num_images = True is not accepted (not an integer)"),
    ("perturbation_steps", 0, {}, "parameter perturbation_steps = 0 is not accepted (below 1): expected an integer >= 1"),
    ("ablation_subsets", 2.0, {}, "parameter ablation_subsets = 2.0 is not accepted (not an integer)"),
    ("tol", 0, {}, "parameter tol = 0 is not accepted (not above 0): expected None (fixed n = n_samples) or a number "
                   "above 0 and below 1"),
    ("tol", 1.5, {}, "parameter tol = 1.5 is not accepted (not below 1 (IA-Scores lie in [0, 1]))"),
    ("tol", "0.01", {}, "parameter tol = '0.01' is not accepted (not a number)"),
    ("max_samples", 8, {}, "parameter max_samples = 8 is not accepted (below 16): expected an integer >= 16"),
]


@pytest.mark.parametrize("name,value,others,message", CASES, ids=[f"{c[0]}={c[1]!r}" for c in CASES])
def test_rejected_value_names_parameter_and_accepted_values(name, value, others, message) -> None:
    with pytest.raises(ParameterError) as info:
        check_parameter(name, value, others)
    text = str(info.value)
    assert message in text
    assert f"set it with papermill -p {name} <value>" in text


def test_device_cuda_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParameterError, match=r"device = 'cuda' is not accepted \(CUDA is not available"):
        check_parameter("device", "cuda")
    with pytest.raises(ParameterError, match=r"device = 'gpu' is not accepted \(not a torch device\)"):
        check_parameter("device", "gpu")
    check_parameter("device", "cpu")


def test_accepted_values_pass() -> None:
    for name, value, others in [("num_images", 1, {}), ("num_images", 10**6, {}), ("noise_level", 0.0, {}),
                                ("example", 63, {"num_images": 64}), ("model", "tiny", {}),
                                ("model", "tiny-dino,deit", {}), ("model", "all", {}), ("finetune", True, {}),
                                ("finetune", "auto", {}), ("epochs", None, {}), ("recipe", "", {}),
                                ("image_index", "0, 7,12", {}), ("image_index", 3, {}), ("aav_reference", "", {}),
                                ("run_dir", "", {}), ("tol", None, {}), ("tol", 0.005, {}), ("max_samples", 64, {})]:
        check_parameter(name, value, others)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ParameterError) as info:
        check_parameters({"num_images": 0, "n_samples": 2.5, "seed": 0, "unrelated": object()})
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("parameter num_images = 0") and lines[1].startswith("parameter n_samples = 2.5")


def test_unknown_name_is_refused() -> None:
    with pytest.raises(ParameterError, match="'foo' is not known to iavutils.analysis.parameters.PARAMETERS"):
        check_parameters({"foo": 1}, names=["foo"])


def test_run_dir_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ParameterError, match="run_dir = .* is not accepted \\(an existing file, not a directory\\)"):
        check_parameter("run_dir", str(f))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_declared_parameter_is_known(notebook: Path) -> None:
    declared, unreadable = runner.parameter_names(notebook)
    unknown = sorted(declared - set(PARAMETERS))
    assert not unknown, f"{notebook.name} declares {unknown}: add them to iavutils.analysis.parameters.PARAMETERS"
    # A line papermill's parser cannot read (e.g. "a = b" inside a comment) is a parameter that
    # papermill --help-notebook does not list and the book runner warns about.
    assert not unreadable, f"{notebook.name}: papermill cannot parse the lines of {sorted(unreadable)}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_setup_cell_checks_parameters_first_and_defaults_pass(notebook: Path) -> None:
    nb = json.loads(notebook.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    setup = "".join(code[1]["source"])
    head = setup.split("check_parameters(globals())")[0]
    assert "check_parameters(globals())" in setup and "torch" not in head and "experiments" not in head, (
        f"{notebook.name}: the cell after the parameters must start by checking them, before the heavy imports")
    check_parameters(_defaults(notebook))


@pytest.mark.parametrize("notebook", [p for p in NOTEBOOKS if not p.stem.startswith("00")], ids=lambda p: p.stem)
def test_every_analysis_chapter_has_finetune_and_goes_through_finetuned_models(notebook: Path) -> None:
    assert _defaults(notebook).get("finetune") == "auto"
    nb = json.loads(notebook.read_text())
    setup = "".join([c for c in nb["cells"] if c["cell_type"] == "code"][1]["source"])
    assert "models, dataset, run = finetuned_models(model, dataset, run_dir, finetune=finetune" in setup
    assert setup.index("finetuned_models(model") < setup.index("import matplotlib")  # before the heavy imports
    assert f'notebook="{notebook.stem}"' in setup
    assert "models_in_run" not in "".join("".join(c["source"]) for c in nb["cells"])


def test_analysis_spec_from_a_notebooks_parameters() -> None:
    import iavutils.analysis.parameters as parameters
    import iavutils.core.spec as spec_module

    assert parameters.NOISE_MODES == spec_module.NOISE_MODES  # the literal copy agrees
    assert set(SPEC_PARAMETERS) <= set(PARAMETERS)
    assert set(SPEC_PARAMETERS) < set(AnalysisSpec.__dataclass_fields__)
    # A notebook's namespace: its analysis parameters are taken, the rest is ignored.
    namespace = {"model": "tiny", "num_images": 8, "n_samples": 3, "seed": 2, "progress": "a module", "example": 0}
    assert analysis_spec(namespace) == AnalysisSpec(num_images=8, n_samples=3, seed=2)
    assert analysis_spec(namespace, device="cpu", progress=False) == AnalysisSpec(
        num_images=8, n_samples=3, seed=2, device="cpu", progress=False)
    assert analysis_spec() == AnalysisSpec()  # the defaults live in AnalysisSpec only
    # The same errors as check_parameters.
    for name, value, _, message in CASES:
        if name in SPEC_PARAMETERS:
            with pytest.raises(ParameterError) as info:
                analysis_spec({name: value})
            assert message in str(info.value)
    with pytest.raises(ParameterError, match=r"parameter noise = 'uniform' is not accepted \(not one of the choices\)"):
        analysis_spec(noise="uniform")
    with pytest.raises(TypeError, match="unknown parameter"):
        analysis_spec(num_image=8)
