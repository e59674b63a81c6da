"""Notebook 07_class_discrimination: Class discrimination with IAV (Fig. 9)."""

from __future__ import annotations

import nbformat

from .cells import DEFINITIONS, code, md, notebook, parameters, setup

NAME = "07_class_discrimination"


def build() -> nbformat.NotebookNode:
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
        setup("07_class_discrimination", "checkpoints, images, global_iav, head_roles, class_discrimination"),
        md(DEFINITIONS),
        code('''
embedding = head_roles.iav_tsne(study, perplexity=perplexity)
fig = plots.tsne_grid(embedding, classes=images.class_names(dataset))
plt.show()
'''),
        code('''
separation = class_discrimination.class_separability(study)
fig = plots.separability_curves(separation, chance=100 / len(images.class_names(dataset)))
plt.show()
table = separation.pivot(index="model", columns="layer", values="knn_accuracy")[list(dict.fromkeys(separation["layer"]))]
table.insert(0, "pretraining", [checkpoints.pretraining(m) for m in table.index])
display(table.round(1))
last_layer = [c for c in table.columns if c.startswith("L")][-1]
display(Markdown(global_iav.pretraining_contrast(table[last_layer].to_dict(), "self-supervised lower",
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
