"""Chapter 10: does a low IA-Score mean a head does not matter? Statistics, tables and verdict.

The ablation itself (hooks, single heads, groups, GMAR weights) is :mod:`iavutils.analysis.ablation`.
This module runs it on a finetuned checkpoint with its IA-Scores (cached), relates the drops to
the IA-Score and the GMAR weight (Spearman with a bootstrap interval, one-sided Mann–Whitney),
builds the chapter's tables and writes its verdict ("Yes", "No", "Cannot tell") from those tests
by the rule :data:`VERDICT_RULE`, which the chapter prints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .ablation import group_ablation, head_ablation, mean_gmar_weights
from .study import Study

__all__ = [
    "ALPHA",
    "GROUPS",
    "VERDICT_RULE",
    "ablation_frame",
    "ablation_scores",
    "ablation_verdict",
    "verdict_case",
    "clean_table",
    "correlation_table",
    "group_frame",
    "head_frame",
    "head_group_comparison",
    "rank_correlation",
    "run_head_ablation",
]

def _as_float64(v: Any) -> Tensor:
    """Tensor or array-like (also read-only numpy views from pandas) → float64 tensor copy."""
    if isinstance(v, Tensor):
        return v.detach().cpu().double()
    return torch.tensor(np.asarray(v, dtype=np.float64))


def rank_correlation(a: Tensor, b: Tensor, n_boot: int = 0, seed: int = 0) -> dict[str, float]:
    """Spearman rank correlation of two per-head quantities, ignoring NaN pairs.

    Args:
        a: Any shape (e.g. ``[L,H]`` logit drop); tensor or array-like.
        b: Same shape (e.g. ``[L,H]`` global-IAV).
        n_boot: Bootstrap resamples of the heads (pairs) for a 95% percentile interval of ρ;
            0: no interval.
        seed: Bootstrap seed.

    Returns:
        ``{"rho", "p_value", "n"}`` (two-sided p-value of scipy's test; NaN if ``n < 3`` or a
        side is constant), plus ``"low"``, ``"high"`` (the interval) when ``n_boot > 0``.
    """
    from scipy.stats import spearmanr

    x = _as_float64(a).flatten()
    y = _as_float64(b).flatten()
    ok = torch.isfinite(x) & torch.isfinite(y)
    n = int(ok.sum())
    nan = float("nan")
    ci = {"low": nan, "high": nan} if n_boot > 0 else {}
    if n < 3 or x[ok].unique().numel() < 2 or y[ok].unique().numel() < 2:
        return {"rho": nan, "p_value": nan, "n": n, **ci}
    res = spearmanr(x[ok].numpy(), y[ok].numpy())
    if n_boot > 0:
        ci = _spearman_interval(x[ok].numpy(), y[ok].numpy(), n_boot, seed)
    return {"rho": float(res.statistic), "p_value": float(res.pvalue), "n": n, **ci}


def _spearman_interval(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    """95% percentile bootstrap interval of Spearman's ρ, resampling (x, y) pairs."""
    from scipy.stats import rankdata

    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    rx, ry = rankdata(x[idx], axis=1), rankdata(y[idx], axis=1)  # ties: average ranks, as spearmanr
    rx -= rx.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    den = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, (rx * ry).sum(1) / den, np.nan)  # a constant resample has no ρ
    lo, hi = np.nanquantile(rho, [0.025, 0.975])
    return {"low": float(lo), "high": float(hi)}


def head_group_comparison(drop: Tensor, high_ia: Tensor) -> dict[str, float]:
    """Compare the single-head drops of Low-IA and High-IA heads (Mann–Whitney U).

    Args:
        drop: ``[L,H]`` (or flat) per-head drop; tensor or array-like.
        high_ia: Same shape, bool head types.

    Returns:
        ``{"mean_low", "mean_high", "n_low", "n_high", "p_value", "p_high_greater",
        "p_low_greater"}``: the two-sided p and the two one-sided ones (alternative: High-IA
        drops are stochastically greater, resp. smaller); NaN if a group has no head.
    """
    from scipy.stats import mannwhitneyu

    d = _as_float64(drop)
    hi = _as_float64(high_ia) > 0.5
    lo_v, hi_v = d[~hi & torch.isfinite(d)], d[hi & torch.isfinite(d)]
    p = {"p_value": float("nan"), "p_high_greater": float("nan"), "p_low_greater": float("nan")}
    if lo_v.numel() and hi_v.numel():
        p["p_value"] = float(mannwhitneyu(lo_v.numpy(), hi_v.numpy(), alternative="two-sided").pvalue)
        for key, alt in (("p_high_greater", "greater"), ("p_low_greater", "less")):
            p[key] = float(mannwhitneyu(hi_v.numpy(), lo_v.numpy(), alternative=alt).pvalue)
    return {
        "mean_low": float(lo_v.mean()) if lo_v.numel() else float("nan"),
        "mean_high": float(hi_v.mean()) if hi_v.numel() else float("nan"),
        "n_low": int(lo_v.numel()),
        "n_high": int(hi_v.numel()),
        **p,
    }


def ablation_scores(
    single: dict[str, Tensor], ia: Tensor, gmar_weight: Tensor | None = None, which: str = "logit_drop"
) -> dict[str, dict[str, float]]:
    """Rank correlations of a single-head drop with the IA-Score and the GMAR weight.

    Args:
        single: :func:`head_ablation` result.
        ia: ``[L,H]`` global-IAV (mean IA-Score per head).
        gmar_weight: ``[L,H]`` mean GMAR weight (optional).
        which: ``"logit_drop"`` or ``"accuracy_drop"``.

    Returns:
        ``{"ia_score": rank_correlation(...), "gmar_weight": ...}``.
    """
    out = {"ia_score": rank_correlation(single[which], ia)}
    if gmar_weight is not None:
        out["gmar_weight"] = rank_correlation(single[which], gmar_weight)
    return out


# --------------------------------------------------------------------------- cached experiment

_ABLATION_VERSION = 2


def run_head_ablation(
    study: Study,
    preset: str,
    *,
    ablation_images: int = 256,
    mode: str = "zero",
    max_subsets: int = 20,
    epoch: int | None = None,
) -> dict[str, Tensor]:
    """Single-head and group ablation of a finetuned checkpoint with its IA-Scores, cached.

    IA-Scores (global-IAV, head types) come from the book's cached
    :func:`iavutils.analysis.iavs.checkpoint_analysis` of ``num_images`` images (shared with the
    other chapters); the ablation runs on the first ``ablation_images`` of the same seeded
    validation order (a superset), where forwards are cheap; GMAR weights are averaged over the
    analysis images for the same target classes.

    Args:
        study: The dataset, run and IA-Score analysis (:class:`~iavutils.analysis.study.Study`);
            from its spec: ``num_images`` images, SmoothGrad ``n_samples`` and ``noise_level``,
            image subset and noise ``seed``, ``target`` (``"label"`` or ``"predicted"``: class
            explained by SmoothGrad and GMAR), ``device`` and ``progress`` (bars).
        preset: Preset finetuned in the run.
        ablation_images: Images for the ablation (labels are the targets of the drops).
        mode: ``"zero"`` or ``"mean"`` (mean over the ablation images, per token position).
        max_subsets: Same-size head subsets averaged for each control group
            (:func:`group_ablation`); the cost of the group ablations grows with it.
        epoch: Checkpoint (``None``: the last one).

    Returns:
        ``ia`` ``[L,H]`` (global-IAV), ``high_ia`` ``[L,H]`` (bool as float), ``gmar_weight``
        ``[L,H]``, ``single.*`` (:func:`head_ablation`, without per-image tensors),
        ``group.*`` (:func:`group_ablation` with the paper's head types) and ``rgroup.*`` (with
        the relative split ``high_rel``: global-IAV above the model's median over its heads).
    """
    from ..core.scores import global_iav, head_types
    from ..world.store import ResultStore
    from ..world.training import load_checkpoint
    from .checkpoints import checkpoint_key, chosen_epoch, resolve_device
    from .iavs import checkpoint_analysis
    from .images import load_images
    from .run_dirs import resolve_run_dir

    dataset, spec = study.dataset, study.spec
    progress = spec.progress
    run = resolve_run_dir(study.run_dir)
    dev = resolve_device(spec.device)
    epoch = chosen_epoch(preset, dataset, run, epoch)
    key = {
        # The field names of the first version of this cache ("version", "fingerprint") keep it valid.
        **checkpoint_key(preset, dataset, epoch, run, _ABLATION_VERSION, version_field="version", fingerprint_field="fingerprint"),
        **spec.cache_key(),
        "ablation_images": ablation_images, "mode": mode,
    }
    if max_subsets != 20:  # the default keeps the keys (and caches) of earlier runs
        key["max_subsets"] = int(max_subsets)

    def compute() -> dict[str, Tensor]:
        analysis = checkpoint_analysis(preset, dataset, epoch, run_dir=run, spec=spec)
        model, info = load_checkpoint(run, dataset, preset, epoch=epoch, device=dev)
        iavs = analysis["iav"].double()
        high = head_types(iavs)
        small = load_images(dataset, info, spec.num_images, spec.seed)
        gmar_w = mean_gmar_weights(model, small["x"].to(dev), analysis["targets"].to(dev), batch_size=64)
        data = load_images(dataset, info, ablation_images, spec.seed)
        xy = (data["x"].to(dev), data["y"].to(dev))
        single = head_ablation(model, xy, mode=mode, progress=progress)
        drops: dict[tuple[int, tuple[int, ...]], tuple[float, float]] = {}  # shared by both splits
        groups = group_ablation(model, xy, high, mode=mode, max_subsets=max_subsets, progress=progress,
                                cache=drops)
        ia = global_iav(iavs)
        # The paper's 0.5 threshold can leave a model without Low-IA heads; the relative split
        # (above / at-or-below the model's median global-IAV) always has both kinds.
        rel_high = ia > torch.nanquantile(ia.flatten(), 0.5)
        rgroups = group_ablation(model, xy, rel_high, mode=mode, max_subsets=max_subsets, progress=progress,
                                 cache=drops)
        out = {"ia": ia.float(), "high_ia": high.float(), "high_rel": rel_high.float(), "gmar_weight": gmar_w.float()}
        out.update({f"rgroup.{k}": v.float() for k, v in rgroups.items()})
        for k in ("accuracy", "logit", "accuracy_drop", "logit_drop"):
            out[f"single.{k}"] = single[k].float()
        out.update({f"group.{k}": v.float() for k, v in groups.items()})
        return out

    return ResultStore(run).cached("head_ablation", key, compute, meta={"preset": preset})


def ablation_frame(results: dict[str, dict[str, Tensor]]) -> Any:
    """Per-head rows of :func:`run_head_ablation` results for plotting.

    Args:
        results: ``{model: run_head_ablation(...)}``.

    Returns:
        ``pandas.DataFrame`` with ``model, layer (1-based), head, ia, high_ia, high_rel,
        gmar_weight, accuracy_drop (percentage points), logit_drop``.
    """
    import pandas as pd

    rows = []
    for name, r in results.items():
        L, H = r["ia"].shape
        for l in range(L):
            for h in range(H):
                rows.append({
                    "model": name, "layer": l + 1, "head": h, "ia": float(r["ia"][l, h]),
                    "high_ia": bool(r["high_ia"][l, h] > 0.5),
                    "high_rel": bool(r["high_rel"][l, h] > 0.5) if "high_rel" in r else None,
                    "gmar_weight": float(r["gmar_weight"][l, h]),
                    "accuracy_drop": 100.0 * float(r["single.accuracy_drop"][l, h]),
                    "logit_drop": float(r["single.logit_drop"][l, h]),
                })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the chapter's tables

#: ``(label, key)`` of the groups of :func:`group_frame`, in plotting order.
GROUPS: tuple[tuple[str, str], ...] = (
    ("high-IA heads", "high"), ("same-size control (high)", "high_control"),
    ("low-IA heads", "low"), ("same-size control (low)", "low_control"),
    ("all heads", "all"),
)


def clean_table(results: Mapping[str, Mapping[str, Tensor]], models: Sequence[str]) -> Any:
    """Clean accuracy and head-type counts per model (the chapter's first table).

    Args:
        results: ``{model: run_head_ablation(...)}``.
        models: Models in display order.

    Returns:
        ``pandas.DataFrame`` with ``model, clean accuracy (%), High-IA heads, Low-IA heads,
        lowest global-IAV``.
    """
    import pandas as pd

    return pd.DataFrame({"model": list(models),
                         "clean accuracy (%)": [100 * float(results[p]["single.accuracy"]) for p in models],
                         "High-IA heads": [int(results[p]["high_ia"].sum()) for p in models],
                         "Low-IA heads": [int((results[p]["high_ia"] < 0.5).sum()) for p in models],
                         "lowest global-IAV": [float(results[p]["ia"].min()) for p in models]})


def head_frame(results: Mapping[str, Mapping[str, Tensor]], models: Sequence[str]) -> Any:
    """:func:`ablation_frame` with ``model`` ordered as ``models`` and a ``head type`` column."""
    import pandas as pd

    heads = ablation_frame(dict(results))
    heads["model"] = pd.Categorical(heads["model"], list(models))
    heads["head type"] = heads["high_ia"].map({True: "High-IA", False: "Low-IA"})
    return heads


def correlation_table(heads: Any, models: Sequence[str], n_boot: int = 2000, seed: int = 0) -> Any:
    """Per model and pooled: rank correlations of the single-head drops and the two head splits.

    Args:
        heads: :func:`head_frame`.
        models: Models in display order.
        n_boot: Bootstrap resamples of the heads for the interval of ρ(logit drop, IA-Score).
        seed: Bootstrap seed.

    Returns:
        ``pandas.DataFrame`` indexed by model (plus ``"all models (pooled)"``) with the ρ and
        p-values of the logit/accuracy drop against the IA-Score (with a 95% bootstrap interval)
        and the GMAR weight, the mean drops and Mann–Whitney p of the paper's split, and of the
        halves (``high_rel``) also the two one-sided p-values the verdict reads.
    """
    import pandas as pd

    rows = []
    for p in list(models) + ["all models (pooled)"]:
        sub = heads if p.startswith("all") else heads[heads["model"] == p]
        r_ia = rank_correlation(sub["logit_drop"].to_numpy(), sub["ia"].to_numpy(), n_boot=n_boot, seed=seed)
        r_gm = rank_correlation(sub["logit_drop"].to_numpy(), sub["gmar_weight"].to_numpy())
        r_acc = rank_correlation(sub["accuracy_drop"].to_numpy(), sub["ia"].to_numpy())
        cmp = head_group_comparison(sub["logit_drop"].to_numpy(), sub["high_ia"].to_numpy())
        rel = head_group_comparison(sub["logit_drop"].to_numpy(), sub["high_rel"].to_numpy())
        rows.append({"model": p, "heads": r_ia["n"],
                     "ρ(logit drop, IA-Score)": r_ia["rho"], "p (IA)": r_ia["p_value"],
                     "ρ 95% low": r_ia.get("low", float("nan")), "ρ 95% high": r_ia.get("high", float("nan")),
                     "ρ(accuracy drop, IA-Score)": r_acc["rho"],
                     "ρ(logit drop, GMAR weight)": r_gm["rho"], "p (GMAR)": r_gm["p_value"],
                     "mean drop Low-IA": cmp["mean_low"], "mean drop High-IA": cmp["mean_high"],
                     "Mann–Whitney p": cmp["p_value"],
                     "mean drop lower half": rel["mean_low"], "mean drop upper half": rel["mean_high"],
                     "Mann–Whitney p (halves)": rel["p_value"],
                     "p (upper > lower)": rel["p_high_greater"], "p (lower > upper)": rel["p_low_greater"]})
    return pd.DataFrame(rows).set_index("model")


def group_frame(results: Mapping[str, Mapping[str, Tensor]], models: Sequence[str], prefix: str = "rgroup") -> Any:
    """Per model, layer and group (:data:`GROUPS`): logit and accuracy drop of the group ablations.

    Args:
        results: ``{model: run_head_ablation(...)}``.
        models: Models in display order.
        prefix: ``"group"`` (the paper's 0.5 split) or ``"rgroup"`` (the relative split).

    Returns:
        ``pandas.DataFrame`` with ``model, layer (1-based), group, logit drop, accuracy drop (pp)``;
        empty groups (NaN) dropped.
    """
    import pandas as pd

    rows = []
    for p in models:
        r = results[p]
        for l in range(r[f"{prefix}.n_high"].shape[0]):
            for grp, key in GROUPS:
                rows.append({"model": p, "layer": l + 1, "group": grp,
                             "logit drop": float(r[f"{prefix}.{key}_logit_drop"][l]),
                             "accuracy drop (pp)": 100 * float(r[f"{prefix}.{key}_accuracy_drop"][l])})
    return pd.DataFrame(rows).dropna()


# --------------------------------------------------------------------------- the chapter's verdict

#: Significance level of the verdict's one-sided tests (the ρ interval is the matching 95% one).
ALPHA = 0.05

#: The verdict's rule as the chapter prints it (``{alpha}``: :data:`ALPHA`).
VERDICT_RULE = (
    "Rule (α = {alpha}, applied to each model and to all heads pooled; heads split at their model's "
    "median global-IAV): **Yes** (a lower IA-Score goes with a smaller effect) when ablating an "
    "upper-half head lowers the true-class logit more than a lower-half one (one-sided Mann–Whitney, "
    "p ≤ α) *and* the 95 % bootstrap interval of ρ(logit drop, IA-Score) lies above 0; **No** when "
    "both point the other way (lower-half heads cost more, one-sided p ≤ α, and the interval lies "
    "below 0); **Cannot tell** otherwise."
)


def verdict_case(p_upper: float, p_lower: float, rho_low: float, rho_high: float, alpha: float = ALPHA) -> str:
    """The rule of :data:`VERDICT_RULE` on one set of tests: ``"Yes"``, ``"No"`` or ``"Cannot tell"``.

    Args:
        p_upper: One-sided p of "upper-half drops are greater".
        p_lower: One-sided p of "lower-half drops are greater".
        rho_low: Lower end of the 95% interval of ρ(logit drop, IA-Score).
        rho_high: Upper end of that interval.
        alpha: Significance level.

    Returns:
        The case; NaN anywhere (an empty half, a constant drop) can only give ``"Cannot tell"``.
    """
    if p_upper <= alpha and rho_low > 0:
        return "Yes"
    if p_lower <= alpha and rho_high < 0:
        return "No"
    return "Cannot tell"


def _tests(c: Any) -> str:
    """The numbers a row's verdict is read from, in words."""
    return (f"{c['mean drop lower half']:.3f} vs {c['mean drop upper half']:.3f} logits per ablated "
            f"lower-/upper-half head, one-sided p = {c['p (upper > lower)']:.2g} (upper > lower) and "
            f"{c['p (lower > upper)']:.2g} (lower > upper); ρ(logit drop, IA-Score) = "
            f"{c['ρ(logit drop, IA-Score)']:.2f} [{c['ρ 95% low']:.2f}, {c['ρ 95% high']:.2f}]")


def _case(c: Any, alpha: float) -> str:
    """:func:`verdict_case` on one row of :func:`correlation_table`."""
    return verdict_case(c["p (upper > lower)"], c["p (lower > upper)"], c["ρ 95% low"], c["ρ 95% high"], alpha)


def ablation_verdict(
    corr: Any, groups_rel: Any, clean: Any, models: Sequence[str], label: Callable[[str], str] = str,
    alpha: float = ALPHA,
) -> str:
    """The chapter's answer in Markdown: the rule, one line per model, then the pooled verdict.

    Every verdict ("Yes", "No", "Cannot tell") follows :data:`VERDICT_RULE` (:func:`verdict_case`)
    from the one-sided Mann–Whitney tests of the halves and the bootstrap interval of ρ in
    ``corr``; the text states the rule and the numbers it was read from.

    Args:
        corr: :func:`correlation_table`.
        groups_rel: :func:`group_frame` of the relative split (``"rgroup"``).
        clean: :func:`clean_table`.
        models: Models in display order.
        label: Display name of a model (e.g. ``iavutils.publish.plots.model_label``).
        alpha: Significance level of the one-sided tests.

    Returns:
        Markdown text.
    """
    lines = [VERDICT_RULE.format(alpha=alpha), ""]
    pooled = corr.loc["all models (pooled)"]
    for p in models:
        c = corr.loc[p]
        sub = groups_rel[groups_rel["model"] == p]
        low = sub[sub["group"] == "low-IA heads"]["logit drop"]
        ctl = sub[sub["group"] == "same-size control (low)"]["logit drop"]
        rel = "less" if low.mean() < ctl.mean() else "more"
        n_low = int(clean.set_index("model").loc[p, "Low-IA heads"])
        lines.append(f"- **{label(p)}**: **{_case(c, alpha)}** ({_tests(c)}). {n_low} Low-IA head(s) by the "
                     f"paper's threshold; removing a layer's lower-IA half lowers the true-class logit by "
                     f"{low.mean():.3f} on average vs {ctl.mean():.3f} for same-size sets of that layer's heads "
                     f"({rel}); ρ(logit drop, GMAR weight) = {c['ρ(logit drop, GMAR weight)']:.2f}.")
    case = _case(pooled, alpha)
    head = f"**{case}** (all heads pooled: {_tests(pooled)})."
    if case == "Yes":
        verdict = (f"{head} Heads with low IA-Scores matter less here; a smaller effect is not no effect: "
                   f"check the per-layer controls above before calling them unimportant.")
    elif case == "No":
        verdict = (f"{head} The heads with the lowest IA-Scores cost more than the others when ablated: a "
                   f"low IA-Score says that a head looks elsewhere than SmoothGrad, not that the decision "
                   f"ignores it.")
    else:
        verdict = (f"{head} The tests do not show that heads with low IA-Scores matter less (or more) than "
                   f"the others; with these heads and images the IA-Score does not tell whether a head "
                   f"matters.")
    if not bool((clean["Low-IA heads"] > 0).any()):
        verdict += (" With the paper's own 0.5 threshold there is no Low-IA head in this run, so the "
                    "paper's question is answered here with the relative split.")
    return "\n".join(lines) + "\n\n" + verdict
