"""JupyterLab on the project's kernel, offline: ``make lab`` (= ``python -m iavutils.publish.lab``).

Usage::

    python -m iavutils.publish.lab [--no-browser] [--port N] [any other `jupyter lab` option]

Lab serves the repository (``notebooks/`` open in the file browser) and runs the notebooks on
the Python that runs this module, the project's ``.venv``: jupyter_client starts the
``python3`` kernel spec's ``python`` as the server's own interpreter, and the environment's
kernel specs are preferred to the user's (``JUPYTER_PREFER_ENV_PATH``). The notebooks find the
run directory from the repository, not the working directory
(:func:`iavutils.analysis.runs.resolve_run_dir`), so ``$IAV_RUN_DIR`` and ``runs/`` mean the same
here as for ``make book``.

Nothing leaves the machine: no news feed (nor the prompt asking to fetch it), no update check,
and an extension manager that does not query the package index. As root (containers, CI)
``--allow-root`` is added. The server prints its URL, with the access token, once it listens.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Default settings for this project's Lab (``overrides.json``): no "get Jupyter news?" prompt.
# A user's own settings still win over these defaults.
SETTINGS_DIR = REPO / "tools" / "lab"

# Each one turns off a request JupyterLab would otherwise make to the internet.
OFFLINE_OPTIONS: tuple[str, ...] = (
    "--LabApp.news_url=None",  # the announcements feed
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",  # the PyPI version check
    "--LabApp.extension_manager=readonly",  # lists installed extensions, never searches PyPI
)


def lab_command(root_dir: str | os.PathLike = REPO, extra_args: Sequence[str] = (),
                open_dir: str | None = "notebooks") -> list[str]:
    """The ``jupyter lab`` command line that ``make lab`` runs.

    Args:
        root_dir: the directory Lab serves (its file browser cannot leave it).
        extra_args: further ``jupyter lab`` options; later options win, so these can override
            any of the defaults (e.g. ``--ServerApp.open_browser=True``).
        open_dir: a folder under ``root_dir`` that the file browser opens in (``None``: the
            root). Ignored when it does not exist.

    Returns:
        The argv, starting with this interpreter (the kernel is the same Python).
    """
    root = Path(root_dir).resolve()
    argv = [sys.executable, "-m", "jupyterlab", *OFFLINE_OPTIONS, f"--ServerApp.root_dir={root}"]
    if (SETTINGS_DIR / "overrides.json").is_file():
        argv.append(f"--LabApp.app_settings_dir={SETTINGS_DIR}")
    if open_dir and (root / open_dir).is_dir():
        argv.append(f"--LabApp.default_url=/lab/tree/{open_dir}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")  # Jupyter refuses to run as root without it
    argv.extend(extra_args)
    return argv


def lab_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for :func:`lab_command`: the venv's kernel spec wins over the user's.

    Args:
        base: the environment to start from (``None``: ``os.environ``).

    Returns:
        A copy with ``JUPYTER_PREFER_ENV_PATH=1``.
    """
    env = dict(os.environ if base is None else base)
    env["JUPYTER_PREFER_ENV_PATH"] = "1"
    return env


def main(argv: Sequence[str] | None = None) -> None:
    """Replace this process with JupyterLab (Ctrl-C stops it, as with ``jupyter lab``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        print("Options are passed to `jupyter lab` (see `jupyter lab --help`).")
        return
    cmd = lab_command(REPO, args)
    print(f"JupyterLab on {sys.executable}, serving {REPO}; open the URL printed below "
          "(it carries the access token).", flush=True)
    os.execve(cmd[0], cmd, lab_env())


if __name__ == "__main__":
    main()
