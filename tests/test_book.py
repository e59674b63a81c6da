"""The main job end to end: every notebook under papermill, the book build, offline pages.

The slow tests share one ``python -m iavutils.publish.book run --small`` + ``build`` in a temporary
directory (tests/book_fixtures.py); the fast ones check the CLI's pieces on their own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from book_fixtures import NOTEBOOKS, REPO, BuiltBook, built_book, tail  # noqa: F401 (fixture)

from iavutils.publish import book, notebook_files, runner


def _outputs_with_errors(nb: dict) -> list[str]:
    found = []
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
    return found


# ----------------------------------------------------------------------------- slow: the run


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_without_errors(built_book: BuiltBook, notebook: Path) -> None:
    out = built_book.executed(notebook.name)
    assert out.exists(), f"{notebook.stem} was not executed:\n{tail(built_book.run_log)}"
    nb = json.loads(out.read_text())
    errors = _outputs_with_errors(nb)
    assert not errors, f"{notebook.stem} raised: {errors}"
    pm = nb["metadata"].get("papermill", {})
    assert not pm.get("exception"), f"{notebook.stem}: papermill recorded an exception"
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert all(c.get("execution_count") is not None for c in code), f"{notebook.stem} stopped early"
    # --small parameters reached the notebook (only the ones it declares).
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected, f"{notebook.stem}: papermill injected no parameters"
    assert str(built_book.run_dir) in "".join(injected[0]["source"])


@pytest.mark.slow
def test_run_reports_wall_times(built_book: BuiltBook) -> None:
    assert built_book.run_rc == 0, tail(built_book.run_log)
    timings = json.loads((built_book.book_dir / "generated" / "timings.json").read_text())
    assert [t["name"] for t in timings["notebooks"]] == [p.stem for p in NOTEBOOKS]
    assert all(t["ok"] for t in timings["notebooks"])
    assert "notebook wall times:" in built_book.run_log


@pytest.mark.slow
def test_no_progress_bar_in_the_pages_and_heartbeats_in_the_log(built_book: BuiltBook) -> None:
    """Progress goes to the terminal running the book (heartbeat lines), never into the pages."""
    for notebook in NOTEBOOKS:
        nb = json.loads(built_book.executed(notebook.name).read_text())
        for cell in nb["cells"]:
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                text = "".join(data.get("text/plain", "")) + "".join(out.get("text", ""))
                # tqdm's widget (and its text fallback) reads "... | 3/8 [00:02<00:03, 1.50it/s]".
                assert not ("application/vnd.jupyter.widget-view+json" in data and ("it/s]" in text
                            or "s/it]" in text)), f"{notebook.stem}: a progress widget in the page"
                assert "it/s]" not in text and "s/it]" not in text, f"{notebook.stem}: progress text in the page"
    assert "running 0:" in built_book.run_log  # the runner's heartbeat lines (every 25 s)


# ----------------------------------------------------------------------------- slow: the build


@pytest.mark.slow
def test_book_builds_strict_and_every_toc_page_was_executed(built_book: BuiltBook) -> None:
    assert built_book.build_rc == 0, tail(built_book.build_log, 80)
    assert book.check_executed(built_book.book_dir) == []
    for page in book.toc_pages(built_book.book_dir):
        assert (built_book.html_dir / f"{page}.html").exists(), f"{page} has no built page"


@pytest.mark.slow
def test_every_code_cell_is_collapsed_in_the_pages(built_book: BuiltBook) -> None:
    """Code (the parameters and papermill's injected cell included) folds behind a toggle."""
    for notebook in NOTEBOOKS:
        nb = json.loads(built_book.executed(notebook.name).read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all("hide-input" in c["metadata"].get("tags", []) for c in code), notebook.stem
        html = (built_book.html_dir / "generated" / f"{notebook.stem}.html").read_text()
        # myst-nb gives each code cell's container the class tag_<tag> of each of its tags.
        cells = re.findall(r'<div class="(cell(?: [^"]*)?) docutils container"', html)
        unfolded = [c for c in cells if "tag_hide-input" not in c.split()]
        assert cells and not unfolded, f"{notebook.stem}: {len(unfolded)} of {len(cells)} code cells not folded"
    assert "Math input error" not in "".join(p.read_text() for p in built_book.html_dir.rglob("*.html"))


@pytest.mark.slow
def test_built_pages_load_nothing_remote(built_book: BuiltBook) -> None:
    assert built_book.html_dir.is_dir(), tail(built_book.build_log)
    assert book.external_assets(built_book.html_dir) == {}
    explorer = (built_book.html_dir / "generated" / "09_head_explorer.html").read_text()
    # The widget manager and require.js are the site's own copies.
    assert "_static/npm/html-manager/embed-amd.js" in explorer
    assert "_static/npm/require.js" in explorer
    assert (built_book.html_dir / "_static" / "npm" / "mathjax" / "tex-mml-chtml.js").exists()


@pytest.mark.slow
def test_explorer_page_shows_the_static_overview(built_book: BuiltBook) -> None:
    nb = json.loads(built_book.executed("09_head_explorer.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "summary_figure(" in "".join(c["source"]))
    assert any("image/png" in out.get("data", {}) for out in cell["outputs"]), "no overview image"


@pytest.mark.slow
def test_explorer_page_is_reasonably_small(built_book: BuiltBook) -> None:
    page = built_book.html_dir / "generated" / "09_head_explorer.html"
    assert page.stat().st_size < 6_000_000, f"{page.stat().st_size / 1e6:.1f} MB"


# ----------------------------------------------------------------------------- fast: the pieces


def test_collapse_code_tags_every_code_cell_once(tmp_path: Path) -> None:
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "x"},
                    {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "a = 1"},
                    {"cell_type": "code", "metadata": {}, "source": "print(a)"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(nb))
    notebook_files.collapse_code(path)
    notebook_files.collapse_code(path)  # idempotent
    cells = json.loads(path.read_text())["cells"]
    assert "tags" not in cells[0]["metadata"]
    assert cells[1]["metadata"]["tags"] == ["parameters", "hide-input"]
    assert cells[2]["metadata"]["tags"] == ["hide-input"]


def test_preset_groups_match_models() -> None:
    from iavutils.world import models

    assert runner.PRESET_GROUPS["tiny"] == tuple(models.TINY_PRESETS)
    assert runner.PRESET_GROUPS["real"] == tuple(models.REAL_PRESETS) == ("beit", "dino", "deit", "in21k")


def test_expand_presets() -> None:
    assert runner.expand_presets("real") == ["beit", "dino", "deit", "in21k"]
    assert runner.expand_presets("tiny-dino, deit,tiny-dino") == ["tiny-dino", "deit"]
    assert runner.expand_presets("tiny")[0] == "tiny-mim"
    with pytest.raises(ValueError):
        runner.expand_presets(" , ")


def test_default_parameters_pick_dataset_and_absolute_run_dir(tmp_path: Path) -> None:
    p = runner.default_parameters(["tiny-dino"], tmp_path / "r", small=True)
    assert p["dataset"] == "embedded" and p["model"] == "tiny-dino"
    assert Path(p["run_dir"]).is_absolute()
    assert p["num_images"] == runner.SMALL_PARAMETERS["num_images"]
    assert runner.default_parameters(["beit", "dino"], tmp_path)["dataset"] == "cifar10"


def test_only_selects_by_prefix(tmp_path: Path) -> None:
    for name in ("00_a", "01_b", "10_c"):
        (tmp_path / f"{name}.ipynb").write_text("{}")
    assert [p.stem for p in runner.list_notebooks(["01", "00_a.ipynb"], tmp_path)] == ["00_a", "01_b"]
    with pytest.raises(SystemExit):
        runner.list_notebooks(["0"], tmp_path)  # ambiguous


def test_jupyter_book_2_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.0.1")
    with pytest.raises(SystemExit, match="needs 1.x"):
        book.check_jupyter_book()


def test_missing_or_failed_notebook_is_reported(tmp_path: Path) -> None:
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nchapters:\n- file: generated/a\n- file: generated/b\n"
        "- file: generated/c\n")
    (tmp_path / "intro.md").write_text("# Intro\n")
    gen = tmp_path / "generated"
    gen.mkdir()
    ok = {"cells": [{"cell_type": "code", "source": "1", "execution_count": 1, "outputs": [],
                     "metadata": {}}], "metadata": {"papermill": {"exception": None}}}
    failed = {"cells": [{"cell_type": "code", "source": "1/0", "execution_count": 1, "metadata": {},
                         "outputs": [{"output_type": "error", "ename": "ZeroDivisionError",
                                      "evalue": "division by zero", "traceback": []}]}],
              "metadata": {"papermill": {"exception": True}}}
    (gen / "a.ipynb").write_text(json.dumps(ok))
    (gen / "b.ipynb").write_text(json.dumps(failed))
    problems = book.check_executed(tmp_path)
    assert len(problems) == 2
    assert "generated/b" in problems[0] and "ZeroDivisionError" in problems[0]
    assert "generated/c" in problems[1] and "no executed notebook" in problems[1]


def test_external_asset_scan(tmp_path: Path) -> None:
    (tmp_path / "ok.html").write_text(
        '<link rel="stylesheet" href="_static/a.css"><link rel="next" href="https://x.org/">'
        '<script src="_static/npm/require.js"></script><a href="https://example.org">x</a>')
    (tmp_path / "bad.html").write_text(
        '<script src="https://cdn.jsdelivr.net/npm/x.js"></script><link rel="stylesheet" href="//fonts/x.css">')
    (tmp_path / "ok.css").write_text("a { background: url(img/x.png) } b { src: url('data:font/woff2;x') }")
    (tmp_path / "bad.css").write_text("@import 'https://fonts.googleapis.com/css?f=x';\n"
                                      "@font-face { src: url(\"//cdn.example/f.woff2\") }")
    assert book.external_assets(tmp_path) == {
        "bad.html": ["<script> https://cdn.jsdelivr.net/npm/x.js", "<link> //fonts/x.css"],
        "bad.css": ["url(https://fonts.googleapis.com/css?f=x)", "url(//cdn.example/f.woff2)"]}


def test_toc_and_notebooks_agree() -> None:
    """Every notebook is a chapter of the book and every notebook chapter has a notebook."""
    pages = book.toc_pages(REPO / "book")
    chapters = {p.split("/", 1)[1] for p in pages if p.startswith("generated/")}
    assert chapters == {p.stem for p in NOTEBOOKS}


def test_vendored_assets_are_pinned() -> None:
    pkg = json.loads((REPO / "tools" / "book-assets" / "package.json").read_text())
    lock = json.loads((REPO / "tools" / "book-assets" / "package-lock.json").read_text())
    for name, version in pkg["dependencies"].items():
        assert version[0].isdigit(), f"{name} must be pinned exactly, got {version}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    # ipywidgets 8 widget state needs the 1.x HTML manager.
    assert pkg["dependencies"]["@jupyter-widgets/html-manager"].startswith("1.0.")
    assert pkg["dependencies"]["mathjax"].startswith("3.")


# ----------------------------------------------------------------------------- progress of a run


def _notebook(cells: list[str]) -> dict:
    code = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
             "source": src} for i, src in enumerate(cells)]
    code[0]["metadata"]["tags"] = ["parameters"]
    return {"cells": code, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                       "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def test_run_prints_heartbeats_and_keeps_progress_out_of_the_pages(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sleeping cell gets heartbeat lines; the library's bars reach the terminal, not the page."""
    nb = tmp_path / "nbs" / "01_sleepy.ipynb"
    nb.parent.mkdir()
    nb.write_text(json.dumps(_notebook([
        "seconds = 1.0  # how long each step sleeps",
        "import time\nfrom iavutils.core.progress import progress_bar, tqdm, write\n"
        "for _ in progress_bar(range(3), desc='fake work', leave=False):\n    time.sleep(seconds)\n"
        "write('fake log line')\nfor _ in tqdm(range(2), desc='second bar'):\n    time.sleep(seconds)\n"
        "print('cell output')",
        "time.sleep(1.5)  # a long silent cell",
    ])))
    results = runner.run_notebooks([nb], {"seconds": 0.8}, tmp_path / "book", progress=False, heartbeat_s=0.5)
    assert results[0].ok, results[0].error
    err = capsys.readouterr().err
    beats = [ln for ln in err.splitlines() if "01_sleepy running" in ln]
    assert len(beats) >= 4, err
    # (papermill injects a cell with the parameters: the notebook runs 4 code cells)
    assert any("cell 3/4: for _ in progress_bar(range(3), desc='fake work'" in ln
               for ln in beats), err  # the cell's first statement that is not an import
    assert any("cell 4/4: time.sleep(1.5)" in ln for ln in beats), err
    assert not any("second bar" in ln for ln in beats if "cell 4/4" in ln), err  # a finished bar is not shown
    assert any("fake work" in ln for ln in beats), err  # the bar's state in a heartbeat
    assert "01_sleepy | fake log line" in err and "01_sleepy | second bar: 100%|| 2/2" in err
    executed = json.loads((tmp_path / "book" / "generated" / nb.name).read_text())
    outputs = json.dumps([c.get("outputs", []) for c in executed["cells"]])
    assert "application/vnd.jupyter.widget-view+json" not in outputs
    assert "fake work" not in outputs and "fake log line" not in outputs and "second bar" not in outputs
    assert "cell output" in outputs
    assert "IAV_PROGRESS_FILE" not in __import__("os").environ  # restored


def test_progress_helper_outside_the_book(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from iavutils.core import progress

    monkeypatch.delenv("IAV_PROGRESS_FILE", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress.progress_bar(range(3), desc="x").disable
    monkeypatch.delenv("TQDM_DISABLE")
    assert not progress.progress_bar(range(3), desc="x").disable
    path = tmp_path / "p.log"
    monkeypatch.setenv("IAV_PROGRESS_FILE", str(path))
    monkeypatch.setenv("TQDM_DISABLE", "1")  # meant for other libraries' bars: ours go to the file
    for _ in progress.tqdm(range(2), desc="to the file"):
        pass
    progress.tqdm.write("a line")
    text = path.read_text()
    assert "to the file: 100%" in text and "a line\n" in text


@pytest.mark.slow
def test_plain_build_right_after_a_clone_stops_with_one_line(tmp_path: Path) -> None:
    """`jupyter-book build book/` before the main job: no two-page book, one line saying what to run."""
    import shutil
    import subprocess

    shutil.copy2(REPO / "_config.yml", tmp_path / "_config.yml")
    shutil.copytree(REPO / "book", tmp_path / "book",
                    ignore=shutil.ignore_patterns("generated", "_build", "_vendor", ".ipynb_checkpoints"))
    proc = subprocess.run([*book.jupyter_book_command(), "build", "book/"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("book not built:")]
    assert len(lines) == 1 and "Run the main job first: make book" in lines[0], out[-2000:]
    assert "Traceback" not in out
    assert not (tmp_path / "_build" / "html" / "intro.html").exists()


# ----------------------------------------------------------------------------- the claims page, the run record


def test_claims_page_is_first_after_the_intro_and_runs_last() -> None:
    """Shown right after the intro, computed after every chapter (it reads their cached results)."""
    pages = book.toc_pages(REPO / "book")
    assert pages[:2] == ["intro", "generated/12_claims"]
    assert runner.list_notebooks()[-1].stem == "12_claims"


def test_run_record_names_the_run_and_merges_reruns(tmp_path: Path) -> None:
    results = [runner.NotebookResult("00_a", 1.0, True), runner.NotebookResult("12_claims", 2.0, True)]
    params = {"model": "tiny-mim,tiny-dino", "run_dir": str(tmp_path), "dataset": "embedded", "num_images": 8}
    book.write_run_record(tmp_path, results, params, machine={"cpu": "C (2 cores)", "gpu": "none"},
                          now="2026-01-01 10:00 UTC")
    text = (tmp_path / "generated" / book.RUN_RECORD_MD).read_text()
    assert "one run" in text and "2026-01-01 10:00 UTC" in text and "`tiny-dino`" in text
    assert "CPU only (no GPU)" in text and "`num_images=8`" in text and str(tmp_path) not in text
    # A rerun of one notebook on another machine: the record names both runs and their pages.
    book.write_run_record(tmp_path, results[1:], {**params, "model": "beit,dino,deit,in21k"},
                          machine={"cpu": "C (16 cores)", "gpu": "NVIDIA H200"}, now="2026-01-02 10:00 UTC")
    text = (tmp_path / "generated" / book.RUN_RECORD_MD).read_text()
    assert "several runs" in text and "GPU NVIDIA H200" in text and "ViT-B/16" in text
    record = json.loads((tmp_path / "generated" / book.RUN_RECORD_JSON).read_text())
    assert record["notebooks"]["00_a"]["date"].startswith("2026-01-01")
    assert record["notebooks"]["12_claims"]["machine"]["gpu"] == "NVIDIA H200"


def test_missing_run_record_is_reported_when_the_intro_includes_it(tmp_path: Path) -> None:
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    (tmp_path / "intro.md").write_text("# Intro\n```{include} generated/run_record.md\n```\n")
    problems = book.check_executed(tmp_path)
    assert len(problems) == 1 and "run record" in problems[0]
    (tmp_path / "generated").mkdir()
    (tmp_path / "generated" / book.RUN_RECORD_MD).write_text("**one run**\n")
    assert book.check_executed(tmp_path) == []


@pytest.mark.slow
def test_built_book_has_the_claims_table_and_the_run_record(built_book: BuiltBook) -> None:
    claims_html = (built_book.html_dir / "generated" / "12_claims.html").read_text()
    assert "verdict" in claims_html and "95 % CI" in claims_html
    assert any(v in claims_html for v in ("reproduced", "contradicted", "inconclusive"))
    intro = (built_book.html_dir / "intro.html").read_text()
    assert "were produced by one run" in intro
