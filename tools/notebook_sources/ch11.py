"""Notebook 11_pretraining_separability: Does the IAV trend separate pretraining types? A test instead of a plot."""

from __future__ import annotations

import nbformat

from .cells import code, md, notebook, raw_parameters, setup

NAME = "11_pretraining_separability"


def build() -> nbformat.NotebookNode:
    return notebook([
        md(r'''
# Does the IAV trend separate pretraining types? A test instead of a plot

The IAV paper's central claim is that "the global-IAV trend can distinguish the pretraining
types" (supervised vs self-supervised), read off Fig. 7. Here the claim becomes a classifier
and a permutation test:

1. **Features.** For every model and analysed checkpoint, the global-IAV $[L,H]$ summarised
   per layer by the mean and the standard deviation over its heads ($2L$ numbers; head order is
   arbitrary across models, so per-head features would not be comparable). The paper says
   attention **entropy** and **accuracy** do *not* separate the types: they are the controls,
   summarised the same way.
2. **Classifier.** Standardised logistic regression, supervised vs self-supervised,
   **leave-one-model-out**: all checkpoints of the held-out model are predicted by a classifier
   trained on the other models only. The score is the mean over models of the held-out
   accuracy.
3. **Permutation test at the model level.** The pretraining labels are permuted across
   *models* (never across checkpoints of one model — they are not independent). With few
   models every labelling is enumerated, so the p-value is exact.

**What few models can show.** With $k$ self-supervised among $n$ models there are
$\binom nk$ labellings; with $k = n/2$ a labelling and its swap give the same accuracy, so the
smallest achievable p-value is $2/\binom nk$ **whatever the data** (for two models of each type:
$2/\binom42 = 1/3$). The verdict below prints this floor for the models of the run; where it is
above the significance level, the test cannot reach significance by construction, and can
still say whether a classifier trained on the other models recognises the held-out one. More *pretrained* models (not more
checkpoints or finetuning seeds of the same four) are the only way to a small p-value.
'''),
        raw_parameters('''
# Parameters (papermill: -p name value)
model = "tiny-mim,tiny-dino,tiny-sup,tiny-sup21k"  # a preset, comma-separated presets, tiny, real, or all (every model finetuned in the run)
run_dir = ""  # empty: $IAV_RUN_DIR if set, else <repository>/runs (from the package, not the cwd)
dataset = "auto"  # auto: embedded for the tiny presets, cifar10 otherwise
num_images = 64  # held-out images analysed (the same seeded subset for every model)
n_samples = 25  # SmoothGrad noisy copies per image
noise_level = 0.15  # SmoothGrad noise, as a fraction of the image's value range
device = "auto"  # auto: CUDA if available, else CPU
seed = 0  # image subset, SmoothGrad noise and Monte Carlo permutations
finetune = "auto"  # missing finetuning: auto finetunes tiny presets here and stops for hub presets with the command to run; True finetunes here; False stops
target = "label"  # class explained by SmoothGrad: label (ground truth) or predicted
tol = None  # None: n_samples per image; a number (e.g. 0.005): antithetic noise until every head's global-IAV is within tol
epoch_stride = 2  # analyse every epoch_stride-th checkpoint (the last one always)
unit = "checkpoint"  # checkpoint: one row per checkpoint; run: one row per model (the whole trend)
num_permutations = 1000  # Monte Carlo budget; exact enumeration when it suffices
'''),
        setup("11_pretraining_separability", "pretraining_types, separability", publish="figures, plots"),
        md(r'''
The global-IAV and entropy of every analysed checkpoint come from the book's cached
analysis (the same SmoothGrad and attention as chapters 02–07); accuracy is the validation
accuracy of the finetuning log.
'''),
        code('''
labels = pretraining_types.pretraining_labels(models)
display(pretraining_types.pretraining_table(models))
trends = separability.checkpoint_trends(study, epoch_stride=epoch_stride)
fig = figures.trend_lines(pretraining_types.trend_frame(trends), models)
plt.show()
'''),
        md(r'''
## Leave-one-model-out classification and the permutation test
'''),
        code('''
results = {}
if pretraining_types.too_few_models(labels):
    display(Markdown(pretraining_types.too_few_models(labels)))
else:
    table, results = separability.separability_report(trends, labels, unit=unit, n_permutations=num_permutations,
                                                      seed=seed)
    display(table.set_index("features").round(3))
    display(Markdown("Held-out accuracy of each model (fraction of its rows classified correctly):"))
    display(pretraining_types.per_model_accuracy(results, models).round(2))
'''),
        md(r'''
Reading the accuracies: with two models per type, holding one out leaves a 2 : 1
training set, so features that carry no information about the type are pulled towards the
majority — the *other* type — and score **below** 0.5, down to 0 (the classic leave-one-out
anti-learning effect). Chance level here is therefore not 0.5 but the spread of the
permutation null below; only accuracies near 1 on every held-out model are evidence.
'''),
        code('''
if results:
    fig = figures.permutation_nulls(results)
    plt.show()
'''),
        md(r'''
## What this says
'''),
        code('''
if results:
    display(Markdown(pretraining_types.separability_verdict(results)))
'''),
        md(r'''
**What the embedded models can and cannot show.** They can show whether the IAV trend
*generalises* across models of the same pretraining type under a fixed, reproducible
protocol, and whether it does better than the paper's own negative controls. They cannot
make the claim significant with two pretrained models per type: every group-level test then
has the floor above. Finetuning seeds or more checkpoints do not help, since they are
not new pretrained models (use `unit="run"` to count each model once). To test the claim,
pretrain more tiny models per type with different seeds (`python -m iavutils.world.pretrain`) and
add them to the run as separate models, or run the real presets and add more public
checkpoints of each type: with 4 + 4 models the floor drops to $2/70 \approx 0.03$.
'''),
    ])
