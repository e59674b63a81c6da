"""Notebook 02_training_dynamics: Training dynamics of attribution and attention (Fig. 4)."""

from __future__ import annotations

import nbformat

from .cells import DEFINITIONS, code, md, notebook, parameters, setup

NAME = "02_training_dynamics"


def build() -> nbformat.NotebookNode:
    return notebook([
        md(r'''
# Training dynamics of attribution and attention (Fig. 4)

How much do the input attribution and the attention maps move while a model is finetuned?
The paper compares each checkpoint $t$ with the final one $T$: (a) the SmoothGrad maps
$\lVert\varphi_t - \varphi_T\rVert$ and (b) the attention map averaged over all layers
$\lVert \bar A_t - \bar A_T\rVert$. In the paper's figure the supervised models (DeiT, ImageNet-21k)
change about twice as much (≈ 0.05) as the self-supervised ones (≈ 0.02): *unsupervised pretraining leaves the
attention more stable during finetuning*.

**Our distance.** The paper does not define the norm. We scale every map to unit L2 norm (as
the IA-Score does) and take the L2 distance, averaged over the images:
$d_\varphi(t) = \frac1N\sum_i \lVert \hat\varphi_t(x_i) - \hat\varphi_T(x_i)\rVert_2$ over
the pixels of the SmoothGrad map. For (b), as the paper describes, each image's class-token
attention rows are first averaged over all $L \cdot H$ heads (every layer and its heads) into
one map $\bar A$, and the same distance is taken between those maps. The mean of the
per-head distances, which an earlier version of this chapter plotted as (b), is kept as a
third, labelled panel. Distances lie in $[0, \sqrt2]$, are 0 for identical maps and ignore the
maps' scale, so absolute values are not comparable with the paper's (unstated)
normalisation, only the ordering of the models is.

**Which epochs.** Epoch 0 is the pretrained backbone with a *random* head: its SmoothGrad
explains a random classifier. It is drawn apart (hollow marker, "before finetuning") and is
never where a change starts: the comparison below starts at the **first finetuned epoch**.
'''),
        parameters('''
epoch_stride = 1  # analyse every epoch_stride-th checkpoint (the last and the first finetuned always)'''),
        setup("02_training_dynamics", "checkpoints, dynamics, global_iav", publish="plots, figures_dynamics"),
        md(DEFINITIONS),
        code('''
distances = dynamics.training_dynamics(study, stride=epoch_stride)
fig = figures_dynamics.training_dynamics(distances)
plt.show()
'''),
        code('''
# Distance of the first finetuned epoch to the last (the change over finetuning); epoch 0 apart, labelled.
summary = checkpoints.with_pretraining(dynamics.dynamics_summary(distances))
display(summary.round(3), Markdown(dynamics.dynamics_reading(summary)))
for col in [c for c in summary.columns if c.endswith("first finetuned → last")]:
    display(Markdown(global_iav.pretraining_contrast(dict(zip(summary["model"], summary[col])), "self-supervised lower", col)))
display(Markdown(dynamics.learning_rate_sentence(study)))
'''),
        md(r'''
**Reading the figure.** The paper's claim holds in a run if both curves of the
self-supervised models lie below those of the supervised models; the sentences above test it
on the distance from the first finetuned epoch to the final model (the largest number of each
finetuned curve), and give the ordering of the models in this run. A DINO-like model whose
pretrained class-token attention is almost uniform (entropy close to $\log P$, chapter 04)
has to create its structure during finetuning and can move the most. The recipe sentence
above says how far the run's learning rate is from the paper's $10^{-5}$; a larger one moves
every model further from where it started.
'''),
    ])
