"""The claims page: every claim of both papers, our statistic with a 95 % interval, a verdict.

Each claim is a :class:`Claim`: a per-model quantity ``q`` computed from per-image arrays
(:func:`model_data`, built from the chapters' cached
:func:`~iavutils.analysis.iavs.checkpoint_analysis` and
:func:`~iavutils.analysis.explanations.run_explanation_eval`), combined over the models either as
a **contrast** (mean over the self-supervised pretraining types minus mean over the supervised
ones) or as a **level** (mean over all pretraining types).

The interval is a hierarchical percentile bootstrap (:func:`bootstrap`): in each replicate, the
seeds of every pretraining type are resampled with replacement, then the images of every drawn
seed; ``q`` is recomputed on the resampled images. Presets of one pretraining type (same
pretraining, method and source, :func:`pretraining_type`) are its seeds.

Verdict rule (:func:`verdict`), for a paper side ``>`` (or ``<``) of a null value: *reproduced*
when the 95 % interval lies entirely on the paper's side, *contradicted* when entirely on the
other side, *inconclusive* otherwise. For ``≈`` (the paper says "no difference") with a margin
``m``: reproduced when the interval lies inside ``[null − m, null + m]``, contradicted when it
lies entirely outside, inconclusive otherwise.

The scratch control (a preset whose name contains ``scratch``) never enters a contrast; its own
``q`` with an image-bootstrap interval is shown beside, or "not in this run".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CLAIMS", "Claim", "bootstrap", "claims_table", "model_data", "pretraining_type",
           "study_claims", "summary", "verdict", "verdict_rule"]

Data = Mapping[str, np.ndarray]  # per-image arrays of one model (first axis: images)

NOT_IN_RUN = "not in this run"


@dataclass(frozen=True)
class Claim:
    """One claim of a paper and how we test it.

    Attributes:
        source: Where the paper makes it (``"IAV Fig. 7a"``).
        statement: The claim, in our words.
        statistic: What ``q`` is and how models are combined, in words.
        q: Per-model quantity from per-image arrays (NaN: not defined for this model).
        kind: ``"contrast"`` (self-supervised minus supervised) or ``"level"`` (mean of all).
        side: ``">"``, ``"<"`` (paper's side of ``null``) or ``"≈"`` (within ``margin``).
        null: The value the side refers to.
        margin: Half-width of "no difference" for ``≈``.
    """

    source: str
    statement: str
    statistic: str
    q: Callable[[Data], float]
    kind: str = "contrast"
    side: str = ">"
    null: float = 0.0
    margin: float = 0.0


def verdict(lo: float, hi: float, side: str, null: float = 0.0, margin: float = 0.0) -> str:
    """``reproduced``, ``contradicted`` or ``inconclusive`` from a 95 % interval (module docstring)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if side == ">":
        return "reproduced" if lo > null else "contradicted" if hi < null else "inconclusive"
    if side == "<":
        return "reproduced" if hi < null else "contradicted" if lo > null else "inconclusive"
    if side == "≈":
        if null - margin <= lo and hi <= null + margin:
            return "reproduced"
        return "contradicted" if lo > null + margin or hi < null - margin else "inconclusive"
    raise ValueError(f"side must be '>', '<' or '≈', got {side!r}")


def verdict_rule() -> str:
    """The verdict rule, in words, for the page."""
    return ("**Verdict rule.** *Reproduced* when the 95 % interval lies entirely on the paper's "
            "side of the null value, *contradicted* when it lies entirely on the other side, "
            "*inconclusive* otherwise. For a \"no difference\" claim (side ≈ with margin m): "
            "reproduced when the interval lies inside [null − m, null + m], contradicted when it "
            "lies entirely outside, inconclusive otherwise.")


def pretraining_type(info: Any) -> str:
    """The pretraining type of a preset's ``ModelInfo``: presets sharing it are seeds of one type."""
    return f"{info.pretraining} | {info.method} | {info.source}"


def _resample(data: Data, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in data.items()}


def _combine(values: Mapping[str, float], groups: Mapping[str, str], kind: str) -> float:
    """Mean over the types of each group, then the contrast or the level."""
    by_group: dict[str, list[float]] = {}
    for t, v in values.items():
        if math.isfinite(v):
            by_group.setdefault(groups[t], []).append(v)
    if kind == "level":
        pooled = [v for vs in by_group.values() for v in vs]
        return float(np.mean(pooled)) if pooled else math.nan
    if not by_group.get("self-supervised") or not by_group.get("supervised"):
        return math.nan
    return float(np.mean(by_group["self-supervised"]) - np.mean(by_group["supervised"]))


def bootstrap(data: Mapping[str, Data], types: Mapping[str, str], groups: Mapping[str, str],
              q: Callable[[Data], float], kind: str = "contrast", n_boot: int = 1000,
              seed: int = 0) -> tuple[float, float, float]:
    """Estimate and 95 % percentile interval, resampling seeds within types, then images.

    Args:
        data: Preset -> per-image arrays (all with the same first axis within a preset).
        types: Preset -> pretraining type (presets of one type are its seeds).
        groups: Type -> ``"self-supervised"`` or ``"supervised"``.
        q: Per-model quantity.
        kind: ``"contrast"`` or ``"level"`` (:class:`Claim`).
        n_boot: Bootstrap replicates.
        seed: Seeds the resampling.

    Returns:
        ``(estimate, low, high)``; NaN where a group has no model with a defined ``q``.
    """
    seeds: dict[str, list[str]] = {}
    for p in data:
        seeds.setdefault(types[p], []).append(p)

    estimate = _combine({t: _mean(np.array([q(data[p]) for p in ps])) for t, ps in seeds.items()},
                        groups, kind)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        per_type: dict[str, float] = {}
        for t, ps in seeds.items():
            vals = []
            for i in rng.integers(0, len(ps), len(ps)):  # the seeds of this type, with replacement
                n = len(next(iter(data[ps[i]].values())))
                vals.append(q(_resample(data[ps[i]], rng.integers(0, n, n))))  # then its images
            per_type[t] = _mean(np.array(vals))
        reps.append(_combine(per_type, groups, kind))
    reps_a = np.asarray(reps, dtype=float)
    reps_a = reps_a[np.isfinite(reps_a)]
    if not math.isfinite(estimate) or reps_a.size == 0:
        return estimate, math.nan, math.nan
    lo, hi = np.quantile(reps_a, [0.025, 0.975])
    return estimate, float(lo), float(hi)


def _fmt(est: float, lo: float, hi: float) -> str:
    if not math.isfinite(est):
        return "not defined in this run"
    return f"{est:+.3g} [{lo:+.3g}, {hi:+.3g}]"  # 3 significant digits: AUCs are ~10, entropy gaps ~1e-3


def claims_table(data: Mapping[str, Data], types: Mapping[str, str], groups: Mapping[str, str],
                 claims: Sequence[Claim] | None = None, scratch: Data | None = None,
                 n_boot: int = 1000, seed: int = 0) -> Any:
    """The claims table: one row per claim (see the module docstring for the rule).

    Args:
        data: Pretrained preset -> per-image arrays (the scratch control excluded).
        types: Preset -> pretraining type.
        groups: Type -> ``"self-supervised"`` or ``"supervised"``.
        claims: The claims (default :data:`CLAIMS`).
        scratch: The scratch control's per-image arrays, ``None`` when it is not in the run.
        n_boot: Bootstrap replicates.
        seed: Seeds the bootstrap.

    Returns:
        ``pandas.DataFrame`` with ``claim, paper says, statistic, side, ours [95 % CI], estimate,
        low, high, seeds per type, scratch control, verdict``.
    """
    import pandas as pd

    n_seeds: dict[str, int] = {}
    for p in data:
        n_seeds[types[p]] = n_seeds.get(types[p], 0) + 1
    seeds_text = ", ".join(f"{n}" for n in n_seeds.values())
    one_seed = all(n == 1 for n in n_seeds.values())
    rows = []
    for c in CLAIMS if claims is None else claims:
        est, lo, hi = bootstrap(data, types, groups, c.q, c.kind, n_boot, seed)
        if scratch is None:
            scr = NOT_IN_RUN
        else:
            scr = _fmt(*bootstrap({"scratch": scratch}, {"scratch": "scratch"}, {"scratch": "scratch"},
                                  c.q, "level", n_boot, seed))
        side = f"{c.side} {c.null:g}" + (f" ± {c.margin:g}" if c.side == "≈" else "")
        rows.append({
            "claim": c.source, "paper says": c.statement, "statistic": c.statistic, "side": side,
            "ours [95 % CI]": _fmt(est, lo, hi), "estimate": est, "low": lo, "high": hi,
            "seeds per type": "1 (one seed per preset)" if one_seed else seeds_text,
            "scratch control": scr, "verdict": verdict(lo, hi, c.side, c.null, c.margin),
        })
    return pd.DataFrame(rows)


def summary(table: Any) -> str:
    """One sentence counting the verdicts of a claims table (for the page's prose)."""
    counts = table["verdict"].value_counts()
    parts = [f"{int(counts.get(v, 0))} {v}" for v in ("reproduced", "contradicted", "inconclusive")]
    return f"Of {len(table)} claims in this run: " + ", ".join(parts) + "."


# ------------------------------------------------------------------------------ the quantities


def _mean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan


def _layers(d: Data, key: str) -> np.ndarray:
    """Per-layer mean over images and heads, ``[L]``."""
    return np.nanmean(d[key], axis=(0, 2))


def _late_iav(d: Data) -> float:
    L = d["iav"].shape[1]
    return _mean(d["iav"][:, L // 2:])


def _iav_slope(d: Data) -> float:
    y = _layers(d, "iav")
    return float(np.polyfit(np.arange(1, len(y) + 1), y, 1)[0])


def _aav_drop(d: Data) -> float:
    if "aav" not in d:
        return math.nan  # the AAV reference itself: its AAV is its IAV
    return _mean(d["iav"]) - _mean(d["aav"])


def _high_ia_last(d: Data) -> float:
    return float((np.nanmedian(d["iav"][:, -1], axis=0) > 0.5).mean())


def _head_share(d: Data) -> float:
    """Share of the IA-Scores' variance that the head's identity explains (one-way ICC).

    The variance of the head means also holds the images' noise (within-head variance / N);
    it is subtracted, else the share grows as fewer images are analysed.
    """
    s = d["iav"].reshape(len(d["iav"]), -1)
    within = float(np.nanmean(np.nanvar(s, axis=0, ddof=1)))
    between = float(np.nanvar(np.nanmean(s, axis=0))) - within / len(s)
    return between / (between + within) if between + within > 0 else math.nan


def _fisher_last(d: Data) -> float:
    """Between-class over within-class variance of the last layer's IAV."""
    x, y = d["iav"][:, -1], d["labels"]
    classes = np.unique(y)
    if len(classes) < 2:
        return math.nan
    mu = np.nanmean(x, axis=0)
    between = sum((y == c).sum() * np.nansum((np.nanmean(x[y == c], axis=0) - mu) ** 2) for c in classes)
    within = sum(np.nansum((x[y == c] - np.nanmean(x[y == c], axis=0)) ** 2) for c in classes)
    return float(between / within) if within > 0 else math.nan


def _key_mean(key: str) -> Callable[[Data], float]:
    return lambda d: _mean(d[key]) if key in d else math.nan


def _auc_diff(a: str, b: str) -> Callable[[Data], float]:
    return lambda d: _mean(d[a] - d[b]) if a in d and b in d else math.nan


CLAIMS: tuple[Claim, ...] = (
    Claim("IAV Fig. 3a", "Final accuracy does not depend on the pretraining type: all models "
          "finetune to a similar accuracy.", "accuracy on the analysed images, last epoch; "
          "self-supervised − supervised", _key_mean("correct"), side="≈", margin=0.03),
    Claim("IAV Fig. 3b–d", "Robustness to blur and jigsaw shifts is not a property of "
          "self-supervised pretraining.", "accuracy on the analysed images after blur/jigsaw "
          "(not computed per image by any chapter yet)", _key_mean("shift_correct"), side="≈", margin=0.03),
    Claim("IAV Fig. 4", "SmoothGrad changes less during finetuning for self-supervised models.",
          "normalised distance of SmoothGrad, first finetuned vs last epoch; self-supervised − "
          "supervised", _key_mean("sg_change"), side="<"),
    Claim("IAV Fig. 5", "Masking the patches the attention ranks first hurts accuracy less than "
          "masking SmoothGrad's: attention alone does not explain the decision.",
          "patch-masking AUC, last-layer attention − SmoothGrad (higher: attention masks less "
          "relevant patches); mean of all models", _auc_diff("auc_patch_attention", "auc_patch_smoothgrad"),
          kind="level"),
    Claim("IAV Fig. 6a", "Supervised models have the higher attention entropy in the early layers.",
          "first-layer attention entropy; self-supervised − supervised",
          lambda d: _layers(d, "entropy")[0], side="<"),
    Claim("IAV Fig. 6b", "Self-supervised models have the higher attention entropy in the last layer.",
          "last-layer attention entropy; self-supervised − supervised",
          lambda d: _layers(d, "entropy")[-1]),
    Claim("IAV Fig. 7a", "Self-supervised models keep higher IA-Scores in the later layers.",
          "mean IA-Score of the later half of the layers; self-supervised − supervised", _late_iav),
    Claim("IAV Fig. 7b", "Against the DINO-like model's SmoothGrad (AAV), supervised models lose "
          "more agreement than self-supervised ones.", "IAV − AAV, mean over layers and heads "
          "(the AAV reference excluded); self-supervised − supervised", _aav_drop, side="<"),
    Claim("IAV Fig. 8", "Supervised models have Low-IA-Heads in the last layer, self-supervised "
          "ones mostly High-IA-Heads.", "share of last-layer heads with median IA-Score > 0.5; "
          "self-supervised − supervised", _high_ia_last),
    Claim("IAV Fig. 9", "Classes separate more clearly by the last layer's IAV in supervised models.",
          "between/within-class variance of the last layer's IAV; self-supervised − supervised",
          _fisher_last, side="<"),
    Claim("IAV: property of the head", "The IA-Score is a property of the head: each head has its "
          "own range of agreement.", "share of the IA-Scores' variance explained by the head; mean "
          "of all models", _head_share, kind="level", null=0.5),
    Claim("IAV: trend separates types", "The IAV trend over the layers separates the pretraining "
          "types: it falls for supervised models, not for self-supervised ones.",
          "slope of the per-layer mean IA-Score over the layers; self-supervised − supervised", _iav_slope),
    Claim("GMAR beats rollout", "GMAR explains the decision better than attention rollout.",
          "positive-perturbation AUC (lower: better), GMAR (L1) − rollout; mean of all models",
          _auc_diff("auc_pos_gmar_l1", "auc_pos_rollout"), kind="level", side="<"),
)


# ------------------------------------------------------------------------------ from the run


def model_data(study: Any, preset: str, reference_sg: np.ndarray | None = None,
               fractions: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """Per-image arrays of one model from the chapters' cached computations.

    Args:
        study: The :class:`~iavutils.analysis.study.Study`.
        preset: A preset of the study.
        reference_sg: The AAV reference's SmoothGrad ``[N,H,W]`` on the same images (``None``:
            no AAV, e.g. for the reference itself).
        fractions: Removed fractions of chapter 08's perturbation curves (``None``: its default).

    Returns:
        ``iav, entropy [N,L,H]``, ``correct, labels, sg_change [N]``, ``aav`` (with a reference),
        ``auc_patch_*`` and ``auc_pos_*`` ``[N]`` (per-image AUCs of chapter 08's curves).
    """
    import torch

    from ..core.attribution import patch_pool
    from ..core.metrics import perturbation_auc
    from ..core.scores import attention_entropy, ia_score
    from .checkpoints import checkpoint_epochs
    from .dynamics import normalized_distance
    from .explanations import run_explanation_eval
    from .iavs import checkpoint_analysis

    ds, run, spec = study.dataset, study.run_dir, study.spec
    epochs = checkpoint_epochs(preset, ds, run)
    last = checkpoint_analysis(preset, ds, epochs[-1], run_dir=run, spec=spec)
    # Change is measured from the first finetuned epoch: epoch 0 has a random head.
    first = checkpoint_analysis(preset, ds, epochs[min(1, len(epochs) - 1)], run_dir=run, spec=spec)
    out = {
        "iav": last["iav"], "entropy": attention_entropy(last["cls_attn"]), "labels": last["labels"],
        "correct": (last["logits"].argmax(-1) == last["labels"]).double(),
        "sg_change": normalized_distance(first["smoothgrad"], last["smoothgrad"], dims=2),
    }
    if reference_sg is not None:
        P = last["cls_attn"].shape[-1]
        g = int(round(math.sqrt(P)))  # the reference has the same input and patch grid (checked below)
        ref = torch.as_tensor(reference_sg)
        if g * g != P or ref.shape != last["smoothgrad"].shape:
            raise ValueError(f"{preset}: AAV reference maps do not match its geometry")
        out["aav"] = ia_score(patch_pool(ref, (g, g)), last["cls_attn"])
    kw = {} if fractions is None else {"fractions": fractions}
    ev = run_explanation_eval(study, preset, **kw)
    f = ev["fractions"]
    for key in [k for k in ev if k.startswith(("positive.", "patch_positive."))]:
        kind, method = key.split(".", 1)
        name = "auc_patch_" if kind == "patch_positive" else "auc_pos_"
        out[name + method.replace("_patch", "")] = perturbation_auc(f, ev[key].double().T)
    return {k: torch.as_tensor(v).double().cpu().numpy() for k, v in out.items()}


def study_claims(study: Any, *, fractions: Sequence[float] | None = None, n_boot: int = 1000) -> Any:
    """The claims table of a study's run (:func:`claims_table` on :func:`model_data`).

    The chapters' computations are cached in the run directory, so after they ran this is cheap.
    """
    from ..world.models import PRESETS
    from .global_iav import default_aav_reference
    from .iavs import checkpoint_analysis

    scratch = [p for p in study.presets if "scratch" in p]
    pretrained = [p for p in study.presets if p not in scratch]
    ref = default_aav_reference(pretrained)
    ref_sg = None if ref is None else checkpoint_analysis(
        ref, study.dataset, run_dir=study.run_dir, spec=study.spec)["smoothgrad"]
    data = {p: model_data(study, p, None if p == ref else ref_sg, fractions) for p in pretrained}
    types = {p: pretraining_type(PRESETS[p]) for p in pretrained}
    groups = {types[p]: PRESETS[p].pretraining for p in pretrained}
    scr = model_data(study, scratch[0], ref_sg, fractions) if scratch else None
    return claims_table(data, types, groups, scratch=scr, n_boot=n_boot, seed=study.spec.seed)
