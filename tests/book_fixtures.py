"""The book built once per test session, shared by test_book.py and test_browser.py.

``python -m iavutils.publish.book run --small`` executes every notebook into a temporary copy of the
book (temporary book dir and run dir: the real ``book/`` and ``runs/`` are never written), then
``python -m iavutils.publish.book build`` builds that copy with ``-W --keep-going``.

tests/conftest.py belongs to the core suite, so this module is not a registered plugin: the test
modules import the fixture by name. pytest then registers one fixture per importing module, so
the expensive work is memoised here, once per process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (REPO / "notebooks").glob("*.ipynb"))

# The four embedded presets (override for a quicker local loop, e.g. IAV_TEST_PRESETS=tiny-dino).
PRESETS = os.environ.get("IAV_TEST_PRESETS", "tiny")
RUN_TIMEOUT_S = int(os.environ.get("IAV_TEST_BOOK_TIMEOUT", "2400"))


@dataclass
class BuiltBook:
    """Where the session's book run and build put things, and how they went."""

    root: Path
    book_dir: Path
    run_dir: Path
    html_dir: Path
    run_rc: int
    run_log: str
    run_seconds: float
    build_rc: int
    build_log: str

    def executed(self, notebook: str) -> Path:
        """Path of the executed copy of ``notebooks/<notebook>.ipynb``."""
        return self.book_dir / "generated" / f"{Path(notebook).stem}.ipynb"


_BUILT: dict[str, BuiltBook] = {}


def _copy_book_sources(root: Path) -> Path:
    """Copy _config.yml and book/ (sources only) to ``root``; return the book dir copy."""
    shutil.copy2(REPO / "_config.yml", root / "_config.yml")
    book = root / "book"
    shutil.copytree(REPO / "book", book,
                    ignore=shutil.ignore_patterns("generated", "_build", "_vendor", ".ipynb_checkpoints"))
    return book


def _run(cmd: list[str], timeout: int) -> tuple[int, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)
        return proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return -1, out + f"\n[timed out after {timeout} s]"


def build_once(base: Path) -> BuiltBook:
    """Run the notebooks (``--small``) and build the book under ``base``, once per process."""
    if "book" in _BUILT:
        return _BUILT["book"]
    root = base / "book-root"
    root.mkdir(parents=True, exist_ok=True)
    book_dir = _copy_book_sources(root)
    run_dir = root / "runs"
    t0 = time.perf_counter()
    run_rc, run_log = _run([sys.executable, "-m", "iavutils.publish.book", "run", "--small", "--presets", PRESETS,
                            "--book-dir", str(book_dir), "--run-dir", str(run_dir), "--no-progress"],
                           RUN_TIMEOUT_S)
    run_seconds = time.perf_counter() - t0
    build_rc, build_log = _run([sys.executable, "-m", "iavutils.publish.book", "build", "--book-dir", str(book_dir)],
                               900)
    built = BuiltBook(root=root, book_dir=book_dir, run_dir=run_dir, html_dir=root / "_build" / "html",
                      run_rc=run_rc, run_log=run_log, run_seconds=run_seconds,
                      build_rc=build_rc, build_log=build_log)
    # Keep the logs next to the book: a failing CI run can be read from the pytest basetemp.
    (root / "run.log").write_text(run_log)
    (root / "build.log").write_text(build_log)
    _BUILT["book"] = built
    return built


@pytest.fixture(scope="session")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> BuiltBook:
    """The session's book: notebooks executed with ``--small`` and the book built, in a temp dir."""
    return build_once(tmp_path_factory.getbasetemp())


def tail(text: str, n: int = 60) -> str:
    """The last ``n`` lines of a log, for assertion messages."""
    return "\n".join(text.splitlines()[-n:])
