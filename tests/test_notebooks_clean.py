"""Notebooks in git are clean sources: no outputs, no execution counts, a papermill
``parameters`` cell declaring the common parameters (ARCHITECTURE.md), and the plain
``python3`` kernel (papermill starts the kernel the notebook names). Every notebook is written
by its source in tools/notebook_sources/, has at most 60 lines of code, and uses only iavutils
names that exist."""

from __future__ import annotations

import json
from pathlib import Path

import papermill
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
COMMON_PARAMETERS = {"model", "run_dir", "dataset", "num_images", "n_samples", "noise_level", "device", "seed"}

pytestmark = pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_no_outputs_and_no_execution_counts(notebook: Path) -> None:
    nb = _load(notebook)
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{notebook.name}: cells {dirty} carry outputs or execution counts (strip them)"
    assert "widgets" not in nb.get("metadata", {}), f"{notebook.name}: saved widget state in metadata"
    assert "papermill" not in nb.get("metadata", {}), f"{notebook.name}: an executed copy was committed"


def test_parameters_cell_declares_the_common_parameters(notebook: Path) -> None:
    nb = _load(notebook)
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{notebook.name}: needs exactly one cell tagged 'parameters'"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and code[0] is tagged[0], f"{notebook.name}: the parameters cell must be the first code cell"
    # What papermill itself can parse: a line it cannot read is a parameter `-p` cannot set.
    declared = set(papermill.inspect_notebook(str(notebook)))
    missing = COMMON_PARAMETERS - declared
    assert not missing, f"{notebook.name}: parameters cell lacks (or papermill cannot parse) {sorted(missing)}"


def test_uses_the_plain_python3_kernel(notebook: Path) -> None:
    spec = _load(notebook).get("metadata", {}).get("kernelspec", {})
    assert spec.get("name") == "python3", f"{notebook.name}: kernelspec {spec.get('name')!r}, expected 'python3'"


def test_no_control_characters(notebook: Path) -> None:
    """A LaTeX command in a non-raw Python string turns into a control character (``\\a`` of
    ``\\approx`` becomes BEL), which MathJax shows as "Math input error"."""
    for i, cell in enumerate(_load(notebook)["cells"]):
        text = "".join(cell["source"])
        bad = sorted({hex(ord(ch)) for ch in text if ord(ch) < 32 and ch != "\n"})
        assert not bad, f"{notebook.name} cell {i}: control characters {bad}"


def _generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebooks", REPO / "tools" / "make_notebooks.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def test_generated_notebooks_match_their_source(notebook: Path) -> None:
    """Every notebook comes from tools/notebook_sources/: the committed file is exactly what it writes."""
    import nbformat

    gen = _generator()
    assert notebook.stem in gen.BUILDERS, f"{notebook.name} has no source in tools/notebook_sources/"
    expected = nbformat.writes(gen.build(notebook.stem)) + "\n"
    assert notebook.read_text() == expected, (
        f"{notebook.name} differs from its source in tools/notebook_sources/: edit the source and run "
        f"`python tools/make_notebooks.py`, never the notebook"
    )


def test_at_most_60_lines_of_code(notebook: Path) -> None:
    """Notebooks are parameters, calls, figures and prose: the computations live in iavutils."""
    lines = sum(len("".join(c["source"]).split("\n")) for c in _load(notebook)["cells"] if c["cell_type"] == "code")
    assert lines <= 60, f"{notebook.name}: {lines} lines of code (at most 60: move the computation into iavutils)"


def test_every_iavutils_name_a_notebook_uses_exists(notebook: Path) -> None:
    """The notebooks cannot run here (no book run), but every iavutils module and name they use must exist."""
    import ast
    import importlib

    modules: dict[str, object] = {}
    for cell in _load(notebook)["cells"]:
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse("".join(cell["source"]))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("iavutils"):
                mod = importlib.import_module(node.module)
                for alias in node.names:
                    try:  # a submodule (from iavutils.analysis import explanations) or a name in the module
                        modules[alias.asname or alias.name] = importlib.import_module(f"{node.module}.{alias.name}")
                    except ModuleNotFoundError:
                        assert hasattr(mod, alias.name), f"{notebook.name}: {node.module} has no {alias.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                mod = modules[node.value.id]
                assert hasattr(mod, node.attr), f"{notebook.name}: {mod.__name__} has no {node.attr}"
