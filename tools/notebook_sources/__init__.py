"""The one source of every notebook: a module per notebook, each with ``NAME`` and ``build()``.

``python tools/make_notebooks.py`` writes them all to ``notebooks/`` with outputs stripped;
``tests/test_notebooks_clean.py`` fails when a committed notebook differs from what its source
writes. Edit the source here, never the notebook.
"""

from __future__ import annotations

from collections.abc import Callable

import nbformat

from . import ch00, ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10, ch11, ch12

__all__ = ["BUILDERS", "build"]

#: ``{notebook name: builder}`` in book order.
BUILDERS: dict[str, Callable[[], nbformat.NotebookNode]] = {
    m.NAME: m.build for m in (ch00, ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10, ch11, ch12)
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` as its source makes it (validated, with stable cell ids)."""
    nb = BUILDERS[name]()
    # Stable cell ids, so that regenerating an unchanged notebook changes nothing in git.
    for i, cell in enumerate(nb.cells):
        cell.id = f"{name.split('_')[0]}-{i:02d}"
    nbformat.validate(nb)
    return nb
