"""Notebook 12_claims: the claims of both papers, our statistic with a 95 % interval, a verdict.

Named 12 so that the book runner (name order) computes it after every chapter, whose cached
computations it reads; ``book/_toc.yml`` shows it right after the intro.
"""

from __future__ import annotations

import nbformat

from .cells import code, md, notebook, parameters, setup

NAME = "12_claims"


def build() -> nbformat.NotebookNode:
    return notebook([
        md(r'''
# The claims, tested

One row per claim of the IAV paper (its figures and its two general statements) and of GMAR.
For each claim the table gives the paper's statement in our words, the statistic we compute
for it, the paper's side of the null value, our estimate with a 95 % interval, the scratch
control's value of the same per-model quantity, and the verdict.

**How the statistic is formed.** Each claim has a per-model quantity computed from per-image
values of the chapters' cached analysis (the last finetuned checkpoint; "change" is measured
from the first finetuned epoch, not from epoch 0, whose head is random). A *contrast* is the
mean over the self-supervised pretraining types minus the mean over the supervised ones; a
*level* is the mean over all pretraining types. The scratch control never enters a contrast.

**The interval.** A hierarchical percentile bootstrap: each replicate resamples the seeds of
every pretraining type with replacement, then the analysed images of every drawn seed, and
recomputes the statistic. The column "seeds per type" says how many pretraining seeds each
type has in this run; with one seed per preset the interval covers the images only, not the
spread between pretraining seeds.
'''),
        parameters('''
perturbation_steps = 9  # chapter 08's removed fractions (the same value reads its cached curves)
n_boot = 1000  # bootstrap replicates'''),
        setup("12_claims", "claims", extra="from iavutils.core.metrics import perturbation_fractions"),
        code('''
display(Markdown(claims.verdict_rule()))
table = claims.study_claims(study, fractions=perturbation_fractions(perturbation_steps), n_boot=n_boot)
shown = ["claim", "paper says", "statistic", "side", "ours [95 % CI]", "seeds per type", "scratch control", "verdict"]
display(table[shown].style.hide(axis="index"))
display(Markdown(claims.summary(table)))
'''),
        md(r'''
A claim whose statistic this run cannot form (a quantity no chapter computes per image, or a
group without models) is shown as "not defined in this run" and counts as inconclusive. The
chapters after this page show each figure and its full tables.
'''),
    ])
