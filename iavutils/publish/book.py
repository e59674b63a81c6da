"""The main job's command line, and the book builder: ``jupyter-book build`` on the executed notebooks.

Usage::

    python -m iavutils.publish.book run   [--presets tiny|real|a,b] [--small] [--only NB ...]
    python -m iavutils.publish.book build [--book-dir DIR]
    python -m iavutils.publish.book all   [--presets ...]          # run, then build

``run`` executes ``notebooks/*.ipynb`` with the notebook runner (:mod:`iavutils.publish.runner`:
papermill, parameters, heartbeat, per-notebook times) into ``<book-dir>/generated/``. ``build``
vendors the pinned JavaScript the site serves itself (``npm ci`` in ``tools/book-assets``),
checks that every page of ``_toc.yml`` has its executed notebook (the checks
:mod:`iavutils.publish.book_guard` also runs inside any ``jupyter-book build``), and runs
``jupyter-book build <book-dir> -W --keep-going``; the site lands in ``_build/html`` next to
the ``_config.yml`` that jupyter-book finds by walking up from the book directory. Built pages
are checked for remote resources: the book must work offline.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .notebook_files import BOOK_DIR, NOTEBOOK_DIR, REPO, RUN_DIR, cell_source, first_error
from .runner import (
    PRESET_GROUPS,
    SMALL_PARAMETERS,
    TINY_BUDGET_S,
    default_parameters,
    expand_presets,
    list_notebooks,
    run_notebooks,
)

ASSETS_DIR = REPO / "tools" / "book-assets"


# Files the site serves itself, copied from tools/book-assets/node_modules into
# <book-dir>/_vendor/_static/npm/. html_extra_path copies _vendor/ verbatim onto the site
# root, so they land in <site>/_static/npm/: where Sphinx points every relative JS path
# (add_js_file and mathjax_path are taken relative to _static).
# (source relative to node_modules, destination relative to vendor/, patterns to skip)
VENDORED: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("requirejs/require.js", "require.js", ()),
    ("../require-config.js", "require-config.js", ()),
    ("@jupyter-widgets/html-manager/dist", "html-manager", ("*.map", "embed.js", "libembed-amd.js", "*.eot", "*.svg", "*.ttf")),
    ("mathjax/es5", "mathjax", ("*-svg*.js", "output/svg*", "tex-chtml-full*.js", "mml-*.js",
                                "node-main.js", "latest.js")),
)
VENDOR_STAMP = "VERSIONS.json"


# --------------------------------------------------------------------------------------------
# build


def check_jupyter_book() -> str:
    """Return the installed jupyter-book version; refuse anything but 1.x.

    jupyter-book 2.x ignores ``_config.yml``, exits 0 having built nothing for
    ``jupyter-book build book/`` and downloads its theme at build time.

    Raises:
        SystemExit: jupyter-book is missing or not 1.x.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("jupyter-book")
    except PackageNotFoundError:
        raise SystemExit("jupyter-book is not installed: pip install 'jupyter-book>=1.0.4,<2' "
                         "(or `make install`)") from None
    if not v.startswith("1."):
        raise SystemExit(
            f"jupyter-book {v} is installed, but this book needs 1.x: 2.x ignores _config.yml, "
            "builds nothing for `jupyter-book build book/` and fetches its theme online. "
            "Install it with: pip install 'jupyter-book>=1.0.4,<2'")
    return v


def _lock_digest() -> str:
    return hashlib.sha256((ASSETS_DIR / "package-lock.json").read_bytes()).hexdigest()


def vendor_assets(book_dir: Path, force: bool = False) -> Path:
    """Make ``<book_dir>/_vendor/_static/npm/`` hold the pinned JS the site serves itself.

    ``npm ci`` runs in ``tools/book-assets`` when its ``node_modules`` does not match
    ``package-lock.json``; the needed files are then copied (not the whole dependency tree,
    which is ~150 MB of build-time sources).

    Args:
        book_dir: the book source directory.
        force: re-copy even if the stamp says the copy is current.

    Returns:
        The vendor directory.

    Raises:
        SystemExit: npm is missing or ``npm ci`` fails.
    """
    dest = Path(book_dir) / "_vendor" / "_static" / "npm"
    digest = _lock_digest()
    stamp = dest / VENDOR_STAMP
    if not force and stamp.exists():
        try:
            if json.loads(stamp.read_text()).get("package_lock_sha256") == digest:
                return dest
        except ValueError:
            pass
    modules = ASSETS_DIR / "node_modules"
    installed_stamp = modules / ".iav-lock-sha256"
    if not (installed_stamp.exists() and installed_stamp.read_text().strip() == digest):
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit(
                "npm not found: the book serves its own copies of require.js, the ipywidgets "
                "HTML manager and MathJax, fetched once from the npm registry with `npm ci` "
                f"in {ASSETS_DIR}. Install Node.js >= 18 (with npm) and rerun.")
        print(f"fetching pinned book assets: npm ci in {ASSETS_DIR.relative_to(REPO)}", flush=True)
        proc = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund",
                               "--loglevel=error"], cwd=ASSETS_DIR)
        if proc.returncode != 0:
            raise SystemExit(f"npm ci failed in {ASSETS_DIR} (exit {proc.returncode})")
        installed_stamp.write_text(digest)

    # Leftovers of an interrupted copy would be published with the site: clear them first.
    for stale in dest.parent.glob(".npm.*") if dest.parent.exists() else ():
        shutil.rmtree(stale, ignore_errors=True)
    tmp = dest.with_name(f".npm.{os.getpid()}.tmp")
    tmp.mkdir(parents=True)
    for src_rel, dst_rel, skip in VENDORED:
        src = modules / src_rel
        if src.is_dir():
            shutil.copytree(src, tmp / dst_rel, ignore=shutil.ignore_patterns(*skip))
        else:
            shutil.copy2(src, tmp / dst_rel)
    versions = {name: json.loads((modules / name / "package.json").read_text())["version"]
                for name in ("requirejs", "@jupyter-widgets/html-manager", "mathjax")}
    (tmp / VENDOR_STAMP).write_text(json.dumps({"package_lock_sha256": digest, **versions},
                                               indent=2))
    # Swap the whole folder in one step so a concurrent build never sees a half copy.
    old = dest.with_name(f".npm.{os.getpid()}.old")
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def toc_pages(book_dir: Path) -> list[str]:
    """Every page named in ``<book_dir>/_toc.yml`` (root first), without suffix."""
    import yaml

    toc = yaml.safe_load((Path(book_dir) / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "file" in node:
                pages.append(str(node["file"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return pages


def check_executed(book_dir: Path) -> list[str]:
    """Problems with the toc's notebook pages: missing, not executed by papermill, or failed.

    Args:
        book_dir: the book source directory.

    Returns:
        One message per problem (empty when every page is fine).
    """
    problems: list[str] = []
    root = Path(book_dir) / f"{toc_pages(book_dir)[0]}.md"
    record = Path(book_dir) / "generated" / RUN_RECORD_MD
    if root.exists() and f"generated/{RUN_RECORD_MD}" in root.read_text() and not record.exists():
        problems.append(f"generated/{RUN_RECORD_MD}: no run record (run `python -m iavutils.publish.book run`)")
    for page in toc_pages(book_dir):
        base = Path(book_dir) / page
        if base.with_suffix(".md").exists():
            continue
        nb_path = base.with_suffix(".ipynb")
        if not nb_path.exists():
            problems.append(f"{page}: no executed notebook (run `python -m iavutils.publish.book run`)")
            continue
        nb = json.loads(nb_path.read_text())
        pm = nb.get("metadata", {}).get("papermill")
        if not pm:
            problems.append(f"{page}: not executed by papermill")
            continue
        code = [c for c in nb["cells"] if c["cell_type"] == "code" and cell_source(c).strip()]
        if pm.get("exception") or any(c.get("execution_count") is None for c in code):
            problems.append(f"{page}: execution failed or stopped early ({first_error(nb_path)})")
    return problems


class _AssetParser(html.parser.HTMLParser):
    """Collects the URLs a page loads: script src, link href, img/iframe/source src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.urls.append((tag, a["src"]))
        elif tag == "link" and a.get("href"):
            # <link rel="..."> loads a resource for stylesheet/preload/icon/modulepreload;
            # a plain hyperlink relation (e.g. rel="next") loads nothing.
            rel = (a.get("rel") or "").lower()
            if any(r in rel for r in ("stylesheet", "preload", "icon", "modulepreload",
                                       "prefetch", "preconnect", "dns-prefetch", "manifest")):
                self.urls.append((tag, a["href"]))
        elif tag in ("img", "iframe", "source", "embed", "audio", "video") and a.get("src"):
            self.urls.append((tag, a["src"]))


_CSS_REMOTE = re.compile(r"""(?:url\(\s*|@import\s+)["']?((?:https?:)?//[^"')\s;]+)""", re.IGNORECASE)


def external_assets(html_dir: Path) -> dict[str, list[str]]:
    """Remote resources (http(s) or protocol-relative URLs) the built pages and style sheets load.

    Args:
        html_dir: the built site (``_build/html``).

    Returns:
        Page or style sheet (relative path) -> ``"<tag> url"`` / ``"url(...)"`` strings, only for
        files that load something remote.
    """
    found: dict[str, list[str]] = {}
    for page in sorted(Path(html_dir).rglob("*.html")):
        parser = _AssetParser()
        parser.feed(page.read_text(errors="replace"))
        bad = [f"<{tag}> {url}" for tag, url in parser.urls
               if url.startswith(("http://", "https://", "//"))]
        if bad:
            found[str(page.relative_to(html_dir))] = bad
    # Style sheets can fetch too (web fonts, @import).
    for sheet in sorted(Path(html_dir).rglob("*.css")):
        bad = [f"url({m.group(1)})" for m in _CSS_REMOTE.finditer(sheet.read_text(errors="replace"))]
        if bad:
            found[str(sheet.relative_to(html_dir))] = bad
    return found


def jupyter_book_command() -> list[str]:
    """The jupyter-book CLI of this interpreter's environment."""
    exe = Path(sys.executable).with_name("jupyter-book")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if found:
        return [found]
    raise SystemExit("the jupyter-book command is missing: pip install 'jupyter-book>=1.0.4,<2'")


def site_dir(book_dir: Path) -> Path:
    """Where jupyter-book 1.x writes the site: ``_build/html`` beside the ``_config.yml`` it
    finds by walking up from the book directory (the book directory itself if there is none)."""
    here = Path(book_dir).resolve()
    for d in (here, *here.parents):
        if (d / "_config.yml").is_file():
            return d / "_build" / "html"
    return here / "_build" / "html"


def build_book(book_dir: Path = BOOK_DIR, strict: bool = True) -> int:
    """Vendor the JS, check the toc's notebooks, build the book.

    Args:
        book_dir: the book source directory (``_toc.yml``, ``intro.md``, ``generated/``).
        strict: pass ``-W --keep-going`` (warnings fail, all of them reported).

    Returns:
        0 on success, 1 if the build, the toc check or the offline check failed.
    """
    book_dir = Path(book_dir).resolve()
    v = check_jupyter_book()
    vendor_assets(book_dir)
    problems = check_executed(book_dir)
    cmd = [*jupyter_book_command(), "build", str(book_dir)]
    if strict:
        cmd += ["-W", "--keep-going"]
    print(f"jupyter-book {v}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=book_dir.parent).returncode
    print(f"book build: {time.perf_counter() - t0:.1f} s, exit {rc}", flush=True)
    html_dir = site_dir(book_dir)
    status = 0
    if rc != 0:
        print("book build FAILED (warnings count as errors; see the log above)", file=sys.stderr)
        status = 1
    if problems:
        print("pages of _toc.yml without a successfully executed notebook:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        status = 1
    if html_dir.exists():
        remote = external_assets(html_dir)
        if remote:
            print("pages that would load remote resources (the book must work offline):",
                  file=sys.stderr)
            for page, urls in remote.items():
                print(f"  {page}: {'; '.join(urls[:3])}", file=sys.stderr)
            status = 1
        print(f"site: {html_dir / 'index.html'}", flush=True)
    return status


# --------------------------------------------------------------------------------------------
# run record: which run produced the pages (book/intro.md includes generated/run_record.md)

RUN_RECORD_JSON = "run_record.json"
RUN_RECORD_MD = "run_record.md"


def machine_description() -> dict[str, str]:
    """The machine a run executes on: CPU model and cores, GPU (``"none"`` without CUDA)."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "none"
    try:
        import torch  # the kernels have gone; only the run record needs it here

        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # no torch or a broken driver: the record says no GPU was seen
        pass
    return {"cpu": f"{cpu} ({os.cpu_count()} cores)", "gpu": gpu}


def write_run_record(book_dir: Path, results: Sequence[Any], parameters: dict[str, Any],
                     machine: dict[str, str] | None = None, now: str | None = None) -> dict[str, Any]:
    """Record which run produced the pages: ``generated/run_record.json`` and ``.md``.

    A rerun of some notebooks (``--only``) keeps the other notebooks' entries, so the record
    names every run the pages come from.

    Args:
        book_dir: The book source directory.
        results: The runner's :class:`~iavutils.publish.runner.NotebookResult` list.
        parameters: The run's parameters.
        machine: :func:`machine_description` (computed when ``None``).
        now: The date (UTC, ISO; now when ``None``).

    Returns:
        The record.
    """
    from datetime import datetime, timezone

    from .notebook_files import atomic_write_text

    out = Path(book_dir) / "generated"
    now = now or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = machine or machine_description()
    params = {k: v for k, v in parameters.items() if k != "run_dir"}
    run = {"date": now, "presets": str(parameters.get("model", "")).split(","), "parameters": params,
           "machine": machine}
    try:
        notebooks = json.loads((out / RUN_RECORD_JSON).read_text()).get("notebooks", {})
    except (OSError, ValueError):
        notebooks = {}
    notebooks.update({r.name: {**run, "ok": r.ok} for r in results})
    record = {**run, "notebooks": dict(sorted(notebooks.items()))}
    atomic_write_text(out / RUN_RECORD_JSON, json.dumps(record, indent=2))
    atomic_write_text(out / RUN_RECORD_MD, run_record_markdown(record))
    return record


def _run_line(run: dict[str, Any]) -> str:
    params = ", ".join(f"`{k}={v}`" for k, v in run["parameters"].items() if k != "model") or "the defaults"
    gpu = run["machine"]["gpu"]
    where = f"GPU {gpu}" if gpu != "none" else "CPU only (no GPU)"
    if all(p.startswith("tiny-") for p in run["presets"]):
        what = "the embedded tiny models"
    elif set(run["presets"]) <= set(PRESET_GROUPS["real"]):
        what = "the paper's ViT-B/16 checkpoints"
    else:
        what = "tiny and hub models"
    return (f"{run['date']}, presets {', '.join(f'`{p}`' for p in run['presets'])} ({what}), "
            f"on {where}, {run['machine']['cpu']}; parameters {params}")


def run_record_markdown(record: dict[str, Any]) -> str:
    """The intro's statement of which run produced the pages (markdown)."""
    runs: dict[str, list[str]] = {}
    for name, nb in record["notebooks"].items():
        runs.setdefault(_run_line(nb), []).append(name)
    if len(runs) == 1:
        return f"**The pages of this book were produced by one run:** {next(iter(runs))}.\n"
    lines = ["**The pages of this book come from several runs:**", ""]
    lines += [f"- {line}: {', '.join(f'`{n}`' for n in names)}" for line, names in runs.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# CLI


def _parse_value(raw: str) -> Any:
    """Value of ``-p KEY=VALUE``: YAML scalars/lists (like papermill's ``-y``)."""
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m iavutils.publish.book", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("run", "build", "all"))
    ap.add_argument("--presets", default="tiny",
                    help="tiny | real | comma-separated presets (default: tiny)")
    ap.add_argument("--small", action="store_true",
                    help="tiny parameters for quick test runs: " + ", ".join(
                        f"{k}={v}" for k, v in SMALL_PARAMETERS.items()))
    ap.add_argument("--only", nargs="+", metavar="NB", help="run only these notebooks (name or prefix)")
    ap.add_argument("--book-dir", type=Path, default=BOOK_DIR, help="book source dir (default: book/)")
    ap.add_argument("--notebook-dir", type=Path, default=NOTEBOOK_DIR,
                    help="source notebooks (default: notebooks/)")
    ap.add_argument("--run-dir", type=Path, default=RUN_DIR, help="checkpoints and caches (default: runs/)")
    ap.add_argument("--device", default=None, help="passed to notebooks as `device` (default: theirs)")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="extra notebook parameter (YAML value), repeatable")
    ap.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    ap.add_argument("--cell-timeout", type=int, default=None, help="per-cell timeout in seconds")
    args = ap.parse_args(argv)

    status = 0
    if args.command in ("run", "all"):
        params = default_parameters(expand_presets(args.presets), args.run_dir, args.small, args.device)
        for item in args.param:
            key, sep, value = item.partition("=")
            if not sep:
                ap.error(f"-p expects KEY=VALUE, got {item!r}")
            params[key] = _parse_value(value)
        notebooks = list_notebooks(args.only, args.notebook_dir)
        if not notebooks:
            raise SystemExit(f"no notebooks in {args.notebook_dir}")
        print(f"executing {len(notebooks)} notebooks for {params['model']} "
              f"into {Path(args.book_dir).resolve() / 'generated'}", flush=True)
        tiny_full_run = params["dataset"] == "embedded" and not args.small and not args.only
        results = run_notebooks(notebooks, params, args.book_dir, progress=not args.no_progress,
                                kernel_timeout=args.cell_timeout,
                                budget_s=TINY_BUDGET_S if tiny_full_run else 0)
        write_run_record(args.book_dir, results, params)
        failed = [r.name for r in results if not r.ok]
        if failed:
            print(f"FAILED notebooks: {', '.join(failed)}", file=sys.stderr, flush=True)
            status = 1
    if args.command in ("build", "all"):
        status = max(status, build_book(args.book_dir))
    return status


if __name__ == "__main__":
    sys.exit(main())
