"""Notebook 05_global_iav: global-IAV and global-AAV (Figs. 2 and 7)."""

from __future__ import annotations

import nbformat

from .cells import DEFINITIONS, code, md, notebook, parameters, setup

NAME = "05_global_iav"


def build() -> nbformat.NotebookNode:
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
"segmentation map" AAV the paper suggests). The reference model's own AAV is its attention
scored against its own SmoothGrad, so at the last epoch it *is* its IAV: it is shown apart,
labelled, and left out of the AAV's pretraining contrasts.

Epoch 0 is the pretrained backbone with a random head, whose SmoothGrad explains a random
classifier: it is drawn dashed grey, labelled "before finetuning", and every change over
finetuning starts at the **first finetuned epoch**.
'''),
        parameters('''
epoch_stride = 1  # analyse every epoch_stride-th checkpoint (the last and the first finetuned always)
aav_reference = "auto"  # preset whose last-checkpoint SmoothGrad is the AAV map (auto: the DINO-like one)
example = 0  # which analysed image Fig. 2 shows'''),
        setup("05_global_iav", "images, global_iav, class_discrimination, iavs", publish="plots, figures_dynamics"),
        md(DEFINITIONS),
        md('''
## One image through every head (paper Fig. 2)

For one image: the image, each model's SmoothGrad, the attention map of every head of the
first, middle and last layer (titled with its IA-Score) and the image's whole IAV.
'''),
        code('''
fig = plots.example_maps([class_discrimination.example_maps(study, p, sample=example) for p in models], classes=images.class_names(dataset))
plt.show()
'''),
        md('''
## global-IAV and global-AAV over finetuning (paper Fig. 7)
'''),
        code('''
scores = global_iav.global_scores_over_epochs(study, stride=epoch_stride, aav_reference=aav_reference)
uniform = global_iav.uniform_baselines(study, stride=epoch_stride, aav_reference=aav_reference)
fig = figures_dynamics.head_profiles_over_finetuning(scores, row="score", ylabel="mean IA-Score", ylim=(0, 1),
      baselines=uniform, self_reference=global_iav.SELF_REFERENCE,
      title="global-IAV / global-AAV per head (sorted per layer); darker: later epoch; dotted: uniform")
plt.show()
'''),
        md('''
The global-IAV per head and epoch, then the IA-Score a head with uniform attention would get
(same maps), per epoch, and how many SmoothGrad samples each image got (with `tol` set: the
largest and median estimated error of a head's global-IAV, methods page "Precision mode"):
'''),
        code('''
fig = plots.global_iav_heatmaps(scores, score="IAV")
plt.show()
display(global_iav.uniform_table(uniform).round(3),
        iavs.precision_table(study))  # SmoothGrad's n, and the error with tol
'''),
        md('''
Mean global score of the later half of the layers: before finetuning (epoch 0, labelled), at
the first finetuned and the last epoch, the change between those two, and the margin over
uniform attention at the last epoch; the reference model's own AAV is labelled in `role`:
'''),
        code('''
table = global_iav.later_layers_table(scores, uniform)
display(table.round(3), Markdown(global_iav.uniform_reading(table, "IAV")))
for sentence in global_iav.contrast_sentences(table):
    display(Markdown(sentence))
'''),
        md(r'''
**Reading the figures.** The paper's claim, in the table's terms: in the later layers the
supervised models' global-IAV is lower at the end than the self-supervised models' and has
*decreased* over finetuning (negative `change`), while the self-supervised models' stays
level; the AAV with DINO's SmoothGrad shows the same with a larger gap. The sentences above
say, for this run, which of these orderings hold.

The dotted lines, the `above uniform` column and the sentence under the table give the score
of a head with *uniform* attention on the same maps: IA-Scores are cosines of non-negative
vectors, so a head that attends everywhere already scores high, and a head is "looking at the
attributed region" only to the extent that it beats this baseline. A model whose SmoothGrad
is almost flat over the patches gets a high IA-Score from any attention, so a high level
alone is no evidence; the margin is. The AAVs compare all models on the *same* maps (one
baseline per row), which is why the paper uses them for the pretraining contrast. The paper's
"after the 6th layer" of its 12-layer models becomes "the later half of the layers" here, for
any depth of the run's models.
'''),
    ])
