"""Rehearse the real path (hub ViT-B/16 presets on CIFAR-10) end to end, offline, on a CPU.

Usage::

    python -m iavutils.publish.rehearsal [--presets real|beit,deit|...] [--workdir DIR] [--keep]
    make rehearse                       # the four real presets
    make rehearse PRESETS=beit,deit     # a subset

The real presets download their weights from the model hub and CIFAR-10 from its site; neither
can be reached from a test machine, and a run on a GPU is too expensive to be the first time a
chapter meets a mask-less dataset or a 14×14 grid. This module makes, in a temporary folder and
deterministically from a seed (:mod:`iavutils.publish.rehearsal_hub`,
:mod:`iavutils.publish.rehearsal_cifar`):

* a Hugging Face cache (``HF_HOME``) in the layout ``huggingface_hub`` writes
  (``hub/models--ORG--NAME/{blobs,refs/main,snapshots/<commit>/}``) holding, for each requested
  real preset, random weights of the real shapes in the files the real repositories hold:
  timm's ``model.safetensors`` for ``dino``, ``deit`` and ``in21k``, and Microsoft's
  ``config.json`` + ``pytorch_model.bin`` (``BeitForMaskedImageModeling`` keys, shared relative
  position bias, mask token, MIM head) for ``beit``;
* CIFAR-10 in the official python format — ``cifar-10-batches-py/`` (``data_batch_1..5``,
  ``test_batch``, ``batches.meta``, pickled the way the Python 2 originals are) and the
  ``cifar-10-python.tar.gz`` archive — with a few dozen images;

then executes every chapter notebook for each preset at smoke scale (:data:`SMOKE_PARAMETERS`:
one epoch on a few dozen images, 4 analysed images, 2 SmoothGrad samples) with
``HF_HUB_OFFLINE=1`` and ``IAV_DATA`` / ``IAV_RUN_DIR`` / ``HF_HOME`` in the temporary folder,
through the book's own runner (:func:`iavutils.publish.runner.run_notebooks`). Presets share one run
directory; with several presets a last pass runs every notebook for all of them together, as
``PRESETS=real make book`` does (comparison chapters, the separability test), mostly from the
cached results of the per-preset passes. The book is built from that last pass
(:func:`iavutils.publish.book.build_book`) on a copy of the book sources. The exit status is non-zero
on the first failure, which is named (notebook, cell, error); per-notebook times are printed
per pass.

Nothing generated here is committed: the weights are random (the numbers in the pages mean
nothing), only the code paths, file formats and shapes are real.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .rehearsal_cifar import write_cifar10
from .rehearsal_hub import make_hub_cache

__all__ = [
    "SMOKE_PARAMETERS",
    "RehearsalResult",
    "first_failure",
    "rehearse",
    "main",
]

#: Notebook parameters of the smoke run (each notebook gets those it declares). Small enough for
#: a ViT-B/16 at 224 px on two CPU cores, large enough for every code path (two checkpoints,
#: several images per analysis, both classes of every split statistic).
SMOKE_PARAMETERS: dict[str, Any] = {
    "epochs": 1,  # finetuning: checkpoints 0 and 1
    "max_train": 32,  # finetuning images
    "num_images": 4,  # analysed held-out images
    "n_samples": 2,  # SmoothGrad samples
    "num_eval": 2,  # images for the accuracies under shift (01)
    "epoch_stride": 1,  # both checkpoints analysed (02, 04, 05, 11)
    "n_examples": 2,  # images shown with every model's maps (08)
    "ablation_images": 1,  # images each head ablation is measured on (10)
    "ablation_subsets": 1,  # head subsets per control group of the ablation (10)
    "perturbation_steps": 1,  # removed fractions of the perturbation curves: 50 % only (08)
    "num_permutations": 100,  # Monte Carlo permutations (11)
    "perplexity": 2.0,  # t-SNE perplexity (07; capped by the image count anyway)
    "device": "cpu",
}


# ============================================================================================
# the rehearsal


@dataclass
class RehearsalResult:
    """What a rehearsal did.

    Attributes:
        workdir: The temporary folder (hub cache, data, runs, book copy, site).
        times: Pass (a preset, then ``"all"`` with several presets) -> notebook -> seconds.
        failure: The first failure, one line (empty when everything ran).
        build_status: Exit status of the book build (``None``: not built).
        pages: Chapter pages of the built site (file names).
        setup_seconds: Generating the hub cache and CIFAR-10.
        build_seconds: Building the book.
    """

    workdir: Path
    times: dict[str, dict[str, float]] = field(default_factory=dict)
    failure: str = ""
    build_status: int | None = None
    pages: list[str] = field(default_factory=list)
    setup_seconds: float = 0.0
    build_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every notebook ran and the book built."""
        return not self.failure and self.build_status == 0


def _set_environment(values: Mapping[str, str | None]) -> None:
    """Sets environment variables; ``None`` removes one (so unset ones are restored as unset)."""
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def _environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Sets (or, for ``None``, removes) environment variables; restores them afterwards."""
    old = {k: os.environ.get(k) for k in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(old)


def first_failure(nb_path: str | os.PathLike, name: str) -> str:
    """One line naming an executed notebook's first failing cell and its error."""
    try:
        nb = json.loads(Path(nb_path).read_text())
    except (OSError, ValueError):
        return f"{name}: no output notebook"
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                src = cell.get("source", "")
                src = src if isinstance(src, str) else "".join(src)
                first = next((ln.strip() for ln in src.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
                return (f"{name}, cell {i} (In [{cell.get('execution_count')}]: {first[:80]}): "
                        f"{out.get('ename')}: {str(out.get('evalue'))[:300]}")
    return ""


def _copy_book_sources(root: Path) -> Path:
    from .notebook_files import BOOK_DIR, REPO

    shutil.copy2(REPO / "_config.yml", root / "_config.yml")
    book = root / "book"
    shutil.copytree(BOOK_DIR, book, ignore=shutil.ignore_patterns("generated", "_build", "_vendor", ".ipynb_checkpoints"),
                    dirs_exist_ok=True)  # a rerun in the same work folder
    return book


def _print_table(times: Mapping[str, Mapping[str, float]]) -> None:
    presets = list(times)
    names = sorted({n for t in times.values() for n in t})
    print("\nrehearsal wall times (s):")
    print(f"  {'notebook':<32s}" + "".join(f"{p:>10s}" for p in presets))
    for n in names:
        print(f"  {n:<32s}" + "".join(f"{times[p].get(n, float('nan')):10.1f}" for p in presets))
    print(f"  {'total':<32s}" + "".join(f"{sum(times[p].values()):10.1f}" for p in presets), flush=True)


def rehearse(
    presets: Sequence[str],
    workdir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    parameters: Mapping[str, Any] | None = None,
    only: Sequence[str] | None = None,
    build: bool = True,
    progress: bool = False,
) -> RehearsalResult:
    """Generates the offline world, runs every notebook per preset, builds the book.

    Args:
        presets: Presets, in order (each runs every notebook; the run directory is shared; with
            several, a last pass runs every notebook for all of them, from the cached results).
        workdir: Where everything goes (created; default: a new temporary folder, kept).
        seed: Seeds the weights and the images.
        parameters: Overrides of :data:`SMOKE_PARAMETERS`.
        only: Notebooks to run (names or prefixes, as ``python -m iavutils.publish.book run --only``).
        build: Build the book after the last preset.
        progress: papermill's per-cell progress bar.

    Returns:
        :class:`RehearsalResult`; it stops at the first preset with a failing notebook.
    """
    from . import book, runner

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="iav-rehearsal-"))
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    result = RehearsalResult(workdir=root)
    t0 = time.perf_counter()
    hf_home, data, run_dir = root / "hf", root / "data", root / "runs"
    print(f"rehearsal in {root}", flush=True)
    snapshots = make_hub_cache(hf_home, presets, seed=seed)
    for p, snap in snapshots.items():
        print(f"  hub cache: {p:<6s} {snap.relative_to(root)}", flush=True)
    # The archive only, where the README tells users to put it: the first chapter extracts it.
    write_cifar10(data, seed=seed, folder=False, archive=True)
    print(f"  CIFAR-10: {data / 'cifar-10-python.tar.gz'}", flush=True)
    book_dir = _copy_book_sources(root)
    result.setup_seconds = time.perf_counter() - t0

    env = {
        "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HUGGINGFACE_HUB_CACHE": None,
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
        "IAV_DATA": str(data), "IAV_RUN_DIR": str(run_dir), "TORCH_HOME": str(root / "torch"),
    }
    notebooks = runner.list_notebooks(only)
    with _environment(env):
        # One pass per preset (its own cost, per notebook), then, with several presets, one pass
        # over all of them as `PRESETS=real make book` runs them: the comparison chapters and
        # the separability test with every model, from the cached results of the first passes.
        passes = [(p, p) for p in presets] + ([("all", ",".join(presets))] if len(presets) > 1 else [])
        for name, model in passes:
            params = runner.default_parameters(model.split(","), run_dir)
            params["dataset"] = "cifar10"
            params.update(SMOKE_PARAMETERS)
            params.update(parameters or {})
            print(f"\n=== {name} ({model}): {len(notebooks)} notebooks", flush=True)
            results = runner.run_notebooks(notebooks, params, book_dir, progress=progress)
            # the intro includes the record of which run produced the pages, as after `make book`
            book.write_run_record(book_dir, results, params)
            result.times[name] = {r.name: round(r.seconds, 1) for r in results}
            for r in results:
                if not r.ok:
                    found = first_failure(book_dir / "generated" / f"{r.name}.ipynb", r.name)
                    result.failure = f"{name}: " + (found or f"{r.name}: {r.error}")
                    break
            if result.failure:
                break
    _print_table(result.times)
    if result.failure:
        print(f"\nREHEARSAL FAILED at {result.failure}", file=sys.stderr, flush=True)
        return result
    if build:
        t1 = time.perf_counter()
        result.build_status = book.build_book(book_dir)
        result.build_seconds = time.perf_counter() - t1
        html = book.site_dir(book_dir) / "generated"
        result.pages = sorted(p.name for p in html.glob("*.html")) if html.is_dir() else []
        missing = [nb.stem for nb in notebooks if f"{nb.stem}.html" not in result.pages]
        if result.build_status != 0 or missing:
            result.failure = (f"book build: exit {result.build_status}"
                              + (f", no page for {', '.join(missing)}" if missing else ""))
            print(f"\nREHEARSAL FAILED at {result.failure}", file=sys.stderr, flush=True)
    (root / "rehearsal.json").write_text(json.dumps({
        "presets": list(presets), "times": result.times, "failure": result.failure,
        "build_status": result.build_status, "build_seconds": round(result.build_seconds, 1),
        "setup_seconds": round(result.setup_seconds, 1), "pages": result.pages}, indent=2))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    from .runner import expand_presets

    ap = argparse.ArgumentParser(prog="python -m iavutils.publish.rehearsal", description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="real", help="real | comma-separated presets (default: real)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="folder for the hub cache, data, runs and book (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder after a successful run")
    ap.add_argument("--only", nargs="+", metavar="NB", help="run only these notebooks (name or prefix)")
    ap.add_argument("--no-build", action="store_true", help="do not build the book")
    ap.add_argument("--seed", type=int, default=0, help="seeds the generated weights and images")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a smoke parameter (YAML value), repeatable")
    args = ap.parse_args(argv)
    from .book import _parse_value

    overrides = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"-p expects KEY=VALUE, got {item!r}")
        overrides[key] = _parse_value(value)
    t0 = time.perf_counter()
    res = rehearse(expand_presets(args.presets), args.workdir, seed=args.seed, parameters=overrides,
                   only=args.only, build=not args.no_build and not args.only)
    total = time.perf_counter() - t0
    print(f"\nrehearsal: setup {res.setup_seconds:.1f} s, notebooks "
          f"{sum(sum(t.values()) for t in res.times.values()):.1f} s, build {res.build_seconds:.1f} s, "
          f"total {total:.1f} s", flush=True)
    if res.failure:
        print(f"work folder kept for inspection: {res.workdir}", file=sys.stderr)
        return 1
    print(f"rehearsal passed: {', '.join(res.times)}; every notebook executed"
          + ("" if args.no_build or args.only else f", book built with {len(res.pages)} chapter pages"))
    if args.workdir is None and not args.keep:
        shutil.rmtree(res.workdir, ignore_errors=True)
    else:
        print(f"work folder: {res.workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
