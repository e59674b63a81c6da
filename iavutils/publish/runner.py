"""The notebook runner of the main job: execute every notebook with papermill.

``python -m iavutils.publish.book run`` (:mod:`iavutils.publish.book`) calls
:func:`run_notebooks`: ``notebooks/*.ipynb`` in name order (``00_finetune`` first: the later
notebooks read its checkpoints) into ``<book-dir>/generated/<name>.ipynb``, passing each notebook
only the parameters it declares in its ``parameters`` cell. While a notebook runs, the library's
progress (:mod:`iavutils.core.progress`) is relayed to this terminal instead of the pages, and a
heartbeat line (notebook, running cell, latest progress, elapsed time) is printed every
:data:`HEARTBEAT_S` seconds. Each notebook's wall time (and its slowest cells) is printed and
saved to ``generated/timings.json``.

This module holds the presets and parameters of a run, the parameter reading, the heartbeat and
progress relay, and the per-notebook times. It does not import torch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .notebook_files import NOTEBOOK_DIR, REPO, atomic_write_text, cell_source, collapse_code, first_error

# Kept literal (not imported from iavutils.world.models) so that `build` and the CLI work without
# importing torch; tests/test_book.py checks they agree with iavutils.world.models.
PRESET_GROUPS: dict[str, tuple[str, ...]] = {
    "tiny": ("tiny-mim", "tiny-dino", "tiny-sup", "tiny-sup21k"),
    "real": ("beit", "dino", "deit", "in21k"),
}

# The budget for the main job (`make book`, four tiny presets, 2-core CPU, after the
# install), finetuning included; the run reports each notebook's share of it.
TINY_BUDGET_S = 15 * 60

# The runner prints a line at least this often while a notebook runs (notebook, cell, what the
# library reports, elapsed time): a silent terminal for minutes looks like a hang.
HEARTBEAT_S = 25.0

# Must equal iavutils.core.progress.ENV_FILE (kept literal: the runner does not import torch).
PROGRESS_ENV = "IAV_PROGRESS_FILE"

# Parameters for the quick runs of the tests (`--small`): every notebook exercises all its
# code paths on a handful of images. Only the names a notebook declares are passed.
SMALL_PARAMETERS: dict[str, Any] = {
    "num_images": 8,  # analysed held-out images
    "n_samples": 4,  # SmoothGrad samples
    "epochs": 1,  # finetuning epochs (checkpoints 0 and 1)
    "max_train": 128,  # finetuning images
    "num_eval": 64,  # images for accuracies
    "ablation_images": 32,  # images each head ablation is measured on
    "num_permutations": 100,  # Monte Carlo permutations (exact tests enumerate anyway)
}


@dataclass
class NotebookResult:
    """Outcome of one papermill execution.

    Attributes:
        name: notebook stem, e.g. ``"05_global_iav"``.
        seconds: wall time of the execution.
        ok: whether every cell ran without raising.
        error: one line describing the failure, if any.
        parameters: the parameters that were passed.
    """

    name: str
    seconds: float
    ok: bool
    error: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


def expand_presets(spec: str) -> list[str]:
    """Turn ``"tiny"``, ``"real"`` or a comma-separated list into preset names.

    Args:
        spec: group names and/or presets, comma-separated (``"tiny"``, ``"beit,dino"``,
            ``"tiny,deit"``).

    Returns:
        The presets, in order, without duplicates.
    """
    out: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        for preset in PRESET_GROUPS.get(item, (item,)):
            if preset not in out:
                out.append(preset)
    if not out:
        raise ValueError(f"no presets in {spec!r}")
    return out


def default_parameters(presets: Sequence[str], run_dir: Path, small: bool = False,
                       device: str | None = None) -> dict[str, Any]:
    """Parameters of a book run, before filtering by what each notebook declares.

    Args:
        presets: model presets; all tiny ones run on the embedded dataset, otherwise CIFAR-10.
        run_dir: where checkpoints and cached results go (absolute, so any kernel cwd works).
        small: add :data:`SMALL_PARAMETERS` (quick test runs).
        device: passed as ``device`` if given; otherwise each notebook keeps its default.

    Returns:
        Parameter name -> value.
    """
    tiny = all(p.startswith("tiny-") for p in presets)
    params: dict[str, Any] = {
        "model": ",".join(presets),
        "run_dir": str(Path(run_dir).resolve()),
        "dataset": "embedded" if tiny else "cifar10",
    }
    if device is not None:
        params["device"] = device
    if small:
        params.update(SMALL_PARAMETERS)
    return params


def list_notebooks(only: Iterable[str] | None = None, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The notebooks to execute, in name order.

    Args:
        only: names or unique prefixes (``"05"``, ``"05_global_iav"``,
            ``"notebooks/05_global_iav.ipynb"``); ``None`` means all.
        notebook_dir: where the source notebooks live.

    Returns:
        Paths of the selected notebooks.

    Raises:
        SystemExit: a name matches no notebook, or several.
    """
    all_nbs = sorted(p for p in notebook_dir.glob("*.ipynb") if not p.name.startswith("."))
    if not only:
        return all_nbs
    chosen: list[Path] = []
    for raw in only:
        key = Path(raw).name.removesuffix(".ipynb")
        hits = [p for p in all_nbs if p.stem == key] or [p for p in all_nbs if p.stem.startswith(key)]
        if len(hits) != 1:
            names = ", ".join(p.stem for p in hits) or "none"
            raise SystemExit(f"--only {raw!r} matches {names}")
        if hits[0] not in chosen:
            chosen.append(hits[0])
    return sorted(chosen)


def parameter_names(notebook: Path) -> tuple[set[str], set[str]]:
    """Names assigned in the notebook's ``parameters`` cell: ``(all, unreadable by papermill)``.

    papermill's own parser (``papermill.inspect_notebook``) skips lines it cannot read (for
    example a comment containing quotes) although ``-p`` still injects them; Python's parser
    reads every top-level assignment. The second set names what only Python could read (worth
    fixing: ``papermill --help-notebook`` does not list it).
    """
    import ast
    import logging

    import papermill

    log = logging.getLogger("papermill.translators")
    level = log.level
    log.setLevel(logging.ERROR)  # reported once, below, instead of per line and per call
    try:
        by_papermill = set(papermill.inspect_notebook(str(notebook)))
    finally:
        log.setLevel(level)
    by_python: set[str] = set()
    nb = json.loads(Path(notebook).read_text())
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code" or "parameters" not in cell.get("metadata", {}).get("tags", []):
            continue
        try:
            tree = ast.parse(cell_source(cell))
        except SyntaxError:
            continue  # IPython syntax: papermill's view is all there is
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            by_python.update(t.id for t in targets if isinstance(t, ast.Name))
    return by_papermill | by_python, by_python - by_papermill


def declared_parameters(notebook: Path) -> set[str]:
    """Names assigned in the notebook's ``parameters`` cell (see :func:`parameter_names`)."""
    return parameter_names(notebook)[0]


def slowest_cells(nb_path: Path, k: int = 3) -> list[tuple[int, float, str]]:
    """The ``k`` slowest cells of an executed notebook (papermill records each cell's duration).

    Returns:
        ``(execution count, seconds, first line of source)``, slowest first.
    """
    try:
        nb = json.loads(Path(nb_path).read_text())
    except (OSError, ValueError):
        return []
    rows = []
    for cell in nb.get("cells", []):
        seconds = (cell.get("metadata", {}).get("papermill", {}) or {}).get("duration")
        if cell.get("cell_type") == "code" and isinstance(seconds, (int, float)):
            first = next((ln.strip() for ln in cell_source(cell).splitlines() if ln.strip()
                          and not ln.strip().startswith("#")), "")
            rows.append((cell.get("execution_count") or 0, float(seconds), first[:70]))
    return sorted(rows, key=lambda r: -r[1])[:k]


class _ProgressRelay:
    """Reads the progress file a kernel appends to (see :mod:`iavutils.core.progress`).

    Complete lines (``tqdm.write`` messages, bars that stay) are relayed; the text after the
    last carriage return of the unfinished line is a bar's current state, kept as ``status``.
    """

    def __init__(self, path: Path) -> None:
        import codecs

        self.path = path
        self.pos = 0
        self.partial = ""
        self.status = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a write may end mid-character

    def poll(self) -> list[str]:
        """New complete lines since the last call (and updates :attr:`status`)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return []
        if not data:
            return []
        self.pos += len(data)
        *complete, partial = (self.partial + self._decoder.decode(data)).split("\n")
        lines = []
        for line in complete:
            segments = [x.strip() for x in line.split("\r") if x.strip()]
            if segments:
                lines.append(segments[-1])
        # "\rstate" is a bar's refresh; "\r<spaces>\r" a bar that closed without staying.
        segments = partial.split("\r")
        current = segments[-1] if segments[-1] or len(segments) == 1 else segments[-2]
        self.status = current.strip()
        self.partial = "\r".join(segments[-2:])  # bounded: only the current state matters
        return lines


def _running_cell(nb_path: Path) -> str:
    """``cell i/n: <first line>`` of the cell papermill is executing (from its saved output)."""
    try:
        nb = json.loads(Path(nb_path).read_text())
    except (OSError, ValueError):  # not written yet, or being written
        return ""
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    for i, cell in enumerate(code, 1):
        if (cell.get("metadata", {}).get("papermill", {}) or {}).get("status") == "running":
            # The first statement that is not an import names what the cell does.
            lines = [ln.strip() for ln in cell_source(cell).splitlines() if ln.strip() and not ln.strip().startswith("#")]
            first = next((ln for ln in lines if not ln.startswith(("import ", "from "))), lines[0] if lines else "")
            return f"cell {i}/{len(code)}: {first.split('  #')[0][:60]}"
    return ""


class _Heartbeat:
    """While a notebook runs: relay the library's progress and print a heartbeat line.

    A heartbeat line (notebook, running cell, the library's latest progress, elapsed time) is
    printed every ``interval`` seconds; relayed progress lines as they come. Both go to
    ``stream`` (the terminal running the book), never into the notebook.
    """

    def __init__(self, label: str, out_nb: Path, progress_file: Path, interval: float = HEARTBEAT_S,
                 stream: Any = None) -> None:
        import threading

        self.label = label
        self.out_nb = out_nb
        self.relay = _ProgressRelay(progress_file)
        self.interval = float(interval)
        self.stream = stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {label}", daemon=True)
        self._t0 = time.perf_counter()

    def __enter__(self) -> _Heartbeat:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._relay()  # what came in last

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)

    def _relay(self) -> None:
        for line in self.relay.poll():
            self._print(f"        {self.label} | {line}")

    def _run(self) -> None:
        next_beat = self._t0 + self.interval
        poll = min(1.0, self.interval / 4)
        while not self._stop.wait(poll):
            self._relay()
            now = time.perf_counter()
            if now >= next_beat:
                next_beat = now + self.interval
                parts = [f"        {self.label} running {_fmt_minutes(now - self._t0)}"]
                if cell := _running_cell(self.out_nb):
                    parts.append(cell)
                if self.relay.status:
                    parts.append(self.relay.status)
                self._print("  |  ".join(parts))


def run_notebooks(notebooks: Sequence[Path], parameters: dict[str, Any], book_dir: Path,
                  progress: bool = True, kernel_timeout: int | None = None,
                  budget_s: float = 0, heartbeat_s: float = HEARTBEAT_S) -> list[NotebookResult]:
    """Execute notebooks with papermill into ``<book_dir>/generated/``.

    Every notebook runs even if an earlier one failed (papermill writes partial output), so
    one run shows every failure; the caller turns failures into a non-zero exit.

    Args:
        notebooks: source notebooks, in execution order.
        parameters: candidate parameters; each notebook gets those it declares.
        book_dir: the book source directory (outputs go to its ``generated/``).
        progress: show papermill's per-cell progress bar.
        kernel_timeout: per-cell timeout in seconds (``None``: no limit).
        budget_s: time budget of the whole run, to report each notebook's share (0: none).
        heartbeat_s: seconds between two heartbeat lines while a notebook runs.

    Returns:
        One :class:`NotebookResult` per notebook.
    """
    saved = {k: os.environ.get(k) for k in ("TQDM_DISABLE", "OMP_WAIT_POLICY", "IAV_RUN_DIR", PROGRESS_ENV)}
    try:
        return _run_notebooks(notebooks, parameters, book_dir, progress, kernel_timeout, budget_s, heartbeat_s)
    finally:
        for k, v in saved.items():  # the kernels are gone; leave the caller's environment as it was
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_notebooks(notebooks: Sequence[Path], parameters: dict[str, Any], book_dir: Path, progress: bool,
                   kernel_timeout: int | None, budget_s: float, heartbeat_s: float) -> list[NotebookResult]:
    import papermill

    out_dir = Path(book_dir) / "generated"
    out_dir.mkdir(parents=True, exist_ok=True)
    # Progress bars inside the notebooks would land in the published pages as noise. The
    # library's bars go to a progress file instead (iavutils.core.progress, IAV_PROGRESS_FILE, set per
    # notebook below), which a heartbeat thread relays to this terminal; any other library's
    # tqdm bar is switched off. The kernels inherit this process's environment.
    os.environ.setdefault("TQDM_DISABLE", "1")
    # OpenMP workers that spin while waiting turn any other busy process on a small machine into
    # a 5-20x slowdown of every torch op (measured: a tiny-preset training step took 1384 ms with
    # spinning workers beside one busy process, 226 ms with passive ones, 169 ms on one thread).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "run_dir" in parameters:
        # Also the default of notebooks that resolve an empty run_dir from $IAV_RUN_DIR, so
        # that no notebook of this run can fall back to the repository's runs/.
        os.environ["IAV_RUN_DIR"] = str(parameters["run_dir"])

    results: list[NotebookResult] = []
    t_start = time.perf_counter()
    n = len(notebooks)
    for i, nb in enumerate(notebooks, 1):
        declared, unreadable = parameter_names(nb)
        params = {k: v for k, v in parameters.items() if k in declared}
        undeclared = sorted(set(parameters) - declared - set(SMALL_PARAMETERS))
        print(f"[{i:2d}/{n}] {nb.stem} ...", flush=True)
        if undeclared:
            print(f"        (does not declare {', '.join(undeclared)}; not passed)", flush=True)
        if unreadable:
            print(f"        (papermill cannot parse the lines of {', '.join(sorted(unreadable))} in the "
                  "parameters cell: quotes in a comment?)", flush=True)
        out = out_dir / nb.name
        t0 = time.perf_counter()
        ok, error = True, ""
        # Parameters papermill's parser missed are declared all the same (see above).
        quiet = logging.getLogger("papermill")
        quiet_level = quiet.level
        quiet.setLevel(logging.ERROR if unreadable else quiet_level)
        progress_file = Path(tempfile.mkdtemp(prefix="iav-progress-")) / f"{nb.stem}.log"
        progress_file.touch()
        os.environ[PROGRESS_ENV] = str(progress_file)
        try:
            with _Heartbeat(f"[{i:2d}/{n}] {nb.stem}", out, progress_file, heartbeat_s):
                papermill.execute_notebook(
                    str(nb), str(out), parameters=params, cwd=str(REPO), progress_bar=progress,
                    request_save_on_cell_execute=True, execution_timeout=kernel_timeout,
                )
        except papermill.PapermillExecutionError as exc:
            ok, error = False, f"In [{exc.exec_count}]: {exc.ename}: {str(exc.evalue)[:200]}"
        except Exception as exc:  # kernel death, timeout, bad notebook: still report and go on
            ok, error = False, f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            quiet.setLevel(quiet_level)
            shutil.rmtree(progress_file.parent, ignore_errors=True)
        if ok and (found := first_error(out)):
            ok, error = False, found
        if out.exists():
            collapse_code(out)
        seconds = time.perf_counter() - t0
        results.append(NotebookResult(nb.stem, seconds, ok, error, params))
        status = "ok" if ok else "FAILED"
        elapsed = time.perf_counter() - t_start
        print(f"[{i:2d}/{n}] {nb.stem:<32s} {status:<6s} {seconds:7.1f} s   "
              f"(elapsed {_fmt_minutes(elapsed)})", flush=True)
        if error:
            print(f"        {error}", flush=True)
        # Where the time went, so that a chapter over its share of the budget is easy to fix.
        for idx, sec, first in slowest_cells(out, k=2):
            if sec >= 0.1 * seconds and sec >= 2:
                print(f"        In [{idx}] {sec:6.1f} s  {first}", flush=True)
    _write_timings(out_dir / "timings.json", results, parameters)
    _print_summary(results, time.perf_counter() - t_start, budget_s)
    return results


def _fmt_minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _write_timings(path: Path, results: Sequence[NotebookResult], parameters: dict[str, Any]) -> None:
    payload = {
        "parameters": parameters,
        "notebooks": [{"name": r.name, "seconds": round(r.seconds, 2), "ok": r.ok, "error": r.error}
                      for r in results],
        "total_seconds": round(sum(r.seconds for r in results), 2),
    }
    # Merge with an earlier run's timings so `--only` reruns keep the other notebooks' numbers.
    try:
        old = json.loads(path.read_text())
        rows = {r["name"]: r for r in old.get("notebooks", [])}
        rows.update({r["name"]: r for r in payload["notebooks"]})
        payload["notebooks"] = [rows[k] for k in sorted(rows)]
        payload["total_seconds"] = round(sum(r["seconds"] for r in payload["notebooks"]), 2)
    except (OSError, ValueError):
        pass
    atomic_write_text(path, json.dumps(payload, indent=2))


def _print_summary(results: Sequence[NotebookResult], total: float, budget_s: float = 0) -> None:
    print("\nnotebook wall times:")
    for r in results:
        share = f"{100 * r.seconds / budget_s:5.1f} % of budget" if budget_s else ""
        print(f"  {r.name:<32s} {r.seconds:7.1f} s  {'ok' if r.ok else 'FAILED':<6s} {share}")
    print(f"  {'total':<32s} {total:7.1f} s  ({_fmt_minutes(total)})", flush=True)
    if budget_s:
        verdict = "within" if total <= budget_s else "OVER"
        print(f"  {verdict} the main job's budget of {_fmt_minutes(budget_s)} for the notebooks "
              "(the book build adds about a minute)", flush=True)

