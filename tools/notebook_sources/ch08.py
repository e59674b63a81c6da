"""Notebook 08_gmar: Do the explanations explain? GMAR, rollout and their rivals."""

from __future__ import annotations

import nbformat

from .cells import TQDM_IMPORT, code, md, notebook, raw_parameters, setup

NAME = "08_gmar"


def build() -> nbformat.NotebookNode:
    return notebook([
        md(r'''
# Do the explanations explain? GMAR, rollout and their rivals

The GMAR paper claims that weighting each head by the gradient of the class logit before
rolling the attention out (**GMAR**) explains a ViT better than plain **attention rollout**.
The IAV paper (its Fig. 5) asks the older question of whether an attention map points at what
the decision depends on at all. This chapter makes both measurable, with the same images,
classes and protocol for every method and model.

**Maps** (one per image, for the class being explained; patch maps over the $P$ patches, or
pixel maps):

| method | definition |
|---|---|
| `attention` | class-token attention of the **last** layer, mean of its heads |
| `attention_mean` | class-token attention averaged over **all** heads of all layers (the IAV paper's "Attention-Mean") |
| `rollout` | Abnar & Zuidema: $\hat A_l = \tfrac12\,\mathrm{mean}_h A_l + \tfrac12 I$, rows renormalised, $R = \hat A_L\cdots\hat A_1$, class-token row |
| `gmar_l1`, `gmar_l2` | GMAR (paper equations): $w_{l,h} = g_{l,h}/\sum_h g_{l,h}$ with $g_{l,h} = \lVert\partial y_c/\partial A_{l,h}\rVert_{1\text{ or }2}$, rollout of $\sum_h w_{l,h}A_{l,h}$ |
| `gradient_rollout` | Chefer et al. (ICCV 2021): $R \leftarrow R + \mathrm{mean}_h\big((\nabla A\odot A)^+\big)R$ |
| `gradcam` | GradCAM on the last block's `norm1` patch tokens, ReLU |
| `smoothgrad` | SmoothGrad pixel map (`smoothgrad_patch`: its patch means) |
| `random` | uniform noise (a seeded random ordering) |

**Protocols** (Chefer et al., CVPR 2021). *Perturbation*: the top-$k$% pixels of the map,
upsampled bilinearly to the input, are set to black in $[0,1]$ pixel space and the image is
re-normalised; top-1 accuracy against the label for the removed fractions set by `perturbation_steps`;
AUC = trapezoid over the removed fraction (clean accuracy at 0) $\times 100$. **Positive** removes the most
relevant pixels first: a faithful map makes accuracy collapse, **lower is better**.
**Negative** removes the least relevant first: **higher is better**. Ties are broken by a
seeded random permutation, so an all-equal map *is* the random baseline. *Patch masking*
(the IAV paper's Fig. 5) blacks out whole patches ranked by a patch score. *Localization*
against the embedded dataset's ground-truth object masks: maps upsampled, min-max normalised
and thresholded at their mean → pixel accuracy and 2-class (object/background) mIoU; average
precision of the soft map (mAP); pointing game (the map's maximum lies on the object).
'''),
        raw_parameters('''
# Parameters (papermill: -p name value)
model = "tiny-mim,tiny-dino,tiny-sup,tiny-sup21k"  # a preset, comma-separated presets, tiny, real, or all (every model finetuned in the run)
run_dir = ""  # empty: $IAV_RUN_DIR if set, else <repository>/runs (from the package, not the cwd)
dataset = "auto"  # auto: embedded for the tiny presets, cifar10 otherwise
num_images = 64  # held-out images evaluated (the same seeded subset for every model)
n_samples = 25  # SmoothGrad noisy copies per image
noise_level = 0.15  # SmoothGrad noise, as a fraction of the image's value range
device = "auto"  # auto: CUDA if available, else CPU
seed = 0  # image subset, SmoothGrad noise, random map and tie-breaking
finetune = "auto"  # missing finetuning: auto finetunes tiny presets here and stops for hub presets with the command to run; True finetunes here; False stops
target = "label"  # class every method explains: label (ground truth) or predicted
tol = None  # None: n_samples per image; a number (e.g. 0.005): antithetic noise until every head's global-IAV is within tol
n_examples = 3  # images shown with every model's maps
perturbation_steps = 9  # removed fractions k/(steps+1) for k from 1 to steps (9: 10 %, 20 %, ..., 90 %); fewer: faster
'''),
        setup("08_gmar", "explanation_report, explanations", publish="figures, plots", extra=TQDM_IMPORT + '''
from iavutils.core.metrics import perturbation_fractions'''),
        md(r'''
Every method explains the same class (`target`, by default the ground-truth label, as in
the other chapters) on the same `num_images` held-out images of the last checkpoint.
SmoothGrad is the book's cached analysis of these images (shared with chapters 02–07); the
rest is computed here and cached in the run directory.
'''),
        code('''
fractions = perturbation_fractions(perturbation_steps)
results = {p: explanations.run_explanation_eval(study, p, fractions=fractions) for p in tqdm(models, desc="models")}
table = explanations.explanation_table(results)
order = explanation_report.method_order(table)
'''),
        md(r'''
## Perturbation AUCs

Pixel perturbation, positive (lower is better) and negative (higher is better), and the IAV
paper's patch masking (positive; lower is better). One column per model.
'''),
        code('''
figures.show_tables(explanation_report.auc_tables(table, models))
'''),
        code('''
fig = figures.perturbation_curves(explanation_report.perturbation_frame(results), models, order)
plt.show()
'''),
        code('''
fig = figures.auc_bars(table, models, order)
plt.show()
'''),
        md(r'''
## Localization against the object masks

Means over the images; all in $[0, 1]$, higher is better. A map that ignores the image (the
random one) sets the floor: its mIoU and pixel accuracy reflect only how large the objects
are.
'''),
        code('''
localization = explanation_report.localization_tables(table, models)
figures.show_tables(localization)
if localization:
    fig = figures.localization_bars(table, models, order)
    plt.show()
else:
    display(Markdown(explanation_report.NO_MASKS_LOCALIZATION.format(dataset=dataset)))
'''),
        md(r'''
## The maps side by side

The same images for every model (rows), every method (columns), min-max normalised per map;
the first two columns are the image and its ground-truth object mask.
'''),
        code('''
fig = figures.explanation_grid(results, dataset, models, order, n_examples, spec)
plt.show()
'''),
        md(r'''
## Does GMAR beat rollout here?

Per model, the AUC difference GMAR − rollout on the same images, with a 95% paired bootstrap
interval over images. "better" means the interval excludes zero in GMAR's favour (positive:
lower AUC; negative: higher AUC), "worse" the opposite, "no difference" when it contains 0.
'''),
        code('''
cmp = explanation_report.comparison_table(results)
display(cmp[["model", "method", "mode", "diff", "low", "high", "n_images", "verdict"]].round(2))
display(Markdown(explanation_report.gmar_verdict(cmp, table, len(models))))
'''),
        md(r'''
What limits this comparison: the tiny presets' small patch grids and few heads per layer
(GMAR's head weighting has little to choose from), `num_images` images (the intervals above show how much that
allows), one checkpoint per model, and pixel perturbation favours pixel maps (SmoothGrad)
over patch maps that are upsampled. Clean accuracy (the curves' value at 0) bounds every AUC
from above: a weak classifier leaves little room between a good map and the random one. The
MIM preset is timm's `Beit`, which classifies from the **mean of the patch tokens**, not from
the class token (like the real BEiT): its class-token attention, rollout and GMAR describe a
token the decision does not read, while gradient-based maps (gradient rollout, SmoothGrad)
still follow the decision. The published ViT-B/16 ImageNet numbers of Chefer et al. are not
comparable with these and are not quoted.
'''),
        md(r'''
## AAV with the ground-truth mask

The paper suggests the AAV with a segmentation map as future work: the IA-Score of each head
with the object mask instead of SmoothGrad, i.e. how much the class token attends to where the
object is, regardless of the decision. Mean over the heads of each layer and over images.
'''),
        code('''
aav = explanation_report.mask_aav_frame(results)
if len(aav):
    figures.show(*figures.mask_aav_lines(aav, models))
else:
    display(Markdown(explanation_report.NO_MASKS_AAV.format(dataset=dataset)))
'''),
    ])
