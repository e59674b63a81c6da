"""Executed notebooks on disk, shared by the book runner and the book builder.

The repository's folders (notebooks, book, runs), a code cell's source, the first error of an
executed notebook, folding every code cell of a page (``hide-input``) and the atomic write the
runner's outputs go through. Nothing here imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO / "notebooks"
BOOK_DIR = REPO / "book"
RUN_DIR = REPO / "runs"


def cell_source(cell: dict[str, Any]) -> str:
    """A cell's source as one string (nbformat stores it as a string or a list of lines)."""
    src = cell.get("source", "")
    return src if isinstance(src, str) else "".join(src)


def first_error(nb_path: Path) -> str:
    """One line naming the first error output of an executed notebook."""
    try:
        nb = json.loads(Path(nb_path).read_text())
    except (OSError, ValueError):
        return "no output notebook"
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return (f"In [{cell.get('execution_count')}] (cell {i}): {out.get('ename')}: "
                        f"{str(out.get('evalue'))[:200]}")
    return ""


def collapse_code(nb_path: Path) -> None:
    """Tags every code cell of an executed notebook ``hide-input`` (papermill's injected one too).

    The published page then shows each cell's outputs with its code folded behind a toggle;
    the source notebooks stay untagged, so JupyterLab shows them as they are.
    """
    nb = json.loads(Path(nb_path).read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if "hide-input" not in tags:
                tags.append("hide-input")
    atomic_write_text(Path(nb_path), json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (:func:`iavutils.world.store.atomic_write`)."""
    from iavutils.world.store import atomic_write  # imports torch: only when a run has finished

    atomic_write(path, text)
