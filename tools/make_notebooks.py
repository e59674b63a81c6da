"""Writes every notebook (00–12) from its source in ``tools/notebook_sources/``, outputs stripped.

Run from anywhere: ``python tools/make_notebooks.py``. Each notebook is a title cell, a
``parameters`` cell (papermill), a setup cell that builds the analysis spec, calls into the
chapter's modules of ``iavutils.analysis`` and figures of ``iavutils.publish``, and prose.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sources live next to this script

from notebook_sources import BUILDERS, build  # noqa: E402

__all__ = ["BUILDERS", "NOTEBOOK_DIR", "build", "main"]

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def main() -> None:
    NOTEBOOK_DIR.mkdir(exist_ok=True)
    for name in BUILDERS:
        path = NOTEBOOK_DIR / f"{name}.ipynb"
        nbformat.write(build(name), path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
