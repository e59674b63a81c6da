"""The library's one progress helper: where a long loop reports how far it got.

Every progress bar of :mod:`iavutils` goes through :func:`progress_bar` (and its drop-in alias
:func:`tqdm`, which keeps tqdm's call signature and ``tqdm.write``), so that one switch decides
where progress goes:

* ``IAV_PROGRESS_FILE=<path>`` set (the book runner, :mod:`iavutils.publish.runner`, sets it for each
  kernel it starts): bars and :func:`write` messages are appended as plain text to that file,
  throttled to one update per :data:`FILE_MININTERVAL_S`; the runner relays them to its
  terminal and builds its heartbeat lines from them. Nothing reaches the notebook, so nothing
  reaches the published pages. (A side file, because inside a Jupyter kernel even
  ``sys.__stderr__`` is not the terminal: ipykernel redirects file descriptors 1 and 2 into
  the cell's output.)
* else, ``TQDM_DISABLE`` set to a true value: no bar (tqdm's notebook widget ignores it).
* else ``tqdm.auto``: a widget in Jupyter, a text bar in a terminal.
"""

from __future__ import annotations

import os
import threading
from typing import Any, TextIO

__all__ = ["ENV_FILE", "FILE_MININTERVAL_S", "progress_bar", "tqdm", "write", "to_file"]

#: Environment variable naming the file that receives progress instead of the notebook.
ENV_FILE = "IAV_PROGRESS_FILE"

#: Seconds between two updates of one bar in the progress file.
FILE_MININTERVAL_S = 2.0

_lock = threading.Lock()
_sinks: dict[str, TextIO] = {}


def _sink() -> TextIO | None:
    """The open progress file named by :data:`ENV_FILE`, or ``None``."""
    path = os.environ.get(ENV_FILE, "")
    if not path:
        return None
    with _lock:
        f = _sinks.get(path)
        if f is None or f.closed:
            # Line-buffered: tqdm flushes its refreshes, but not the newline that ends a bar.
            f = _sinks[path] = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (kept open)
        return f


def to_file() -> bool:
    """Whether progress goes to the progress file (``IAV_PROGRESS_FILE`` is set)."""
    return bool(os.environ.get(ENV_FILE, ""))


def _env_disabled() -> bool:
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")


def progress_bar(iterable: Any = None, *args: Any, disable: bool = False, **kwargs: Any) -> Any:
    """A tqdm bar (any of tqdm's arguments), routed as the module docstring says.

    Args:
        iterable: What to iterate over (or ``None`` with ``total=`` and ``update()``).
        *args: tqdm's further positional arguments (``desc``, ``total``, ...).
        disable: No bar (the loop still runs).
        **kwargs: tqdm's keyword arguments (``desc``, ``total``, ``leave``, ``unit``...).

    Returns:
        A ``tqdm`` object (iterate over it, or ``update``/``set_postfix``/``close`` it).
    """
    sink = _sink()
    if sink is not None:
        from tqdm.std import tqdm as text_tqdm

        # Text for log lines: no bar graphic, just "desc: 40%|| 2/5 [00:03<00:04, 1.5it/s]".
        kwargs.update(file=sink, mininterval=FILE_MININTERVAL_S, ascii=True, bar_format="{l_bar}{r_bar}")
        return text_tqdm(iterable, *args, disable=disable, **kwargs)
    from tqdm.auto import tqdm as auto_tqdm

    return auto_tqdm(iterable, *args, disable=disable or _env_disabled(), **kwargs)


def write(message: str) -> None:
    """A log line beside the bars (``tqdm.write``): to the progress file when it is set."""
    sink = _sink()
    if sink is not None:
        with _lock:
            sink.write(message.rstrip("\n") + "\n")
            sink.flush()
        return
    from tqdm.auto import tqdm as auto_tqdm

    auto_tqdm.write(message)


def tqdm(iterable: Any = None, *args: Any, **kwargs: Any) -> Any:
    """Drop-in for ``tqdm.auto.tqdm`` (``from iavutils.core.progress import tqdm``); see :func:`progress_bar`."""
    return progress_bar(iterable, *args, **kwargs)


tqdm.write = write  # type: ignore[attr-defined]
