"""Writes notebooks 00–07 (one per IAV paper section) with nbformat, outputs stripped.

Run from anywhere: ``python tools/make_notebooks.py``. Each notebook is a title cell, a
``parameters`` cell (papermill), a setup cell, calls into ``iavutils.analysis.experiments`` and
``iavutils.publish.plots``, and prose. The prose says what the paper claims and what to look for; the
numbers it refers to are printed by the cells above it, so the text stays honest for any run.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"

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
target = "label"  # class explained by SmoothGrad: label (ground truth) or predicted'''

FINETUNE_PARAMETER = '''
finetune = "auto"  # missing finetuning: auto finetunes tiny presets here and stops for hub presets with the command to run; True finetunes here; False stops'''

# The parameters are checked and the finetuning looked up before the heavy imports (torch, timm,
# plotting): iavutils.analysis.parameters and iavutils.analysis.runs import none of them, so that a bad -p value or a
# missing finetuning fails within seconds, with a message saying what to do.
SETUP = '''\
from iavutils.analysis.parameters import check_parameters
from iavutils.analysis.runs import {runs_import}

check_parameters(globals())  # every parameter above: a bad value stops here, naming what is accepted
{select}

import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from iavutils.analysis import experiments as ex
from iavutils.publish import plots

plots.setup()
{common}print(f"run directory: {{run}}\\ndataset: {{dataset}}\\nmodels: {{', '.join(models)}}")'''

SELECT_FINETUNED = '''\
# Exactly the models named by `model`; one without complete finetuning is finetuned here or
# stops with the command to run (parameter `finetune`).
models, dataset, run = finetuned_models(model, dataset, run_dir, finetune=finetune, device=device,
                                        notebook="{name}")'''

SELECT_ONLY = '''\
presets, dataset, run = select_models(model, dataset, run_dir)  # exactly the models named by `model`
models = presets'''

ANALYSIS_COMMON = '''\
common = dict(run_dir=run, num_images=num_images, n_samples=n_samples, noise_level=noise_level,
              seed=seed, target=target, device=device)
'''

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


def parameters(extra: str = "", analysis: bool = True, finetune: bool = True) -> nbformat.NotebookNode:
    text = ("# Parameters (papermill: -p name value)\n" + COMMON_PARAMETERS + (FINETUNE_PARAMETER if finetune else "")
            + (ANALYSIS_EXTRA if analysis else "") + extra)
    return code(text, tags=("parameters",))


def setup(name: str, analysis: bool = True, finetune: bool = True) -> nbformat.NotebookNode:
    select = SELECT_FINETUNED.format(name=name) if finetune else SELECT_ONLY
    return code(SETUP.format(runs_import="finetuned_models" if finetune else "select_models", select=select,
                             common=ANALYSIS_COMMON if analysis else ""))


def notebook(cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


# --------------------------------------------------------------------------------------------


def nb00() -> nbformat.NotebookNode:
    return notebook([
        md('''
# Finetuning the pretrained models (Fig. 3a)

The paper finetunes four ImageNet-pretrained ViT-B/16 models on CIFAR-10 — two
self-supervised (BEiT: masked image modelling; DINO: self-distillation) and two supervised
(DeiT: ImageNet-1k; ViT: ImageNet-21k) — with batch 768, learning rate $10^{-5}$, a cosine
schedule and 30 epochs, keeping a checkpoint per epoch. Its Fig. 3a plots the validation
accuracy per epoch: DINO reaches 98 %, the others about 97 %, so *generalization does not
separate the pretraining types*.

This chapter finetunes the models of the run with a checkpoint per epoch (epoch 0 is the
pretrained initialisation with its new, randomly initialised classifier head). The embedded
tiny presets use a CPU-sized recipe on the embedded 10-class dataset; the real presets the
paper's recipe on CIFAR-10. Finetuning resumes where it stopped and is skipped when every
epoch is already there.
'''),
        parameters('''
epochs = None  # None: the recipe's number of epochs (tiny: 4, paper: 30)
max_train = None  # None: every training image; a number trains on the first max_train only
recipe = ""  # empty: tiny for embedded presets, paper otherwise''', analysis=False, finetune=False),
        setup("00_finetune", analysis=False, finetune=False),
        code('''
for p in presets:
    ex.ensure_finetuned(p, dataset, run, recipe=recipe or None, epochs=epochs, max_train=max_train, device=device)
display(ex.run_summary(models, dataset, run))
'''),
        md('''
## Validation accuracy per epoch (paper Fig. 3a)
'''),
        code('''
history = ex.training_history(models, dataset, run)
fig = plots.accuracy_curves(history)
plt.show()
'''),
        md('''
**Reading the figure.** In the paper all four models end within about one point of each other
(DINO 98 %, the others ≈ 97 %), so accuracy alone says nothing about the pretraining type.
The tiny presets are far weaker in absolute terms: they were pretrained for a few hundred
steps on small generated datasets, and the CPU recipe finetunes them for a few epochs, so
they end around 35–45 % on the 10 embedded classes (chance: 10 %; see the table). When this
chapter was written, the default embedded run ended with the masked-image-modelling model a
few points below the other three, and the two supervised models and the DINO-like model
within about two points of each other — like the paper, accuracy does not sort the models by
pretraining type, but at a very different accuracy level, which limits how far the later
chapters can mirror the paper's ViT-B/16 results.
'''),
    ])


def nb01() -> nbformat.NotebookNode:
    return notebook([
        md('''
# Generalization and robustness (Fig. 3b–d)

The paper evaluates the last checkpoint of each finetuned model on the validation set and on
two kinds of distribution shift: (b) Gaussian blur of increasing degree and jigsaw puzzles
that swap image tiles, with (c) a 2×2 grid and (d) a grid equal to the ViT's patch grid
(14×14 for ViT-B/16), the number of swaps on the x axis. DeiT drops fastest, DINO is the most
robust, ImageNet-21k behaves like the self-supervised models: the paper concludes that
*robustness comes with the amount of pretraining data, not with the pretraining type*.

Here the blur is applied in [0,1] pixel space and the image re-normalised; the jigsaw tiles
of the patch-grid variant are exactly the model's patches (grid read from the model). Jigsaw
randomness is seeded and identical for every model.
'''),
        parameters('''
num_eval = 500  # held-out images for the accuracies under shift; 0: the whole split''', analysis=False),
        setup("01_generalization_robustness", analysis=False),
        md('''
## Accuracy of the last checkpoint
'''),
        code('''
# Clean accuracy on the whole held-out split(s).
display(ex.accuracy_table(models, dataset, run_dir=run, seed=seed, device=device).round(1))
'''),
        md('''
## Accuracy under distribution shift (paper Fig. 3b–d)
'''),
        code('''
robust = ex.robustness_curves(models, dataset, run_dir=run, num_eval=num_eval, seed=seed, device=device)
fig = plots.robustness_curves(robust)
plt.show()
'''),
        code('''
# Accuracy lost at the strongest shift of each kind (percentage points), with the pretraining type.
worst = robust.loc[robust.groupby(["model", "shift"])["level"].idxmax()].set_index(["model", "shift"])["accuracy"]
clean = robust[robust["level"] == 0].groupby(["model", "shift"])["accuracy"].first()
drop = (clean - worst).unstack("shift").round(1)
drop.insert(0, "pretraining", [ex.pretraining(m) for m in drop.index])
display(drop)
for shift in [c for c in drop.columns if c != "pretraining"]:
    display(Markdown(ex.pretraining_contrast(drop[shift].to_dict(), "self-supervised lower",
                                             f"accuracy lost under the strongest {shift} (points)", ".1f",
                                             source="naive expectation (the paper finds no separation)")))
'''),
        md('''
**Reading the figures.** The paper's point is a negative one: neither clean accuracy nor
robustness sorts the models by pretraining type (supervised ImageNet-21k is as robust as the
self-supervised models; DeiT is the outlier). The sentences above test the naive opposite
expectation — self-supervised models lose less — shift by shift. When this chapter was
written, the default embedded run agreed with the paper's negative conclusion in the sense
that the shifts disagree with each other: under blur the two self-supervised tiny models lost
*more* accuracy than the supervised ones, while under both jigsaw puzzles the supervised ones
lost more, with the small-source supervised model (≈ DeiT) the least robust to jigsaw — the
one detail that matches the paper's DeiT. The jigsaw on the patch grid only permutes patches,
which a ViT sees as a change of position embeddings. All drops are a few points on
~40 %-accurate models, so differences of 1–2 points are within the noise of 500 images.
'''),
    ])


def nb02() -> nbformat.NotebookNode:
    return notebook([
        md('''
# Training dynamics of attribution and attention (Fig. 4)

How much do the input attribution and the attention maps move while a model is finetuned?
The paper compares each checkpoint $t$ with the final one $T$: (a) the SmoothGrad maps
$\\lVert\\varphi_t - \\varphi_T\\rVert$ and (b) the attention maps averaged over all layers
$\\lVert A_t - A_T\\rVert$. The supervised models (DeiT, ImageNet-21k) change about twice as
much (≈ 0.05) as the self-supervised ones (≈ 0.02): *unsupervised pretraining leaves the
attention more stable during finetuning*.

**Our distance.** The paper does not define the norm. We scale every map to unit L2 norm (as
the IA-Score does) and take the L2 distance, averaged over the images:
$d_\\varphi(t) = \\frac1N\\sum_i \\lVert \\hat\\varphi_t(x_i) - \\hat\\varphi_T(x_i)\\rVert_2$ over
the pixels of the SmoothGrad map, and for attention the same distance between each head's
class-token row over the patches, averaged over all $L \\cdot H$ heads and the images. It lies
in $[0, \\sqrt2]$, is 0 for identical maps and ignores the maps' scale, so absolute values are
not comparable with the paper's (unstated) normalisation, only the ordering of the models is.
'''),
        parameters('''
epoch_stride = 2  # analyse every epoch_stride-th checkpoint (the last one always)'''),
        setup("02_training_dynamics"),
        md(DEFINITIONS),
        code('''
dynamics = ex.training_dynamics(models, dataset, stride=epoch_stride, **common)
fig = plots.training_dynamics(dynamics)
plt.show()
'''),
        code('''
# Distance of the first analysed checkpoint (the pretrained initialisation) to the last one.
first = dynamics.loc[dynamics.groupby("model")["epoch"].idxmin()]
display(ex.with_pretraining(first[["model", "epoch", "phi_distance", "attention_distance"]]).round(3))
for col, what in (("phi_distance", "SmoothGrad distance initialisation → final"),
                  ("attention_distance", "attention distance initialisation → final")):
    display(Markdown(ex.pretraining_contrast(dict(zip(first["model"], first[col])), "self-supervised lower", what)))
'''),
        md(r'''
**Reading the figure.** The paper's claim holds in a run if both curves of the two
self-supervised models lie below those of the two supervised models; the sentences above test
it on the distance of the pretrained initialisation to the final model (the largest and most
robust number of each curve). When this chapter was written, the default embedded run did
**not** reproduce the claim: the DINO-like model moved the most (its pretrained class-token
attention is almost uniform — entropy close to $\log P$, see chapter 04 — so finetuning has
to create all the structure), the MIM model the least, and the two supervised models in
between. The tiny recipe also differs from the paper's in a way that matters here: a few
epochs at a learning rate 50× larger than the paper's $10^{-5}$ move every model far from its
initialisation.
'''),
    ])


def nb03() -> nbformat.NotebookNode:
    return notebook([
        md('''
# Input disturbance: do attention maps point at what matters? (Fig. 5)

If a map shows the regions the decision depends on, masking those regions first should hurt
accuracy most. The paper masks a growing fraction (0.1 … 0.9) of the patches of validation
images, ranked by four orderings, and plots accuracy against the masking ratio. Only DINO's
attention hurts as much as SmoothGrad; for the other models SmoothGrad is clearly more
damaging, so *attention alone does not explain the decision* — and as BEiT's Attention-Mean
differs from DINO's, the effect does not separate the pretraining types either.

**Our orderings** (the paper does not define "Attention" precisely): `attention` = the last
layer's class-token attention averaged over its heads; `attention-mean` = the class-token
attention averaged over all heads of all layers (the paper's "Attention-Mean");
`smoothgrad` = SmoothGrad averaged inside each patch; `random` = a seeded random order. The
most relevant patches are set to black in pixel space first; accuracy is against the label,
last checkpoint, the same images as the other chapters.
'''),
        parameters(),
        setup("03_input_disturbance"),
        code('''
masking = ex.masking_curves(models, dataset, **common)
fig = plots.masking_curves(masking)
plt.show()
'''),
        code('''
# Mean accuracy over the masking ratios 10–90 % (lower = the ordering finds more important patches).
auc = masking[masking["ratio"] > 0].pivot_table(index="model", columns="method", values="accuracy").round(1)
auc = auc[[m for m in ex.MASK_METHODS if m in auc]]
auc.insert(0, "pretraining", [ex.pretraining(m) for m in auc.index])
display(auc)
gap = (auc["attention"] - auc["smoothgrad"]).sort_values()
display(Markdown(
    "Mean accuracy with attention ordering minus with SmoothGrad ordering (points; 0 = attention as damaging as "
    "SmoothGrad, positive = SmoothGrad more damaging): " + ", ".join(f"{m} {v:+.1f}" for m, v in gap.items())
    + f". Closest to SmoothGrad: **{gap.abs().idxmin()}** (paper: DINO)."))
'''),
        md('''
**Reading the figure.** In the table, an ordering that finds the decisive patches has a low
mean accuracy; `random` is the baseline. The paper's finding is that SmoothGrad is the most
damaging ordering for every model but DINO, whose attention is about as damaging. When this
chapter was written, the embedded world could **not** test this: for every tiny model the
accuracy falls to about chance (10 %) as soon as 10 % of the patches are black, whatever the
ordering, random included — the tiny models never saw black squares during training and read
them as image content. The differences between orderings are then a few images out of
`num_images`, i.e. noise. A fairer test for these models would mask with the image mean or
blur (not the paper's protocol, so not done here).
'''),
    ])


def nb04() -> nbformat.NotebookNode:
    return notebook([
        md('''
# Global receptive field: attention entropy (Fig. 6)

How spread out is each head's attention? The paper measures the entropy
$H(A) = -\\sum_p A(p)\\log A(p)$ of a head's class-token attention over the patches, averaged
over images. (a) Over finetuning, the heads of supervised models tend to increase their
entropy and those of self-supervised models to decrease it; the final entropies do not
separate the types (DINO and ImageNet-21k are alike in layers 1–11). (b) In the last layer the
self-supervised models have high entropy with low variance, DeiT low entropy; ImageNet-21k has
some heads like DINO — so *entropy does not cleanly separate the pretraining types*, and it
ignores how large the object is.

We renormalise the class-token row over the patches to sum 1 before taking the entropy (in
nats); the maximum $\\log P$ is uniform attention over the $P$ patches.
'''),
        parameters('''
epoch_stride = 2  # analyse every epoch_stride-th checkpoint (the last one always)'''),
        setup("04_global_receptive_field"),
        md(DEFINITIONS),
        md('''
## Entropy per head over finetuning (paper Fig. 6a)

Heads are sorted within each layer by decreasing entropy; darker lines are later epochs.
'''),
        code('''
entropy = ex.entropy_over_epochs(models, dataset, stride=epoch_stride, **common)
max_entropy = ex.max_entropy(models[0])  # log P nats: uniform attention over the patches
fig = plots.head_profiles(entropy, value="entropy", ylabel="attention entropy (nats)",
                          title="Mean attention entropy per head; darker = later epoch", ylim=(0, max_entropy * 1.02))
plt.show()
'''),
        code('''
# Mean entropy over heads, first vs last analysed epoch, and the change (positive = more spread out).
e0 = entropy[entropy.groupby("model")["epoch"].transform("min") == entropy["epoch"]].groupby("model")["entropy"].mean()
e1 = entropy[entropy.groupby("model")["epoch"].transform("max") == entropy["epoch"]].groupby("model")["entropy"].mean()
trend = ex.with_pretraining(pd.DataFrame({"model": e0.index, "first epoch": e0.values, "last epoch": e1.values}))
trend["change"] = trend["last epoch"] - trend["first epoch"]
display(trend.round(3))
display(Markdown(ex.pretraining_contrast(dict(zip(trend["model"], trend["change"])), "self-supervised lower",
                                         "change of the mean entropy over finetuning (nats)")))
'''),
        md('''
## Entropy of the last layer's heads over images (paper Fig. 6b)
'''),
        code('''
last = ex.last_layer_entropy(models, dataset, **common)
fig = plots.entropy_boxes(last, max_entropy=max_entropy)
plt.show()
stats = last.groupby("model", sort=False)["entropy"].describe()[["mean", "std", "min", "max"]]
display(stats.round(3))
display(Markdown(ex.pretraining_contrast(stats["mean"].to_dict(), "self-supervised higher",
                                         "mean entropy of the last layer (nats)")))
'''),
        md(r'''
**Reading the figures.** The paper's dynamics claim is the sign of the change: up for
supervised, down for self-supervised models (the `change` column). Its last-layer claim is
that the self-supervised models' boxes sit high with little spread and DeiT's low. Our tiny
world keeps 64 patches per image, so $\log P = \log 64 \approx 4.16$ nats is the ceiling.
When this chapter was written, the default embedded run showed the entropy *decreasing* for
all four models (most for the DINO-like model, whose pretrained attention is almost uniform),
so the self-supervised models decrease more on average but the supervised ones do not
increase; and the last-layer entropies did not separate the types — which agrees with the
paper's own conclusion that entropy is not a property of the pretraining type.
'''),
    ])


def nb05() -> nbformat.NotebookNode:
    return notebook([
        md('''
# global-IAV and global-AAV (Figs. 2 and 7)

The **IA-Score** of head $h$ in layer $l$ is the cosine between its class-token attention over
the patches and the input attribution averaged per patch,
$s^c_{l,h}(x) = \\cos(\\varphi^c_P(x), A_{l,h}(x))$; the **IAV** collects the $L\\cdot H$ scores of
an image (paper Fig. 2) and the **global-IAV** averages them over images. The **AAV** is the
same with any input-sized map instead of $\\varphi$.

The paper's Fig. 7 plots, over the finetuning epochs (darker = later) and with the heads of a
layer sorted by decreasing score: (a) the global-IAV — the self-supervised models keep high
scores after the 6th layer while the supervised models' scores *decrease* in the later
layers and over training; (b) the global-AAV with the final DINO model's SmoothGrad — the
supervised models drop even more. **This is the paper's main claim: the global-IAV trend
separates the pretraining types.**

Here the AAV reference is the run's DINO-like model (`aav_reference`), on the same images;
the embedded dataset also has ground-truth object masks, which give a second AAV (the
"segmentation map" AAV the paper suggests).
'''),
        parameters('''
epoch_stride = 2  # analyse every epoch_stride-th checkpoint (the last one always)
aav_reference = "auto"  # preset whose last-checkpoint SmoothGrad is the AAV map (auto: the DINO-like one)
example = 0  # which analysed image Fig. 2 shows'''),
        setup("05_global_iav"),
        md(DEFINITIONS),
        md('''
## One image through every head (paper Fig. 2)

For one image: the image, each model's SmoothGrad, the attention map of every head of the
first, middle and last layer (titled with its IA-Score) and the image's whole IAV.
'''),
        code('''
examples = [ex.example_maps(p, dataset, sample=example, **common) for p in models]
fig = plots.example_maps(examples, classes=ex.class_names(dataset))
plt.show()
'''),
        md('''
## global-IAV and global-AAV over finetuning (paper Fig. 7)
'''),
        code('''
scores = ex.global_scores_over_epochs(models, dataset, stride=epoch_stride, aav_reference=aav_reference, **common)
uniform = ex.uniform_baselines(models, dataset, stride=epoch_stride, aav_reference=aav_reference, **common)
fig = plots.head_profiles(scores, value="value", row="score", ylabel="mean IA-Score", ylim=(0, 1), baselines=uniform,
                          title="global-IAV / global-AAV per head; heads sorted within a layer; darker = later epoch; "
                                "dotted: uniform attention")
plt.show()
'''),
        code('''
fig = plots.global_iav_heatmaps(scores, score="IAV")
plt.show()
# The IA-Score a head with uniform attention would get (same maps), per epoch.
display(uniform.pivot_table(index=["score", "model"], columns="epoch", values="baseline", sort=False).round(3))
'''),
        code('''
# Mean global score of the later half of the layers, at the first and the last analysed epoch.
late = scores[scores["layer"] > scores["layer"].max() / 2]
summary = late.groupby(["score", "model", "epoch"], sort=False)["value"].mean().reset_index()
first = summary.loc[summary.groupby(["score", "model"])["epoch"].idxmin()].set_index(["score", "model"])["value"]
final = summary.loc[summary.groupby(["score", "model"])["epoch"].idxmax()].set_index(["score", "model"])["value"]
table = pd.DataFrame({"first epoch": first, "last epoch": final})
table["change"] = table["last epoch"] - table["first epoch"]
last_uniform = uniform.loc[uniform.groupby(["score", "model"])["epoch"].idxmax()].set_index(["score", "model"])["baseline"]
table["above uniform"] = table["last epoch"] - last_uniform.reindex(table.index)
table.insert(0, "pretraining", [ex.pretraining(m) for _, m in table.index])
display(table.round(3))
for score in dict.fromkeys(table.index.get_level_values("score")):
    t = table.loc[score]
    for col, what in (("last epoch", "last epoch"), ("change", "change over finetuning"),
                      ("above uniform", "last epoch minus the uniform-attention score")):
        display(Markdown(ex.pretraining_contrast(t[col].to_dict(), "self-supervised higher",
                                                 f"{score}, later layers, {what}")))
'''),
        md('''
**Reading the figures.** The paper's claim, in the table's terms: in the later layers the
supervised models' global-IAV is lower at the end than the self-supervised models' and has
*decreased* over finetuning (negative `change`), while the self-supervised models' stays
level; the AAV with DINO's SmoothGrad shows the same with a larger gap. The dotted lines and
the last table give the score of a head with *uniform* attention: IA-Scores are cosines of
non-negative vectors, so a head that attends everywhere already scores high, and a head is
"looking at the attributed region" only to the extent that it beats this baseline.

When this chapter was written, the default embedded run reproduced the *level* part of the
claim only at face value: in the later layers both self-supervised tiny models ended with a
higher global-IAV than both supervised ones. The uniform baseline explains much of it: the
MIM model's SmoothGrad is almost flat over the patches (uniform attention would score ≈ 0.97
on it), so its high IA-Scores are *below* what uniform attention would get, while the
DINO-like and the large-source supervised model beat their baselines by about 0.1 and the
small-source supervised model sits on its baseline — measured against the baseline, the
types do not separate. The dynamics did not follow the paper either: the DINO-like model's
global-IAV *fell* the most over finetuning, because at epoch 0 its attention is nearly
uniform (entropy ≈ log P, chapter 04). The AAVs compare all models on the *same* maps (one
baseline per row): with the object mask the self-supervised models rose and the supervised
ones fell over finetuning, the closest our run came to the paper's AAV claim. Two caveats:
epoch 0 is the pretrained backbone with a random head, whose SmoothGrad explains a random
classifier; and our models have 6 layers of 4 heads, so "after the 6th layer" becomes "the
later half of the layers".
'''),
    ])


def nb06() -> nbformat.NotebookNode:
    return notebook([
        md('''
# The role of heads: High- and Low-IA-Heads (Fig. 8)

The global-IAV averages over images; the paper's Fig. 8 shows the distribution behind it — a
box plot of each head's IA-Score over all validation images, for the first, middle and last
layer. A head is a **High-IA-Head** if its median IA-Score is above 0.5, else a
**Low-IA-Head** (marked blue / red under the boxes). The paper finds: DINO has only
High-IA-Heads; BEiT mostly High with a few Low; the supervised models have High-IA-Heads in
early layers and Low-IA-Heads in the later layers (DeiT's last layer only Low). The
conjecture: *agreement with the attribution is a property of the head, not of the sample* —
some heads are "enthusiastic", others "apathetic" about the input region.
'''),
        parameters(),
        setup("06_head_roles"),
        md(DEFINITIONS),
        code('''
heads = ex.head_scores(models, dataset, **common)
uniform = ex.uniform_baselines(models, dataset, **common)
baseline = uniform[uniform["score"] == "IAV"].set_index("model")["baseline"].to_dict()
fig = plots.head_boxes(heads, baselines=baseline)
plt.show()
'''),
        md('''
High-IA-Heads per layer (count / heads):
'''),
        code('''
types = ex.head_type_table(heads)
types.insert(0, "pretraining", [ex.pretraining(m) for m in types.index])
display(types)
per_head = heads.groupby(["model", "layer", "head"], sort=False)["high"].first().reset_index()
late_high = per_head[per_head["layer"] > per_head["layer"].max() / 2].groupby("model", sort=False)["high"].mean()
display(Markdown(ex.pretraining_contrast(late_high.to_dict(), "self-supervised higher",
                                         "share of High-IA-Heads in the later half of the layers", ".2f")))
'''),
        code('''
# Is the score a property of the head? Share of the IA-Score variance explained by the head
# (between-head variance / total variance, per model): near 1 = head-dependent, near 0 = sample-dependent.
def head_share(df):
    total = df["score"].var()
    return df.groupby(["layer", "head"])["score"].transform("mean").var() / total

display(heads.dropna(subset=["score"]).groupby("model", sort=False).apply(head_share, include_groups=False)
        .rename("variance explained by the head").round(3).to_frame())
'''),
        md('''
**Reading the figures.** Compare the table of High-IA-Heads with the paper's pattern
(self-supervised: High almost everywhere; supervised: High early, Low late). The last table
tests the paper's conjecture directly: if the head explains a large share of the variance of
the IA-Scores, the score is mostly a property of the head. The dashed line in each panel is
the IA-Score of uniform attention on the same SmoothGrad maps.

When this chapter was written, the default embedded run had **only High-IA-Heads** in all
four tiny models: the fixed 0.5 threshold is below the uniform-attention baseline of these
64-patch maps, so it cannot split the heads here, and the paper's supervised/self-supervised
pattern of head types is not reproduced. Relative to the baseline the picture is more
informative: heads whose box lies below the dashed line attend *away* from the attributed
region. The head explained most of the variance only for the MIM model; for the other three
the score depended more on the image than on the head, i.e. the paper's "head-dependent"
conjecture held for one of our four models.
'''),
    ])


def nb07() -> nbformat.NotebookNode:
    return notebook([
        md('''
# Class discrimination with IAV (Fig. 9)

The IAV of an image only says how much each head agrees with the attribution, yet the paper
finds that it carries the class: a t-SNE of each layer's part of the IAV (12 numbers per
layer for ViT-B) groups the images by class, more clearly in deeper layers, and more clearly
for supervised models (the last layers of DeiT and ImageNet-21k) than for self-supervised
ones.

Our models have 4 heads, so each layer's IAV has only 4 numbers; we show the t-SNE of every
layer and of the classifier's logits (for reference), coloured by the true class, and measure
the separation with a number that does not depend on t-SNE's randomness: the leave-one-out
5-nearest-neighbour accuracy of the class from the layer's IAV.
'''),
        parameters('''
perplexity = 15.0  # t-SNE perplexity (capped for small image sets)'''),
        setup("07_class_discrimination"),
        md(DEFINITIONS),
        code('''
embedding = ex.iav_tsne(models, dataset, perplexity=perplexity, **common)
fig = plots.tsne_grid(embedding, classes=ex.class_names(dataset))
plt.show()
'''),
        code('''
separation = ex.class_separability(models, dataset, **common)
fig = plots.separability_curves(separation, chance=100 / len(ex.class_names(dataset)))
plt.show()
table = separation.pivot(index="model", columns="layer", values="knn_accuracy")[list(dict.fromkeys(separation["layer"]))]
table.insert(0, "pretraining", [ex.pretraining(m) for m in table.index])
display(table.round(1))
last_layer = [c for c in table.columns if c.startswith("L")][-1]
display(Markdown(ex.pretraining_contrast(table[last_layer].to_dict(), "self-supervised lower",
                                         f"5-NN class accuracy from the IAV of {last_layer} (%)", ".1f")))
'''),
        md('''
**Reading the figures.** The paper's two claims are that class separation by IAV grows
with depth, and that it is stronger for supervised models. In the table, the first is a rising
row (chance is 10 % for 10 classes); the second compares the last layers of the two
supervised models with those of the two self-supervised ones. With 4 numbers per layer and a
few dozen images the t-SNE pictures are rough; trust the k-NN numbers more than the pictures.

When this chapter was written, the default embedded run did **not** reproduce Fig. 9: the
k-NN accuracies from the tiny models' IAVs stayed within roughly 0–30 % (chance 10 %, and the
classifier's own logits reach only ~15–25 % in this leave-one-out test on 64 images), with no
consistent rise with depth; the supervised models' last layers were better only on average.
Four IA-Scores per layer from ~40 %-accurate models carry little class information.
'''),
    ])


BUILDERS = {
    "00_finetune": nb00,
    "01_generalization_robustness": nb01,
    "02_training_dynamics": nb02,
    "03_input_disturbance": nb03,
    "04_global_receptive_field": nb04,
    "05_global_iav": nb05,
    "06_head_roles": nb06,
    "07_class_discrimination": nb07,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` as this script makes it (validated, with stable cell ids)."""
    nb = BUILDERS[name]()
    # Stable cell ids, so that regenerating an unchanged notebook changes nothing in git.
    for i, cell in enumerate(nb.cells):
        cell.id = f"{name.split('_')[0]}-{i:02d}"
    nbformat.validate(nb)
    return nb


def main() -> None:
    NOTEBOOK_DIR.mkdir(exist_ok=True)
    for name in BUILDERS:
        path = NOTEBOOK_DIR / f"{name}.ipynb"
        nbformat.write(build(name), path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
