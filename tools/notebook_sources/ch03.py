"""Notebook 03_input_disturbance: Input disturbance: do attention maps point at what matters? (Fig. 5)."""

from __future__ import annotations

import nbformat

from .cells import code, md, notebook, parameters, setup

NAME = "03_input_disturbance"


def build() -> nbformat.NotebookNode:
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
        setup("03_input_disturbance", "checkpoints, disturbance"),
        code('''
masking = disturbance.masking_curves(study)
fig = plots.masking_curves(masking)
plt.show()
'''),
        code('''
# Mean accuracy over the masking ratios 10–90 % (lower = the ordering finds more important patches).
auc = masking[masking["ratio"] > 0].pivot_table(index="model", columns="method", values="accuracy").round(1)
auc = auc[[m for m in disturbance.MASK_METHODS if m in auc]]
auc.insert(0, "pretraining", [checkpoints.pretraining(m) for m in auc.index])
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
