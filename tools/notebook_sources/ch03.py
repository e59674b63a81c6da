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
# Mean accuracy over the masking ratios > 0 (lower = the ordering finds more important patches).
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
damaging ordering for every model but DINO, whose attention is about as damaging. Whether
this run can test that depends on how much the *random* ordering already costs: black squares
are not part of the tiny models' training images, and a model that reads them as image content
loses accuracy whatever the ordering. What this run measured:
'''),
        code('''
display(Markdown(disturbance.masking_reading(masking, num_images)))
'''),
        md('''
Where the random ordering costs about as much as the others, or the orderings differ by a few
images, the comparison says little about attention; a fairer test for such models would mask
with the image mean or blur (not the paper's protocol, so not done here).
'''),
    ])
