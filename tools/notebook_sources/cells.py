"""The building blocks every notebook source uses: cells, the parameters cell, the setup cell.

A notebook is a title cell, a ``parameters`` cell (papermill), a setup cell, calls into the
chapter's modules of :mod:`iavutils.analysis` and figures of :mod:`iavutils.publish`, and
prose. The prose says what the paper claims and what to look for; the numbers it refers to are
printed by the cells above it, so the text stays honest for any run.
"""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

COMMON_PARAMETERS = '''\
model = "tiny-mim,tiny-dino,tiny-sup,tiny-sup21k"  # a preset, comma-separated presets, tiny, real, or all (every model finetuned in the run)
run_dir = ""  # empty: $IAV_RUN_DIR, else <repository>/runs
dataset = "auto"  # auto: embedded for the tiny presets, cifar10 otherwise
num_images = 64  # held-out images analysed (the same seeded subset for every model)
n_samples = 25  # SmoothGrad noisy copies per image
noise_level = 0.15  # SmoothGrad noise, as a fraction of the image's value range
device = "auto"  # auto: CUDA if available, else CPU
seed = 0  # image subset and SmoothGrad noise'''

ANALYSIS_EXTRA = '''
target = "label"  # class explained by SmoothGrad: label (ground truth) or predicted
tol = None  # None: n_samples per image; a number (e.g. 0.005): antithetic noise until every head's global-IAV is within tol'''

FINETUNE_PARAMETER = '''
finetune = "auto"  # missing finetuning: auto finetunes tiny presets here and stops for hub presets with the command to run; True finetunes here; False stops'''

# The parameters are checked and the finetuning looked up before the heavy imports (torch, timm,
# plotting): iavutils.analysis.parameters and iavutils.analysis.runs import none of them, so that a bad -p value or a
# missing finetuning fails within seconds, with a message saying what to do.
SETUP = '''\
from iavutils.analysis.parameters import {parameter_imports}
from iavutils.analysis.runs import {runs_import}
{study_import}
check_parameters(globals())  # every parameter above: a bad value stops here, naming what is accepted
{spec}{select}{study}

{imports}import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from iavutils.analysis import {modules}
from iavutils.publish import {publish}

plots.setup()
print(f"run directory: {{run}}\\ndataset: {{dataset}}\\nmodels: {{', '.join(models)}}")'''

#: The progress bars of a chapter's own loops (in a book run they go to the terminal, not into the page).
TQDM_IMPORT = "from iavutils.core.progress import tqdm  # in a book run, progress goes to the terminal, not into the page"

SPEC = '''\
spec = analysis_spec(globals())  # the analysis parameters as one AnalysisSpec (checked before any finetuning)
'''

# What every chapter call analyses: the models, their dataset, the run and the spec, as one value.
STUDY_IMPORT = "from iavutils.analysis.study import Study\n"
STUDY = "\nstudy = Study(models, dataset, run, spec)  # what every chapter call analyses"

SELECT_FINETUNED = '''\
models, dataset, run = finetuned_models(model, dataset, run_dir, finetune=finetune, device=device,
                                        notebook="{name}")'''

SELECT_ONLY = '''\
presets, dataset, run = select_models(model, dataset, run_dir)  # exactly the models named by `model`
models = presets'''

DEFINITIONS = '''\
**How these maps are computed.** For each model and checkpoint we analyse the same seeded
subset of `num_images` held-out images. SmoothGrad $\\varphi$ is the mean absolute input
gradient of the explained class's logit over `n_samples` noisy copies (noise
$\\sigma = $ `noise_level` $\\times$ the image's value range), averaged over colour channels; the
paper does not state $n$ and $\\sigma$, we use the IAV author's own SmoothGrad convention
($n = 25$, $0.15$). The explained class is the ground-truth label (`target="label"`), so every
checkpoint explains the same class. $A_{l,h}$ is the class token's attention row over the
patches. All of it is computed once per checkpoint and cached in the run directory, so the
chapters 02–07 share it.'''


def _printable(text: str) -> str:
    # A LaTeX command in a non-raw string loses its backslash to an escape (`\approx` -> BEL),
    # which MathJax then reports as "Math input error": refuse it here, at generation time.
    bad = sorted({hex(ord(ch)) for ch in text if ord(ch) < 32 and ch != "\n"})
    if bad:
        raise ValueError(f"control characters {bad} in a cell (write LaTeX in a raw string):\n{text[:200]}")
    return text


def md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(_printable(text.strip("\n")))


def code(text: str, tags: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    cell = new_code_cell(_printable(text.strip("\n")))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def raw_parameters(text: str) -> nbformat.NotebookNode:
    """A ``parameters`` cell written out in full (a chapter whose comments differ from the common ones)."""
    return code(text, tags=("parameters",))


def parameters(extra: str = "", analysis: bool = True, finetune: bool = True) -> nbformat.NotebookNode:
    text = ("# Parameters (papermill: -p name value)\n" + COMMON_PARAMETERS + (FINETUNE_PARAMETER if finetune else "")
            + (ANALYSIS_EXTRA if analysis else "") + extra)
    return code(text, tags=("parameters",))


def setup(
    name: str,
    modules: str,
    *,
    finetune: bool = True,
    spec: bool = True,
    pandas: bool = False,
    publish: str = "plots",
    extra: str = "",
) -> nbformat.NotebookNode:
    """The setup cell: check the parameters, build the spec, select the models, import the chapter's modules.

    Args:
        name: The notebook (for the finetuning message).
        modules: The ``iavutils.analysis`` modules the notebook calls (``"checkpoints, robustness"``).
        finetune: Finetune missing models (``finetuned_models``) or only select them (``select_models``).
        spec: Build ``spec`` from the parameters, and ``study`` (the models, dataset, run and
            spec: what every chapter call of :mod:`iavutils.analysis` takes).
        pandas: Import pandas as ``pd``.
        publish: The ``iavutils.publish`` modules (``plots`` always among them).
        extra: More import lines, after those of ``iavutils.publish``.
    """
    select = SELECT_FINETUNED.format(name=name) if finetune else SELECT_ONLY
    return code(SETUP.format(
        parameter_imports="analysis_spec, check_parameters" if spec else "check_parameters",
        runs_import="finetuned_models" if finetune else "select_models",
        spec=SPEC if spec else "", select=select, study_import=STUDY_IMPORT if spec else "",
        study=STUDY if spec else "", imports="import pandas as pd\n" if pandas else "",
        modules=modules, publish=publish + ("\n" + extra.strip("\n") if extra else ""),
    ))


def notebook(cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb
