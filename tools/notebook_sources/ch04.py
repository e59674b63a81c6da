"""Notebook 04_global_receptive_field: Global receptive field: attention entropy (Fig. 6)."""

from __future__ import annotations

import nbformat

from .cells import DEFINITIONS, code, md, notebook, parameters, setup

NAME = "04_global_receptive_field"


def build() -> nbformat.NotebookNode:
    return notebook([
        md(r'''
# Global receptive field: attention entropy (Fig. 6)

How spread out is each head's attention? The paper measures the entropy
$H(A) = -\sum_p A(p)\log A(p)$ of a head's class-token attention over the patches, averaged
over images. (a) Over finetuning, the heads of supervised models tend to increase their
entropy and those of self-supervised models to decrease it; the final entropies do not
separate the types (DINO and ImageNet-21k are alike in layers 1–11). (b) In the last layer the
self-supervised models have high entropy with low variance, DeiT low entropy; ImageNet-21k has
some heads like DINO — so *entropy does not cleanly separate the pretraining types*, and it
ignores how large the object is.

We renormalise the class-token row over the patches to sum 1 before taking the entropy (in
nats); the maximum $\log P$ is uniform attention over the $P$ patches. Epoch 0 is the
pretrained backbone with a random head: it is drawn dashed grey, labelled "before
finetuning", and the change over finetuning starts at the **first finetuned epoch**.
'''),
        parameters('''
epoch_stride = 1  # analyse every epoch_stride-th checkpoint (the last and the first finetuned always)'''),
        setup("04_global_receptive_field", "checkpoints, receptive_field, global_iav", publish="plots, figures_dynamics"),
        md(DEFINITIONS),
        md('''
## Entropy per head over finetuning (paper Fig. 6a)

Heads are sorted within each layer by decreasing entropy; darker lines are later finetuned
epochs, the dashed grey line is epoch 0 (before finetuning).
'''),
        code('''
entropy = receptive_field.entropy_over_epochs(study, stride=epoch_stride)
max_entropy = receptive_field.max_entropy(models[0])  # log P nats: uniform attention over the patches
fig = figures_dynamics.head_profiles_over_finetuning(entropy, value="entropy", ylabel="attention entropy (nats)",
      title="Mean attention entropy per head; darker = later epoch", ylim=(0, max_entropy * 1.02))
plt.show()
'''),
        code('''
# Mean entropy over heads: first finetuned vs last epoch and the change (positive = more spread out); epoch 0 labelled.
trend = receptive_field.entropy_change(entropy)
display(trend.round(3), Markdown(receptive_field.entropy_change_reading(trend)))
display(Markdown(global_iav.pretraining_contrast(dict(zip(trend["model"], trend["change"])), "self-supervised lower",
                                                 "change of the mean entropy from the first finetuned epoch (nats)")))
'''),
        md('''
## Entropy of the last layer's heads over images (paper Fig. 6b)
'''),
        code('''
last = receptive_field.last_layer_entropy(study)
fig = plots.entropy_boxes(last, max_entropy=max_entropy)
plt.show()
stats = last.groupby("model", sort=False)["entropy"].describe()[["mean", "std", "min", "max"]]
display(stats.round(3), Markdown(receptive_field.entropy_ceiling_sentence(models[0])))
display(Markdown(global_iav.pretraining_contrast(stats["mean"].to_dict(), "self-supervised higher",
                                                 "mean entropy of the last layer (nats)")))
'''),
        md(r'''
**Reading the figures.** The paper's dynamics claim is the sign of the change: up for
supervised, down for self-supervised models (the `change` column, from the first finetuned
epoch; the sentences above say which way each model went in this run). Its last-layer claim
is that the self-supervised models' boxes sit high with little spread and DeiT's low; the
entropy ceiling $\log P$ of the run's patch grid is given above the last sentence. A
pretrained attention that is already almost uniform (close to the ceiling) can only lose
entropy, whatever the pretraining type. The paper's own conclusion is that entropy is not a
property of the pretraining type; the last sentence above says whether this run separates
the types.
'''),
    ])
