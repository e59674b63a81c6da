"""Notebook 09_head_explorer: Head explorer: one image, layer by layer, head by head."""

from __future__ import annotations

import nbformat

from .cells import code, md, notebook, raw_parameters

NAME = "09_head_explorer"


def build() -> nbformat.NotebookNode:
    return notebook([
        md(r'''
# Head explorer: one image, layer by layer, head by head

The other chapters summarise IA-Scores over many images. This page shows where the numbers come
from, for one image at a time: move the **layer** and **head** sliders to see

1. that head's class-token attention over the image (what the head looks at),
2. the image's SmoothGrad map for its class (what the decision depends on, the same for every head),
3. the image's **IAV**, the IA-Score of every head, with the selected head outlined in red,

and the head's IA-Score, the cosine between (1) pooled per patch and (2), in the title. Every
model of the run is shown with the same sliders, so the same head can be compared across
pretraining types. Layers are numbered from 1 and heads from 0, as in the other chapters.

The sliders work in JupyterLab and in the published book, offline and opened from disk: every
view is pre-rendered and the sliders are linked in the browser (`jslink`), not through Python.
'''),
        raw_parameters('''
# Parameters (papermill): see ARCHITECTURE.md for the common ones.
model = "tiny"          # preset, comma-separated presets, tiny, real, or all (every model finetuned in the run)
run_dir = ""            # empty: $IAV_RUN_DIR if set, else <repository>/runs
dataset = "auto"        # auto: embedded for the tiny presets, cifar10 otherwise
num_images = 64         # common parameter; this page shows the images named by image_index
n_samples = 25          # SmoothGrad samples (IAV author's convention; not stated in the paper)
noise_level = 0.15      # SmoothGrad noise, fraction of the image's value range
device = "auto"         # auto: CUDA if available, else CPU
seed = 0                # SmoothGrad noise
finetune = "auto"      # missing finetuning: auto finetunes tiny presets here and stops for hub presets with the command to run; True finetunes here; False stops
image_index = 0         # image of the held-out split; several: comma-separated, 0,7,12
target = "label"        # class SmoothGrad explains: label (ground truth) or predicted
panel_px = 0            # height of each pre-rendered panel in pixels; 0: automatic (page size)
'''),
        code('''
from iavutils.analysis.parameters import analysis_spec, check_parameters
from iavutils.analysis.runs import finetuned_models

check_parameters(globals())  # every parameter above: a bad value stops here, naming what is accepted
spec = analysis_spec(globals())  # the analysis parameters as one AnalysisSpec, which every chapter call takes
models, dataset, run = finetuned_models(model, dataset, run_dir, finetune=finetune, device=device,
                                        notebook="09_head_explorer")

import matplotlib.pyplot as plt

from iavutils.publish import plots
from iavutils.publish.explorer import build_explorer, summary_figure, top_heads

plots.setup()
explorer, maps = build_explorer(",".join(models), run, dataset, image_index=image_index, spec=spec,
                                panel_px=panel_px, include_run_models=False)
'''),
        md(r'''
## The explorer

Drag a slider, or click its handle and use the arrow keys.
'''),
        code('''
explorer
'''),
        md(r'''
## Static overview

For print and for readers without JavaScript: per model, the image, its SmoothGrad map, the
attention of the head with the highest IA-Score (with its entropy), and the full IAV. Maps are
shown in multiples of their own mean (1 = uniform); the SmoothGrad panels share one colour
scale and the attention panels another, each with its colour bar, so a head that attends
almost uniformly looks flat instead of being stretched to the full colour range. (The
interactive explorer above still scales each head's map to its own range.)
'''),
        code('''
fig = summary_figure(maps)
plt.show()
'''),
        md(r'''
The heads that agree most with SmoothGrad on this image (IA-Score, highest first):
'''),
        code('''
top_heads(maps, k=3)
'''),
        md(r'''
## Reading it

- A head with a high IA-Score attends to the patches SmoothGrad marks as decisive; a low score
  means the head looks elsewhere (background, position, a fixed pattern) on this image.
- One image is an anecdote: whether a head is a *High-IA-Head* is decided by its median over
  many images (see the head-roles chapter).
- For BEiT-like models (`tiny-mim`, `beit`) the classifier reads the mean of the patch tokens,
  not the class token; the class-token row shown here is what that token gathers.
'''),
    ])
