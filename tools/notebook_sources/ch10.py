"""Notebook 10_head_ablation: Head ablation: does a low IA-Score mean a head does not matter?"""

from __future__ import annotations

import nbformat

from .cells import TQDM_IMPORT, code, md, notebook, raw_parameters, setup

NAME = "10_head_ablation"


def build() -> nbformat.NotebookNode:
    return notebook([
        md(r'''
# Head ablation: does a low IA-Score mean a head does not matter?

The IAV paper splits heads into **High-IA-Heads** (median IA-Score over images $> 0.5$: the
head's class-token attention agrees with SmoothGrad) and **Low-IA-Heads**, and leaves open
"the role of low IA-score heads". An IA-Score says where a head *looks*, not whether the
decision *needs* it. Ablation asks the second question directly.

**Ablating a head.** A head reaches the residual stream only through its slice of the input of
the attention output projection (`blocks[l].attn.proj`). A forward pre-hook replaces that slice
by zeros (`ablation_mode="zero"`) or by its mean over the evaluation images at the same token
position (`"mean"`, which keeps the statistics later layers expect); the hook exists only
inside a context manager. We measure, on held-out images and against their labels:

* the **accuracy drop** (percentage points) and the **target-logit drop** (clean − ablated
  logit of the true class, averaged over images) for every single head;
* the same for **groups**: all High-IA heads of a layer, all Low-IA heads of a layer, and, as
  a control, every subset of the layer's heads of the same size (mean drop) — so a group is
  judged against heads of that layer in general, not against nothing.

Each head's drop is then rank-correlated (Spearman) with its **IA-Score** (global-IAV) and its
**mean GMAR weight** (the gradient-norm share GMAR gives it within its layer).
'''),
        raw_parameters('''
# Parameters (papermill: -p name value)
model = "tiny-mim,tiny-dino,tiny-sup,tiny-sup21k"  # a preset, comma-separated presets, tiny, real, or all (every model finetuned in the run)
run_dir = ""  # empty: $IAV_RUN_DIR if set, else <repository>/runs (from the package, not the cwd)
dataset = "auto"  # auto: embedded for the tiny presets, cifar10 otherwise
num_images = 64  # held-out images of the IA-Score analysis (shared with chapters 05-06)
n_samples = 25  # SmoothGrad noisy copies per image
noise_level = 0.15  # SmoothGrad noise, as a fraction of the image's value range
device = "auto"  # auto: CUDA if available, else CPU
seed = 0  # image subset and SmoothGrad noise
finetune = "auto"  # missing finetuning: auto finetunes tiny presets here and stops for hub presets with the command to run; True finetunes here; False stops
target = "label"  # class explained by SmoothGrad and GMAR: label (ground truth) or predicted
tol = None  # None: n_samples per image; a number (e.g. 0.005): antithetic noise until every head's global-IAV is within tol
ablation_images = 128  # held-out images the ablations are measured on (forwards only)
ablation_mode = "zero"  # zero: zero the head output; mean: replace it by its mean
ablation_subsets = 20  # same-size head subsets averaged per control group; fewer: faster
'''),
        setup("10_head_ablation", "head_ablation", publish="figures, plots", extra=TQDM_IMPORT),
        code('''
results = {
    p: head_ablation.run_head_ablation(study, p, ablation_images=ablation_images, mode=ablation_mode,
                                       max_subsets=ablation_subsets)
    for p in tqdm(models, desc="models")
}
clean = head_ablation.clean_table(results, models)
display(clean.set_index("model").round(1))
'''),
        md(r'''
## Single heads

Each point is one head: how much the true-class logit falls when it is ablated, against its
IA-Score (left) and its mean GMAR weight (right). Filled circles: High-IA heads, crosses:
Low-IA heads.
'''),
        code('''
heads = head_ablation.head_frame(results, models)
fig = figures.ablation_scatter(heads, models)
plt.show()
'''),
        code('''
corr = head_ablation.correlation_table(heads, models)
display(corr.round(3))
'''),
        md(r'''
Spearman's $\rho$ with scipy's two-sided p-value and, for the logit drop against the IA-Score,
a 95 % bootstrap interval over heads; the last columns are the one-sided Mann–Whitney p-values
of the halves (upper half costs more, lower half costs more), which the verdict below reads.
The sample is a model's heads (or all heads pooled): the tests say whether, among these heads,
a lower IA-Score goes with a smaller drop, not what holds for the heads of other models. Within a layer the GMAR
weights sum to 1, so across layers they compare shares, not absolute importance. "Halves"
split each model's heads at the median of its global-IAV: the paper's 0.5 threshold can leave
a model with no Low-IA head at all (cosines of two non-negative maps are rarely small), and the
question "do the heads with the lowest IA-Scores matter?" must not depend on that.
'''),
        md(r'''
## Groups of heads

Per layer: ablating all its high-IA heads, all its low-IA heads, and the mean over all
same-size subsets of its heads (the control) — first with the paper's split (median IA-Score
$> 0.5$), then with the relative split (above / at or below the model's median global-IAV).
An empty group has no bar.
'''),
        code('''
groups_rel = head_ablation.group_frame(results, models, "rgroup")
if (clean["Low-IA heads"] > 0).any():
    figures.show(*figures.group_bars(head_ablation.group_frame(results, models, "group"),
                                     "paper split: High-IA (median IA-Score > 0.5) vs Low-IA heads"))
else:
    display(Markdown("With the paper's 0.5 threshold **no model of this run has a Low-IA head** "
                     "(see the table above), so only the relative split is shown."))
figures.show(*figures.group_bars(groups_rel, "relative split: heads above vs at/below the model's median global-IAV"))
'''),
        md(r'''
## So, does a low IA-Score mean a head does not matter?

The answer follows a rule on the tests above, stated first; then the answer per model and for
all heads pooled, each with the numbers it was read from.
'''),
        code('''
display(Markdown(head_ablation.ablation_verdict(corr, groups_rel, clean, models, label=plots.model_label)))
'''),
        md(r'''
Caveats: a model with few heads per layer (the tiny presets) has small groups and few
controls (see the bars above); a zero ablation can push activations off-distribution (try
`-p ablation_mode mean`); accuracy drops are quantised by the number of images
(`ablation_images`), the logit drop is not. The IA-Scores come from `num_images` images of the
same seeded held-out order as the ablation images.
'''),
    ])
