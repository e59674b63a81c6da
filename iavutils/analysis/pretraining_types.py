"""Chapter 11's tables and verdict: does the IAV trend separate the pretraining types?

The test itself (features, leave-one-model-out classifier, group permutation test) and the
chapter's entry points :func:`~iavutils.analysis.separability.checkpoint_trends` and
:func:`~iavutils.analysis.separability.separability_report` are in
:mod:`iavutils.analysis.separability`; this module labels the models, builds the tables and
writes the verdict from the results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from .separability import SeparabilityResult

__all__ = [
    "ALPHA",
    "SEPARABILITY_RULE",
    "per_model_accuracy",
    "pretraining_labels",
    "pretraining_table",
    "separability_verdict",
    "too_few_models",
    "trend_frame",
]


#: Significance level of the chapter's permutation test.
ALPHA = 0.05

#: The rule of :func:`separability_verdict`, as the chapter prints it (``{alpha}``: :data:`ALPHA`).
SEPARABILITY_RULE = (
    "Rule (α = {alpha}; one-sided group-permutation test of the global-IAV's held-out accuracy "
    "against chance labellings of the models): **Yes** when p ≤ α; **Cannot tell** when even the "
    "smallest p these models can reach is above α; **No** otherwise. The accuracies describe, they "
    "do not decide."
)


def pretraining_labels(presets: Sequence[str]) -> dict[str, int]:
    """``{preset: 1 self-supervised / 0 supervised}``, the labels the test classifies."""
    from .checkpoints import pretraining

    return {p: int(pretraining(p) == "self-supervised") for p in presets}


def pretraining_table(presets: Sequence[str]) -> Any:
    """The pretraining type of each model (one column, indexed by preset)."""
    import pandas as pd

    from .checkpoints import pretraining

    return pd.DataFrame({"pretraining": [pretraining(p) for p in presets]}, index=list(presets))


def too_few_models(labels: Mapping[str, int]) -> str:
    """Why the test cannot run (fewer than two models of a type), or ``""`` when it can."""
    n_ssl = sum(labels.values())
    if min(n_ssl, len(labels) - n_ssl) < 2:
        return (f"This run has {n_ssl} self-supervised and {len(labels) - n_ssl} supervised model(s): "
                "the test needs at least two of each (run with the four presets).")
    return ""


def trend_frame(trends: Mapping[str, Mapping[str, Tensor]]) -> Any:
    """Per model, analysed epoch and layer: the mean of the global-IAV over the layer's heads.

    Returns:
        ``pandas.DataFrame`` with ``model, epoch, layer ("layer 1"...), global-IAV (layer mean)``.
    """
    import pandas as pd

    rows = []
    for p, t in trends.items():
        for i, e in enumerate(t["epochs"].tolist()):
            g = t["global_iav"][i]
            for l in range(g.shape[0]):
                rows.append({"model": p, "epoch": e, "layer": f"layer {l + 1}",
                             "global-IAV (layer mean)": float(np.nanmean(g[l].numpy()))})
    return pd.DataFrame(rows)


def per_model_accuracy(results: Mapping[str, SeparabilityResult], presets: Sequence[str]) -> Any:
    """Held-out accuracy of each model (rows) per feature set (columns)."""
    import pandas as pd

    return pd.DataFrame({name: r.per_group for name, r in results.items()}).reindex(list(presets))


def separability_verdict(results: Mapping[str, SeparabilityResult], alpha: float = ALPHA) -> str:
    """The chapter's answer in Markdown, read from the global-IAV test and its controls.

    The p-value decides, by :data:`SEPARABILITY_RULE` (printed before the verdict), between
    **Yes** ("separates beyond chance"), **Cannot tell** ("cannot be established with this
    many models": the smallest reachable p-value is above ``alpha``) and **No** ("does not
    separate"); the held-out accuracy describes: "recognises every model", "mostly" or "only
    partly".

    Args:
        results: :func:`separability_report`'s results (with ``"global-IAV"``).
        alpha: Significance level.

    Returns:
        Markdown text.
    """
    r = results["global-IAV"]
    lines = [f"**global-IAV**: {r.summary()}."]
    for name in [n for n in results if n != "global-IAV"]:
        lines.append(f"**{name}**: {results[name].summary()}.")
    lines.append(SEPARABILITY_RULE.format(alpha=alpha))
    if r.p_value <= alpha:
        lines.append(f"**Yes** (p = {r.p_value:.3f}). The IAV trend separates the pretraining types beyond "
                     "what chance labellings of these models achieve.")
    elif r.min_p_value > alpha:
        lines.append(f"**Cannot tell** (p = {r.p_value:.3f}). With {r.n_groups} models no labelling-based "
                     f"test can reach p ≤ {alpha} (the minimum is {r.min_p_value:.2f}): **the embedded world "
                     "cannot establish the paper's claim statistically**, whatever the accuracy.")
    else:
        lines.append(f"**No** (p = {r.p_value:.3f}). The IAV trend does not separate the pretraining types "
                     "better than chance labellings here.")
    if r.accuracy == 1.0:
        lines.append("The classifier does recognise every held-out model's pretraining type — "
                     "consistent with the claim, but, with this few models, equally consistent with "
                     "any other feature that happens to differ between the two pairs.")
    elif r.accuracy >= 0.75:
        wrong = [p for p, a in r.per_group.items() if a < 1.0]
        lines.append(f"The classifier mostly recognises held-out models (accuracy {r.accuracy:.2f}; "
                     f"not every checkpoint of {', '.join(wrong)}): descriptively suggestive, not a "
                     "clean separation.")
    else:
        lines.append(f"The classifier recognises held-out models only partly (accuracy "
                     f"{r.accuracy:.2f}), so even descriptively the trend does not generalise across "
                     "models here.")
    ctrl = {n: x.accuracy for n, x in results.items() if n != "global-IAV"}
    if ctrl:
        best = max(ctrl, key=ctrl.get)
        lines.append(f"Controls: the best control ({best}) reaches {ctrl[best]:.2f} against "
                     f"{r.accuracy:.2f} for the global-IAV; the paper expects the controls to fail.")
    return "\n\n".join(lines)
