"""Notebook 04_global_receptive_field: Global receptive field: attention entropy (Fig. 6)."""

from __future__ import annotations

import nbformat

from .cells import DEFINITIONS, code, md, notebook, parameters, setup

NAME = "04_global_receptive_field"


def build() -> nbformat.NotebookNode:
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
        setup("04_global_receptive_field", "checkpoints, receptive_field, global_iav", pandas=True),
        md(DEFINITIONS),
        md('''
## Entropy per head over finetuning (paper Fig. 6a)

Heads are sorted within each layer by decreasing entropy; darker lines are later epochs.
'''),
        code('''
entropy = receptive_field.entropy_over_epochs(study, stride=epoch_stride)
max_entropy = receptive_field.max_entropy(models[0])  # log P nats: uniform attention over the patches
fig = plots.head_profiles(entropy, value="entropy", ylabel="attention entropy (nats)",
                          title="Mean attention entropy per head; darker = later epoch", ylim=(0, max_entropy * 1.02))
plt.show()
'''),
        code('''
# Mean entropy over heads, first vs last analysed epoch, and the change (positive = more spread out).
e0 = entropy[entropy.groupby("model")["epoch"].transform("min") == entropy["epoch"]].groupby("model")["entropy"].mean()
e1 = entropy[entropy.groupby("model")["epoch"].transform("max") == entropy["epoch"]].groupby("model")["entropy"].mean()
trend = checkpoints.with_pretraining(pd.DataFrame({"model": e0.index, "first epoch": e0.values, "last epoch": e1.values}))
trend["change"] = trend["last epoch"] - trend["first epoch"]
display(trend.round(3))
display(Markdown(global_iav.pretraining_contrast(dict(zip(trend["model"], trend["change"])), "self-supervised lower",
                                                 "change of the mean entropy over finetuning (nats)")))
'''),
        md('''
## Entropy of the last layer's heads over images (paper Fig. 6b)
'''),
        code('''
last = receptive_field.last_layer_entropy(study)
fig = plots.entropy_boxes(last, max_entropy=max_entropy)
plt.show()
stats = last.groupby("model", sort=False)["entropy"].describe()[["mean", "std", "min", "max"]]
display(stats.round(3))
display(Markdown(global_iav.pretraining_contrast(stats["mean"].to_dict(), "self-supervised higher",
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
