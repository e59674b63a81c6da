"""Does the IAV trend separate pretraining types? A classifier and a permutation test.

The IAV paper reads "the global-IAV trend can distinguish the pretraining types" off plots.
Here it becomes a test:

1. **Features.** For every run (a finetuned model: preset × seed) and checkpoint, a summary of
   its global-IAV ``[L,H]`` — by default per layer the mean and the standard deviation over
   heads (head order is arbitrary across models, so per-head features are not comparable).
   ``unit="checkpoint"`` makes one row per checkpoint; ``unit="run"`` one row per run holding
   the whole trend over epochs. Controls use the same machinery on attention entropy and on
   accuracy (the paper says those do *not* separate the types).
2. **Classifier.** Standardised logistic regression for supervised vs self-supervised,
   cross-validated **leave-one-group-out**, where a group is a model (all its checkpoints and
   seeds): the classifier never sees the model it is tested on. Score = mean over groups of
   the held-out accuracy, so every model weighs the same whatever its number of rows.
3. **Permutation test at the group level.** Labels are permuted across groups (never across
   checkpoints of one model, which are not independent). With few groups every distinct
   labelling is enumerated and the p-value is exact; its smallest possible value is limited by
   the number of labellings: with 2 + 2 models there are 6 labellings, and a labelling and its
   swap (supervised ↔ self-supervised) give the same accuracy, so **p ≥ 2/6 = 0.33 whatever
   the data**. More models or seeds *as separate groups* are the only way to a small p-value
   (more checkpoints of the same models are not).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.progress import tqdm  # one progress helper: widgets, terminal, or the book runner
from .study import Study

__all__ = [
    "FEATURE_SETS",
    "FeatureSet",
    "SeparabilityResult",
    "checkpoint_trends",
    "labelings",
    "min_p_value",
    "separability_report",
    "separability_test",
    "summarize_checkpoint",
    "trend_features",
]

SUMMARIES = ("layer_mean_std", "layer_mean", "layer_sorted", "full")


@dataclass
class FeatureSet:
    """Rows to classify.

    Attributes:
        X: ``[n, d]`` features.
        y: ``[n]`` 0/1 labels (1 = the positive class, e.g. self-supervised).
        groups: ``[n]`` group names (the unit held out and permuted: a model).
        rows: ``[n]`` row names (``run`` or ``run@epoch``).
    """

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    rows: list[str] = field(default_factory=list)


def summarize_checkpoint(values: Tensor, summary: str = "layer_mean_std") -> Tensor:
    """Features of one checkpoint's per-head quantity ``[L,H]`` (or of a scalar/vector).

    Args:
        values: ``[L,H]`` (global-IAV, entropy) or ``[d]``/scalar (accuracy).
        summary: ``"layer_mean_std"`` (``2L``: per-layer mean and std over heads),
            ``"layer_mean"`` (``L``), ``"layer_sorted"`` (``L·H``: heads sorted within each
            layer, which removes the arbitrary head order) or ``"full"`` (``L·H`` as is).

    Returns:
        ``[d]`` float64 features (NaN-aware over heads).
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.dim() < 2:
        return v.reshape(-1)
    if v.dim() != 2:
        raise ValueError(f"expected [L,H], got {tuple(v.shape)}")
    if summary == "layer_mean_std":
        m = torch.nanmean(v, dim=1)
        s = torch.sqrt(torch.nanmean((v - m[:, None]) ** 2, dim=1))
        return torch.cat([m, s])
    if summary == "layer_mean":
        return torch.nanmean(v, dim=1)
    if summary == "layer_sorted":
        return torch.sort(v, dim=1).values.reshape(-1)
    if summary == "full":
        return v.reshape(-1)
    raise ValueError(f"summary must be one of {SUMMARIES}, got {summary!r}")


def trend_features(
    trends: Mapping[str, Tensor],
    labels: Mapping[str, int | bool],
    groups: Mapping[str, str] | None = None,
    *,
    unit: str = "checkpoint",
    summary: str = "layer_mean_std",
    epochs: Sequence[int] | None = None,
) -> FeatureSet:
    """Features from per-checkpoint quantities of several runs.

    Args:
        trends: ``{run: [E, ...]}`` one entry per checkpoint epoch — e.g. global-IAV
            ``[E,L,H]``, entropy ``[E,L,H]`` or accuracy ``[E]``.
        labels: ``{run: 0/1}`` (1 = self-supervised, say).
        groups: ``{run: group}`` — the unit held out and permuted (default: the run itself;
            map seeds of one preset to the preset to hold the model out as a whole).
        unit: ``"checkpoint"`` (one row per run and epoch; rows of a run share its group) or
            ``"run"`` (one row per run: the per-epoch features concatenated over epochs).
        summary: Per-checkpoint summary (:func:`summarize_checkpoint`).
        epochs: Indices into the first axis to keep (default all; with ``unit="run"`` every
            run must have the same epochs).

    Returns:
        The :class:`FeatureSet`.
    """
    if unit not in ("checkpoint", "run"):
        raise ValueError(f"unit must be 'checkpoint' or 'run', got {unit!r}")
    X, y, g, rows = [], [], [], []
    for run, t in trends.items():
        t = torch.as_tensor(t)
        idx = list(range(t.shape[0])) if epochs is None else list(epochs)
        feats = [summarize_checkpoint(t[e], summary) for e in idx]
        if unit == "checkpoint":
            for e, f in zip(idx, feats, strict=True):
                X.append(f.numpy())
                rows.append(f"{run}@{e}")
                y.append(int(labels[run]))
                g.append(groups[run] if groups else run)
        else:
            X.append(torch.cat(feats).numpy())
            rows.append(run)
            y.append(int(labels[run]))
            g.append(groups[run] if groups else run)
    dims = {len(r) for r in X}
    if len(dims) != 1:
        raise ValueError(f"runs give features of different lengths {sorted(dims)}: pass the same epochs")
    return FeatureSet(X=np.stack(X), y=np.asarray(y), groups=np.asarray(g), rows=rows)


def _group_labels(y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    names = np.unique(groups)
    lab = []
    for n in names:
        v = np.unique(y[groups == n])
        if v.size != 1:
            raise ValueError(f"group {n!r} has rows of both classes; labels must be constant within a group")
        lab.append(int(v[0]))
    return names, np.asarray(lab)


def labelings(group_labels: np.ndarray) -> list[np.ndarray]:
    """Every distinct assignment of the same label counts to the groups (identity first)."""
    n, k = group_labels.size, int(group_labels.sum())
    out = [group_labels.copy()]
    for pos in itertools.combinations(range(n), k):
        lab = np.zeros(n, dtype=int)
        lab[list(pos)] = 1
        if not np.array_equal(lab, group_labels):
            out.append(lab)
    return out


def min_p_value(group_labels: np.ndarray, n_permutations: int | None = None) -> float:
    """Smallest p-value a group-level permutation test can reach.

    Exact enumeration: ``(1 + [balanced]) / C(n, k)`` — with equal class sizes the swapped
    labelling scores the same as the true one (a symmetric classifier), so it always ties.
    Monte Carlo with ``n_permutations``: ``1 / (n_permutations + 1)``, and never below the exact
    bound.

    Args:
        group_labels: ``[n_groups]`` 0/1.
        n_permutations: ``None`` for exact enumeration.

    Returns:
        The bound.
    """
    n, k = group_labels.size, int(group_labels.sum())
    exact = (2 if 2 * k == n else 1) / math.comb(n, k)
    if n_permutations is None:
        return exact
    return max(exact, 1.0 / (n_permutations + 1))


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Statistics of the training fold only, so nothing of the held-out model leaks in.
    m = train.mean(0)
    s = train.std(0)
    s[s == 0] = 1.0
    return (train - m) / s, (test - m) / s


def _logo_accuracy(X: np.ndarray, y: np.ndarray, groups: np.ndarray, C: float) -> tuple[float, dict[str, float], np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    pred = np.zeros_like(y)
    per_group: dict[str, float] = {}
    for gname in np.unique(groups):
        test = groups == gname
        train = ~test
        if np.unique(y[train]).size < 2:
            raise ValueError(f"holding out {gname!r} leaves one class in training: need >= 2 groups per class")
        Ztr, Zte = _standardize(X[train], X[test])
        # Newton-Cholesky: the same L2 objective as lbfgs, several times faster on tiny problems
        # (the permutation test refits it hundreds of times).
        clf = LogisticRegression(C=C, solver="newton-cholesky", max_iter=1000)
        clf.fit(Ztr, y[train])
        pred[test] = clf.predict(Zte)
        per_group[str(gname)] = float((pred[test] == y[test]).mean())
    return float(np.mean(list(per_group.values()))), per_group, pred


@dataclass
class SeparabilityResult:
    """Result of :func:`separability_test`.

    Attributes:
        accuracy: Leave-one-group-out accuracy (mean over groups of held-out accuracy).
        per_group: Held-out accuracy of each group.
        predictions: ``[n]`` held-out predictions per row.
        null: Accuracies of the permuted labellings (the true labelling excluded).
        p_value: ``P(null >= accuracy)``, the true labelling counted in (never 0).
        min_p_value: Smallest achievable p-value for these groups (see :func:`min_p_value`).
        n_groups: Groups (models).
        n_rows: Rows (checkpoints or runs).
        exact: True if every labelling was enumerated.
    """

    accuracy: float
    per_group: dict[str, float]
    predictions: np.ndarray
    null: np.ndarray
    p_value: float
    min_p_value: float
    n_groups: int
    n_rows: int
    exact: bool

    def summary(self) -> str:
        """One honest sentence."""
        kind = "exact" if self.exact else "Monte Carlo"
        return (
            f"leave-one-model-out accuracy {self.accuracy:.2f} over {self.n_groups} models "
            f"({self.n_rows} rows); {kind} group-permutation p = {self.p_value:.3f} "
            f"(smallest achievable p with these models: {self.min_p_value:.3f})"
        )


def separability_test(
    features: FeatureSet,
    *,
    n_permutations: int = 1000,
    C: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> SeparabilityResult:
    """Cross-validated classification with a group-level permutation test.

    Args:
        features: Rows, labels and groups (:func:`trend_features`).
        n_permutations: Enumerate all labellings when there are at most this many + 1, else
            draw this many random group-level permutations (seeded).
        C: Inverse L2 regularisation of the logistic regression.
        seed: Seed of the Monte Carlo permutations.
        progress: Show a tqdm bar.

    Returns:
        The :class:`SeparabilityResult`.
    """
    X, y, groups = features.X, features.y, features.groups
    names, glab = _group_labels(y, groups)
    counts = np.bincount(glab, minlength=2)
    if counts.min() < 2:
        raise ValueError(f"need at least 2 groups (models) per class, got {counts.tolist()}")
    acc, per_group, pred = _logo_accuracy(X, y, groups, C)
    n_lab = math.comb(names.size, int(glab.sum()))
    exact = n_lab <= n_permutations + 1
    if exact:
        perms = labelings(glab)[1:]
    else:
        rng = np.random.default_rng(seed)
        perms = [rng.permutation(glab) for _ in range(n_permutations)]
    index = {n: i for i, n in enumerate(names)}
    row_group = np.asarray([index[g] for g in groups])
    null = np.asarray(
        [_logo_accuracy(X, lab[row_group], groups, C)[0] for lab in tqdm(perms, desc="permutations", disable=not progress)]
    )
    # The observed labelling is one of the equally likely ones, so it counts in the numerator
    # and denominator (p is never 0); a small tolerance keeps float ties as ties.
    p = (1 + int(np.sum(null >= acc - 1e-12))) / (1 + null.size)
    return SeparabilityResult(
        accuracy=acc,
        per_group=per_group,
        predictions=pred,
        null=null,
        p_value=float(p),
        min_p_value=min_p_value(glab, None if exact else n_permutations),
        n_groups=int(names.size),
        n_rows=int(y.size),
        exact=exact,
    )


# --------------------------------------------------------------------------- book entry points


def checkpoint_trends(study: Study, *, epoch_stride: int = 2) -> dict[str, dict[str, Tensor]]:
    """Per preset and analysed checkpoint: global-IAV, attention entropy and accuracy.

    Built from the book's cached :func:`iavutils.analysis.iavs.checkpoint_analysis` (the same
    entries chapters 02–07 use, so nothing is recomputed when their parameters match).

    Args:
        study: What is analysed (:class:`~iavutils.analysis.study.Study`); its spec is the
            analysis of each checkpoint, whose ``progress`` shows a bar over the presets.
        epoch_stride: Every ``epoch_stride``-th checkpoint from 0, the last always included.

    Returns:
        ``{preset: {"epochs" [E], "global_iav" [E,L,H], "entropy" [E,L,H] (nats),
        "accuracy" [E] (validation accuracy from the finetuning metrics, NaN if missing)}}``.
    """
    from ..core.scores import attention_entropy, global_iav
    from .checkpoints import analysis_epochs, training_history
    from .iavs import checkpoint_analysis

    presets, dataset, run_dir, spec = study.presets, study.dataset, study.run_dir, study.spec
    out: dict[str, dict[str, Tensor]] = {}
    history = training_history(presets, dataset, run_dir)
    for p in tqdm(list(presets), desc="checkpoint trends", disable=not spec.progress):
        epochs = analysis_epochs(p, dataset, run_dir, epoch_stride)
        iav_l, ent_l, acc_l = [], [], []
        for e in epochs:
            r = checkpoint_analysis(p, dataset, e, run_dir=run_dir, spec=spec.replace(progress=False))
            iav_l.append(global_iav(r["iav"].double()))
            ent_l.append(attention_entropy(r["cls_attn"].double()).mean(0))
            acc = float("nan")
            if len(history) and "val_acc" in history:
                sel = history[(history["model"] == p) & (history["epoch"] == e)]["val_acc"]
                if len(sel) and sel.iloc[0] is not None:
                    acc = float(sel.iloc[0])
            acc_l.append(acc)
        out[p] = {
            "epochs": torch.tensor(epochs),
            "global_iav": torch.stack(iav_l),
            "entropy": torch.stack(ent_l),
            "accuracy": torch.tensor(acc_l, dtype=torch.float64),
        }
    return out


#: Feature sets of :func:`separability_report`: (name, trend key, summary).
FEATURE_SETS: tuple[tuple[str, str, str], ...] = (
    ("global-IAV", "global_iav", "layer_mean_std"),
    ("entropy (control)", "entropy", "layer_mean_std"),
    ("accuracy (control)", "accuracy", "layer_mean_std"),
)


def separability_report(
    trends: Mapping[str, Mapping[str, Tensor]],
    labels: Mapping[str, int],
    groups: Mapping[str, str] | None = None,
    *,
    unit: str = "checkpoint",
    feature_sets: Sequence[tuple[str, str, str]] = FEATURE_SETS,
    n_permutations: int = 1000,
    seed: int = 0,
) -> tuple[Any, dict[str, SeparabilityResult]]:
    """Run :func:`separability_test` for each feature set; a table and the full results.

    Args:
        trends: :func:`checkpoint_trends` output (``{run: {key: [E, ...]}}``).
        labels: ``{run: 1 self-supervised / 0 supervised}``.
        groups: ``{run: model}`` (default: each run is its own group).
        unit: ``"checkpoint"`` or ``"run"`` (see :func:`trend_features`).
        feature_sets: ``(name, trend key, summary)`` triples.
        n_permutations: Permutation budget (exact enumeration when it suffices).
        seed: Monte Carlo seed.

    Returns:
        ``(DataFrame with features, accuracy, p_value, min_p_value, n_models, n_rows, exact;
        {name: SeparabilityResult})``.
    """
    import pandas as pd

    rows, results = [], {}
    for name, key, summary in feature_sets:
        runs = {r: t[key] for r, t in trends.items() if key in t and torch.isfinite(torch.as_tensor(t[key])).any()}
        if len(runs) < len(trends):
            continue  # e.g. no accuracy recorded
        feats = trend_features(runs, labels, groups, unit=unit, summary=summary)
        res = separability_test(feats, n_permutations=n_permutations, seed=seed)
        results[name] = res
        rows.append({
            "features": name, "accuracy": res.accuracy, "p_value": res.p_value, "min_p_value": res.min_p_value,
            "n_models": res.n_groups, "n_rows": res.n_rows, "exact": res.exact,
        })
    return pd.DataFrame(rows), results
