"""Notebook 02_training_dynamics: Training dynamics of attribution and attention (Fig. 4)."""

from __future__ import annotations

import nbformat

from .cells import DEFINITIONS, code, md, notebook, parameters, setup

NAME = "02_training_dynamics"


def build() -> nbformat.NotebookNode:
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
        setup("02_training_dynamics", "checkpoints, dynamics, global_iav"),
        md(DEFINITIONS),
        code('''
distances = dynamics.training_dynamics(study, stride=epoch_stride)
fig = plots.training_dynamics(distances)
plt.show()
'''),
        code('''
# Distance of the first analysed checkpoint (the pretrained initialisation) to the last one.
first = distances.loc[distances.groupby("model")["epoch"].idxmin()]
display(checkpoints.with_pretraining(first[["model", "epoch", "phi_distance", "attention_distance"]]).round(3))
for col, what in (("phi_distance", "SmoothGrad distance initialisation → final"),
                  ("attention_distance", "attention distance initialisation → final")):
    display(Markdown(global_iav.pretraining_contrast(dict(zip(first["model"], first[col])), "self-supervised lower", what)))
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
