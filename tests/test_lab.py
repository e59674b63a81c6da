"""The head explorer in JupyterLab, in a real browser (Debian chromium driven by playwright).

``make lab``'s own command line (:func:`iavutils.publish.lab.lab_command`) serves a temporary copy of
``notebooks/09_head_explorer.ipynb`` on 127.0.0.1, with a token, a temporary run directory (a
random-weight "finetuned" checkpoint, tests/fake_runs.py) and temporary Jupyter config,
runtime, settings and workspace directories: the repository, ``runs/`` and ``~/.jupyter`` are
never touched. The test runs the notebook with Lab's Run All, moves the layer and head sliders
and checks that the picture changes; the kernel must be this environment's Python and every
request must stay on this machine. The server and its kernel are stopped in a ``finally``, and
no process of theirs may be left.

Never ``playwright install``: it downloads a browser; tools/ensure_browser.sh installs Debian's.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest
from test_browser import _DIGESTS_JS, CHROMIUM, LAUNCH_ARGS, _press, _require_browser

from iavutils.publish import lab as lab_module
from iavutils.publish.lab import lab_command, lab_env

REPO = Path(__file__).resolve().parents[1]
EXPLORER = REPO / "notebooks" / "09_head_explorer.ipynb"
PRESET = "tiny-dino"
# Small enough for seconds on a loaded 2-core CPU: 6 layers x 4 heads, 4 SmoothGrad samples.
PARAMETERS = {"model": PRESET, "image_index": 0, "n_samples": 4, "panel_px": 80}
START_TIMEOUT_S = 120  # Lab's server starts in seconds, but the machine may be busy
TIMEOUT_MS = 120_000  # page load and kernel start each fit well within this
RUN_ALL_TIMEOUT_MS = 300_000  # the notebook's run: ~30 s here, more with a cold disk cache
KERNEL_MARK = "IAV-LAB-KERNEL-PREFIX="


@dataclass
class _Lab:
    url: str
    token: str
    proc: subprocess.Popen
    log: Path

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_notebook(dest: Path) -> Path:
    """A copy of the explorer with small parameters and a cell that reports the kernel's prefix.

    The parameters are injected after the notebook's ``parameters`` cell, as papermill does, so
    the copy follows whatever the notebook's own cells become. ``run_dir`` keeps its default:
    the kernel, started in the copy's folder, finds the run through ``$IAV_RUN_DIR`` of the
    server's environment, as with ``IAV_RUN_DIR=... make lab``.
    """
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(EXPLORER))  # papermill's reader: every cell gets its tags list
    nb = parameterize_notebook(nb, PARAMETERS)
    nb.cells.append(nbformat.v4.new_code_cell(f'import sys\nprint("{KERNEL_MARK}" + sys.prefix)'))
    # papermill's metadata would make Lab show the papermill status fields; Lab needs none.
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
    out = dest / EXPLORER.name
    nbformat.write(nb, out)
    return out


def _wait_listening(lab: _Lab) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    status = f"{lab.url}/api/status?token={lab.token}"
    while True:
        if lab.proc.poll() is not None:
            raise AssertionError(f"JupyterLab exited with {lab.proc.returncode}:\n{lab.log_tail()}")
        try:
            with urllib.request.urlopen(status, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"JupyterLab did not answer within {START_TIMEOUT_S} s:\n{lab.log_tail()}")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> list[str]:
    """Stop the server and its kernels; returns what was still alive after (should be nothing)."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    # SIGTERM: the server shuts its kernels down (they run in sessions of their own), then exits.
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    _, alive = psutil.wait_procs(family, timeout=15)
    left = [f"{p.pid} {p.name()}" for p in alive if p.is_running()]
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    return left


@contextlib.contextmanager
def _running_lab(tmp: Path, root_dir: Path, run_dir: Path, leftovers: list[str]) -> Iterator[_Lab]:
    """``make lab``'s server on a free port of 127.0.0.1, isolated from the user's Jupyter files."""
    token = secrets.token_hex(16)
    port = _free_port()
    env = lab_env()
    env.update({
        "JUPYTER_TOKEN": token,  # in the environment, not on the command line
        "IAV_RUN_DIR": str(run_dir),
        "JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "lab-workspaces"),
        "IPYTHONDIR": str(tmp / "ipython"),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    cmd = lab_command(root_dir, ["--no-browser", "--ip=127.0.0.1", f"--port={port}",
                                 "--ServerApp.port_retries=0"])
    log = tmp / "lab.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    lab = _Lab(url=f"http://127.0.0.1:{port}", token=token, proc=proc, log=log)
    try:
        _wait_listening(lab)
        yield lab
    finally:
        leftovers.extend(_stop(proc))


def _is_local(url: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme in ("data", "blob", "about"):
        return True
    return parsed.scheme in ("http", "https", "ws", "wss") and parsed.hostname in ("127.0.0.1", "localhost")


def _digests(page: object, what: str, predicate: object = bool, timeout_s: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        now = page.evaluate(_DIGESTS_JS)
        if predicate(now):
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: shown images {now}")
        page.wait_for_timeout(200)


_STARTED_JS = """() => [...document.querySelectorAll('.jp-NotebookPanel .jp-InputArea-prompt')]
  .some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))"""


def _wait_kernel_ready(page: object, lab: _Lab) -> None:
    """Until the server has the notebook's kernel idle with the page connected, and Lab says so."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    kernels: list = []
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{lab.url}/api/kernels?token={lab.token}", timeout=10) as r:
            kernels = json.load(r)
        if any(k.get("execution_state") == "idle" and k.get("connections", 0) > 0 for k in kernels) and \
                page.evaluate(_STATUS_IDLE_JS):
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"the notebook's kernel did not become ready: {kernels}\n{lab.log_tail()}")


_STATUS_IDLE_JS = """() => (document.querySelector('#jp-main-statusbar')?.textContent || '').includes('| Idle')"""


def _run_all(page: object, attempts: int = 5) -> None:
    """Run > Run All Cells, as a user does; again if no cell was queued.

    Right after the kernel first reports idle, Lab may still be finishing its handshake and
    drops the request without a trace (seen on the loaded 2-core machine), so the test checks
    that cells were queued (``[*]``) or ran (``[1]``) before it waits for them.
    """
    for _ in range(attempts):
        dialog = page.locator(".jp-Dialog")
        if dialog.count():
            raise AssertionError(f"Lab shows a dialog: {dialog.first.inner_text()!r}")
        page.locator("#jp-menu-panel .lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if page.evaluate(_STARTED_JS):
                return
            page.wait_for_timeout(250)
    raise AssertionError(f"Run All Cells queued no cell in {attempts} tries")


# ----------------------------------------------------------------------------- make lab's command


@pytest.mark.parametrize("euid", [0, 1000])
def test_lab_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, euid: int) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    (tmp_path / "notebooks").mkdir()
    cmd = lab_command(tmp_path, ["--port=8899", "--no-browser"])
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"], "the kernel must be this environment's Python"
    assert f"--ServerApp.root_dir={tmp_path.resolve()}" in cmd
    assert "--LabApp.default_url=/lab/tree/notebooks" in cmd
    assert set(lab_module.OFFLINE_OPTIONS) <= set(cmd)
    assert ("--allow-root" in cmd) == (euid == 0), "Jupyter refuses root without --allow-root"
    assert cmd[-2:] == ["--port=8899", "--no-browser"], "the caller's options come last, so they win"
    assert not any(a.startswith("--LabApp.default_url") for a in lab_command(tmp_path / "notebooks"))


def test_lab_options_are_offline() -> None:
    """Lab itself parses the options into: no news feed, no update check, no package index."""
    from jupyterlab.handlers.announcements import NeverCheckForUpdate
    from jupyterlab.labapp import LabApp

    app = LabApp()
    app.parse_command_line(lab_command()[3:])
    assert app.news_url is None
    assert app.check_for_updates_class is NeverCheckForUpdate
    assert app.extension_manager == "readonly"
    assert Path(app.app_settings_dir) == lab_module.SETTINGS_DIR


def test_lab_settings_turn_off_the_news_prompt() -> None:
    """tools/lab/overrides.json names a real plugin and valid values of the installed Lab."""
    overrides = json.loads((lab_module.SETTINGS_DIR / "overrides.json").read_text())
    from jupyterlab.labapp import LabApp

    plugin = "@jupyterlab/apputils-extension:notification"
    pkg, name = plugin.split(":")
    schema_file = Path(LabApp().schemas_dir) / pkg / f"{name}.json"
    assert schema_file.is_file(), f"{plugin} is not a plugin of the installed JupyterLab"
    props = json.loads(schema_file.read_text())["properties"]
    assert overrides[plugin]["fetchNews"] == "false"
    assert "false" in [c["const"] for c in props["fetchNews"]["oneOf"]]
    assert overrides[plugin]["checkForUpdates"] is False and props["checkForUpdates"]["type"] == "boolean"


def test_lab_env_prefers_the_environment_kernel() -> None:
    base = {"PATH": "/bin", "JUPYTER_PREFER_ENV_PATH": "0"}
    env = lab_env(base)
    assert env == {"PATH": "/bin", "JUPYTER_PREFER_ENV_PATH": "1"}
    assert base["JUPYTER_PREFER_ENV_PATH"] == "0", "the caller's mapping is not changed"


# ----------------------------------------------------------------------------- in a real browser


@pytest.mark.browser
@pytest.mark.slow
def test_explorer_runs_in_jupyterlab(tmp_path: Path) -> None:
    _require_browser()
    from fake_runs import write_fake_run
    from playwright.sync_api import sync_playwright

    run_dir = tmp_path / "runs"
    write_fake_run(run_dir, PRESET)
    served = tmp_path / "served"
    served.mkdir()
    notebook = _prepare_notebook(served)
    leftovers: list[str] = []
    t0 = time.perf_counter()
    with _running_lab(tmp_path, served, run_dir, leftovers) as lab, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, timeout=TIMEOUT_MS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1100})
            requests: list[str] = []
            errors: list[str] = []
            context.on("request", lambda r: requests.append(r.url))
            page = context.new_page()
            page.on("websocket", lambda ws: requests.append(ws.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_default_timeout(TIMEOUT_MS)

            page.goto(f"{lab.url}/lab/tree/{notebook.name}?token={lab.token}", wait_until="load")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", state="visible")
            _wait_kernel_ready(page, lab)
            _run_all(page)

            # Run All is done when the last cell (the kernel's prefix) has printed.
            mark = page.locator(".jp-OutputArea-output", has_text=KERNEL_MARK)
            try:
                mark.wait_for(state="attached", timeout=RUN_ALL_TIMEOUT_MS)
            except Exception as exc:  # noqa: BLE001 - rethrown with the notebook's text
                text = page.locator(".jp-NotebookPanel .jp-Notebook").inner_text()
                raise AssertionError(f"Run All did not finish: {exc}\n{text[-3000:]}\n{lab.log_tail()}") from exc
            notebook_text = page.locator(".jp-NotebookPanel .jp-Notebook").inner_text()
            assert "Traceback" not in notebook_text, notebook_text[-3000:]
            prefix = mark.inner_text().split(KERNEL_MARK, 1)[1].strip()
            assert Path(prefix).resolve() == Path(sys.prefix).resolve(), \
                f"the notebook ran on {prefix}, not on this environment's Python ({sys.prefix})"

            # The widgets render in Lab (jupyterlab_widgets): sliders and pre-rendered images.
            layer = page.locator(".iav-layer-slider .noUi-handle").first
            layer.scroll_into_view_if_needed()
            layer.wait_for(state="visible")
            page.wait_for_selector(".iav-explorer img", state="visible")
            start = _digests(page, "the explorer shows no image")

            assert _press(page, "iav-layer-slider", "ArrowRight") == "2"  # layers count from 1
            after_layer = _digests(page, "moving the layer slider must change the map",
                                   lambda now: len(now) == len(start) and now != start)
            assert _press(page, "iav-head-slider", "ArrowRight") == "1"  # heads from 0
            _digests(page, "moving the head slider must change the map",
                     lambda now: len(now) == len(start) and now != after_layer and now != start)
            page.locator(".iav-explorer").first.screenshot(path=str(tmp_path / "explorer-lab.png"))

            assert errors == [], errors
            outside = [u for u in requests if not _is_local(u)]
            assert outside == [], f"requests left the machine: {outside}"
            assert any(u.startswith(("ws://127.0.0.1", "ws://localhost")) for u in requests), \
                "no kernel websocket was opened"
        finally:
            browser.close()
    seconds = time.perf_counter() - t0
    assert leftovers == [], f"processes left after stopping JupyterLab: {leftovers}"
    print(f"JupyterLab explorer test: {seconds:.0f} s (server, page, Run All, sliders, stop)")
