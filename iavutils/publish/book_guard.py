"""A Sphinx extension that makes a plain ``jupyter-book build book/`` safe right after a clone.

The chapters are notebooks that the main job executes into ``book/generated/`` (git-ignored),
and MathJax and the widget manager are copies the site serves itself (``book/_vendor/``). A
build without them used to exit 0 with a two-page book and raw LaTeX. ``_config.yml`` lists
this extension, so any build — ``jupyter-book build book/`` or the main job's — first:

* stops with one line naming the command to run when a chapter of ``_toc.yml`` has no
  executed notebook (or its execution failed);
* fetches the pinned JS (:func:`iavutils.publish.book.vendor_assets`) when it is missing, so MathJax
  renders; without npm that stops with one line too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MAIN_JOB = "make book  (or: python -m iavutils.publish.book run, then jupyter-book build book/)"


def _check(app: Any, config: Any) -> None:
    from .book import check_executed, vendor_assets

    book_dir = Path(app.srcdir)
    problems = check_executed(book_dir)
    # SystemExit, not a Sphinx error: jupyter-book would bury the one line under two tracebacks.
    if problems:
        raise SystemExit(
            f"book not built: {len(problems)} chapter(s) have no successfully executed notebook in "
            f"{book_dir / 'generated'} (first: {problems[0]}). Run the main job first: {MAIN_JOB}")
    try:
        vendor_assets(book_dir)
    except SystemExit as err:  # npm missing or failing
        raise SystemExit(f"book not built: the site's own copies of MathJax and the widget manager are missing: {err}") from None


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point."""
    app.connect("config-inited", _check)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
