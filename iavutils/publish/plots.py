"""Seaborn figures for chapters 00–07, one per paper figure (IAV paper, Figs. 2–9).

Every function takes the tidy frames of the chapter modules of :mod:`iavutils.analysis` and
returns a ``matplotlib`` figure. The colours, labels and style are :mod:`iavutils.publish.style`
(importable from here too); chapters 08, 10 and 11 draw with :mod:`iavutils.publish.figures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from . import style
from .style import (  # the colours and labels, importable from here as before
    HIGH_COLOR,
    LOW_COLOR,
    METHOD_COLORS,
    MODEL_COLORS,
    MODEL_LABELS,
    _GREY,
    epoch_shades,
    model_color,
    model_label,
    model_palette,
    SCALE_LABEL,
    common_scale,
    map_entropy,
    relative_to_uniform,
    scale_colorbar,
    setup,
)

# The colours and labels of style stay public here, so a figure cell needs one import.
__all__ = [
    *style.__all__,
    "accuracy_curves",
    "robustness_curves",
    "training_dynamics",
    "masking_curves",
    "head_profiles",
    "entropy_boxes",
    "global_iav_heatmaps",
    "head_boxes",
    "tsne_grid",
    "separability_curves",
    "example_maps",
]

def _models(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["model"]))


def _legend_models(fig: Figure, presets: Sequence[str], **kw: Any) -> None:
    handles = [Line2D([], [], color=model_color(p), lw=2, label=model_label(p)) for p in presets]
    fig.legend(handles=handles, loc=kw.pop("loc", "lower center"), ncol=kw.pop("ncol", len(presets)),
               frameon=False, bbox_to_anchor=kw.pop("bbox_to_anchor", (0.5, -0.02)), **kw)


# ----------------------------------------------------------------------------- Fig. 3


def accuracy_curves(history: pd.DataFrame, metric: str = "val_acc", title: str | None = None) -> Figure:
    """Fig. 3a: accuracy per finetuning epoch, one line per model (train accuracy dashed)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for p in _models(history):
        h = history[history["model"] == p].sort_values("epoch")
        if metric in h and h[metric].notna().any():
            ax.plot(h["epoch"], 100 * h[metric], marker="o", ms=3, color=model_color(p), label=model_label(p))
        if "train_acc" in h and metric != "train_acc" and h["train_acc"].notna().any():
            ax.plot(h["epoch"], 100 * h["train_acc"], ls="--", lw=1, color=model_color(p), alpha=0.6)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "Validation accuracy (solid) and training accuracy (dashed)")
    ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


def robustness_curves(df: pd.DataFrame) -> Figure:
    """Fig. 3b–d: accuracy under Gaussian blur, jigsaw g=2 and jigsaw g=patch grid."""
    kinds = [k for k in ("blur", "jigsaw-2", "jigsaw-grid") if k in set(df["shift_kind"])]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.4), squeeze=False)
    xlabels = {"blur": "blur degree (Gaussian σ, pixels)", "jigsaw-2": "number of swaps", "jigsaw-grid": "number of swaps"}
    for ax, kind, letter in zip(axes[0], kinds, "bcd"):
        sub = df[df["shift_kind"] == kind]
        for p in _models(sub):
            s = sub[sub["model"] == p].sort_values("level")
            ax.plot(s["level"], s["accuracy"], marker="o", ms=3, color=model_color(p), label=model_label(p))
        ax.set_xlabel(xlabels[kind])
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"({letter}) " + (sub["shift"].iloc[0] if kind != "blur" else "Gaussian blur"))
        ax.set_ylim(0, 100)
    _legend_models(fig, _models(df))
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


# ----------------------------------------------------------------------------- Fig. 4


def training_dynamics(df: pd.DataFrame) -> Figure:
    """Fig. 4: ‖φ_t − φ_T‖ (a) and ‖A_t − A_T‖ (b) per epoch, mean over images (band: ±1 s.d./√N not shown)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, col, title in (
        (axes[0], "phi_distance", "(a) SmoothGrad  ‖φ_t − φ_T‖"),
        (axes[1], "attention_distance", "(b) attention, mean over layers and heads  ‖A_t − A_T‖"),
    ):
        for p in _models(df):
            s = df[df["model"] == p].sort_values("epoch")
            ax.plot(s["epoch"], s[col], marker="o", ms=3, color=model_color(p), label=model_label(p))
        ax.set_xlabel("epoch t")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("distance to last epoch (unit-L2 maps)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    _legend_models(fig, _models(df))
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


# ----------------------------------------------------------------------------- Fig. 5


def masking_curves(df: pd.DataFrame) -> Figure:
    """Fig. 5: accuracy vs masking ratio, one panel per model, one line per patch ordering."""
    models = _models(df)
    fig, axes = plt.subplots(1, len(models), figsize=(3.3 * len(models), 3.3), squeeze=False, sharey=True)
    for ax, p in zip(axes[0], models):
        sub = df[df["model"] == p]
        for m in dict.fromkeys(sub["method"]):
            s = sub[sub["method"] == m].sort_values("ratio")
            ax.plot(s["ratio"], s["accuracy"], marker="o", ms=3, color=METHOD_COLORS.get(m, _GREY),
                    ls="--" if m == "random" else "-", label=m)
        ax.set_title(model_label(p), color=model_color(p))
        ax.set_xlabel("masking ratio (% of patches)")
        ax.set_ylim(0, 100)
    axes[0, 0].set_ylabel("accuracy (%)")
    axes[0, -1].legend(frameon=False, fontsize="small", title="patches masked by")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- Figs. 6a, 7


def head_profiles(
    df: pd.DataFrame,
    value: str = "value",
    ylabel: str = "",
    row: str | None = None,
    title: str = "",
    ylim: tuple[float, float] | None = None,
    baselines: pd.DataFrame | None = None,
) -> Figure:
    """Figs. 6a and 7: a value per head along the network, heads sorted within each layer.

    The x axis runs over the layers; inside a layer the heads are ordered by decreasing value
    (column ``rank``), as in the paper. One line per epoch, darker = later.

    Args:
        df: Columns ``model, epoch, layer, rank`` and ``value`` (plus ``row`` if given).
        value: Column to plot.
        ylabel: Y axis label (with units).
        row: Column splitting the panels into rows (e.g. ``"score"`` for IAV vs AAV).
        title: Figure title.
        ylim: Y limits.
        baselines: Optional ``model, epoch, baseline`` (+ ``row``) frame; the last epoch's value
            is drawn as a dotted grey line (e.g. the uniform-attention IA-Score).
    """
    models = _models(df)
    rows = list(dict.fromkeys(df[row])) if row else [None]
    fig, axes = plt.subplots(len(rows), len(models), figsize=(3.4 * len(models), 2.9 * len(rows)),
                             squeeze=False, sharey="row")
    H = int(df["rank"].max()) + 1
    L = int(df["layer"].max())
    for i, r in enumerate(rows):
        for j, p in enumerate(models):
            ax = axes[i, j]
            sub = df[df["model"] == p] if r is None else df[(df["model"] == p) & (df[row] == r)]
            shades = epoch_shades(p, sorted(set(sub["epoch"])))
            for e, col in shades.items():
                s = sub[sub["epoch"] == e].copy()
                s["pos"] = (s["layer"] - 1) * H + s["rank"]
                s = s.sort_values("pos")
                # Break the line between layers: heads of one layer are parallel, not a sequence.
                for _, seg in s.groupby("layer"):
                    ax.plot(seg["pos"], seg[value], color=col, lw=1.4, marker=".", ms=3)
            if baselines is not None:
                b = baselines[baselines["model"] == p]
                if r is not None and row in b:
                    b = b[b[row] == r]
                if len(b):
                    ax.axhline(float(b.loc[b["epoch"].idxmax(), "baseline"]), color="0.45", ls=":", lw=1.2)
            for l in range(1, L):
                ax.axvline(l * H - 0.5, color="0.85", lw=0.8)
            ax.set_xticks([(l + 0.5) * H - 0.5 for l in range(L)], [f"L{l + 1}" for l in range(L)])
            ax.set_xlim(-0.5, L * H - 0.5)
            ax.grid(axis="x", visible=False)
            if ylim:
                ax.set_ylim(*ylim)
            if i == 0:
                ax.set_title(model_label(p), color=model_color(p))
            if i == len(rows) - 1:
                ax.set_xlabel("layer (heads sorted within a layer)")
            if j == 0:
                ax.set_ylabel(f"{r}\n{ylabel}" if r is not None else ylabel)
            ep = sorted(shades)
            if i == 0 and len(ep) > 1:
                ax.legend(handles=[Line2D([], [], color=shades[e], lw=2, label=f"epoch {e}") for e in ep],
                          fontsize="x-small", frameon=False, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- Fig. 6b


def _box(ax: plt.Axes, data: list[np.ndarray], positions: list[float], color: str, width: float = 0.7) -> None:
    bp = ax.boxplot([d[~np.isnan(d)] for d in data], positions=positions, widths=width, patch_artist=True,
                    showfliers=True, flierprops={"ms": 2, "alpha": 0.5, "markeredgecolor": color},
                    medianprops={"color": "black", "lw": 1.2})
    for box in bp["boxes"]:
        box.set_facecolor(matplotlib.colors.to_rgba(color, 0.45))
        box.set_edgecolor(color)
    for part in ("whiskers", "caps"):
        for line in bp[part]:
            line.set_color(color)


def entropy_boxes(df: pd.DataFrame, max_entropy: float | None = None) -> Figure:
    """Fig. 6b: per-image entropy of each head of one layer, a group of boxes per model.

    Args:
        df: :func:`iavutils.analysis.receptive_field.last_layer_entropy` frame.
        max_entropy: ``log P`` (uniform attention), drawn as a dashed line.
    """
    models = _models(df)
    H = int(df["head"].max()) + 1
    fig, ax = plt.subplots(figsize=(1.1 + 0.32 * H * len(models) + 0.3 * len(models), 3.6))
    ticks, labels = [], []
    for i, p in enumerate(models):
        sub = df[df["model"] == p]
        heads = [sub[sub["head"] == h]["entropy"].to_numpy() for h in range(H)]
        # Heads sorted by median entropy, as the paper sorts heads within a layer.
        heads.sort(key=lambda v: -np.nanmedian(v) if len(v) else 0)
        pos = [i * (H + 1) + h for h in range(H)]
        _box(ax, heads, pos, model_color(p))
        ticks.append(np.mean(pos))
        labels.append(model_label(p))
    if max_entropy is not None:
        ax.axhline(max_entropy, color="0.4", ls="--", lw=1)
        ax.text(ax.get_xlim()[0], max_entropy, " log P (uniform attention)", va="bottom", ha="left", fontsize="x-small")
    ax.set_xticks(ticks, labels, rotation=15)
    ax.set_ylabel("attention entropy (nats)")
    ax.set_title(f"Entropy of the last layer's heads (L{int(df['layer'].iloc[0])}) over images; heads sorted by median")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- Fig. 7 heat-maps


def global_iav_heatmaps(df: pd.DataFrame, score: str = "IAV", epoch: int | None = None, vmax: float = 1.0) -> Figure:
    """global-IAV (or AAV) ``[L,H]`` of each model at one epoch, heads sorted within a layer.

    Args:
        df: :func:`iavutils.analysis.global_iav.global_scores_over_epochs` frame.
        score: Which score (``"IAV"``, ``"AAV (tiny-dino)"``, ``"AAV (mask)"``).
        epoch: ``None``: each model's last analysed epoch.
        vmax: Colour scale maximum.
    """
    sub = df[df["score"] == score]
    models = _models(sub)
    fig, axes = plt.subplots(1, len(models), figsize=(2.6 * len(models) + 0.8, 3.4), squeeze=False)
    for ax, p in zip(axes[0], models):
        s = sub[sub["model"] == p]
        e = s["epoch"].max() if epoch is None else epoch
        s = s[s["epoch"] == e]
        mat = s.pivot(index="layer", columns="rank", values="value").sort_index()
        sns.heatmap(mat, ax=ax, vmin=0, vmax=vmax, cmap="viridis", annot=mat.shape[1] <= 6, fmt=".2f",
                    annot_kws={"fontsize": 7}, cbar=ax is axes[0, -1], cbar_kws={"label": f"global {score}"})
        ax.set_title(f"{model_label(p)}\nepoch {e}", color=model_color(p))
        ax.set_xlabel("head (sorted within layer)")
        ax.set_ylabel("layer")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- Fig. 8


def head_boxes(
    df: pd.DataFrame, layers: Sequence[int] | None = None, threshold: float = 0.5,
    baselines: dict[str, float] | None = None,
) -> Figure:
    """Fig. 8: IA-Score distribution of each head over images, High/Low-IA-Head marks.

    One row per model, one panel per chosen layer (default: first, middle and last, as in the
    paper). Heads are sorted by median within a panel; the bar under each box is blue for a
    High-IA-Head (median > ``threshold``) and red for a Low-IA-Head. ``baselines`` (``{model:
    score}``, e.g. the uniform-attention IA-Score) are drawn as dashed grey lines.
    """
    models = _models(df)
    L = int(df["layer"].max())
    layers = list(layers) if layers else sorted({1, (L + 1) // 2, L})
    H = int(df["head"].max()) + 1
    fig, axes = plt.subplots(len(models), len(layers), figsize=(max(2.2, 0.42 * H + 0.9) * len(layers), 2.2 * len(models)),
                             squeeze=False, sharey=True)
    for i, p in enumerate(models):
        for j, l in enumerate(layers):
            ax = axes[i, j]
            sub = df[(df["model"] == p) & (df["layer"] == l)]
            heads = [(h, sub[sub["head"] == h]["score"].to_numpy()) for h in range(H)]
            heads.sort(key=lambda t: -np.nanmedian(t[1]) if np.isfinite(t[1]).any() else 1.0)
            _box(ax, [v for _, v in heads], list(range(H)), model_color(p), width=0.6)
            for k, (_, v) in enumerate(heads):
                high = np.isfinite(v).any() and np.nanmedian(v) > threshold
                ax.plot([k - 0.3, k + 0.3], [-0.07, -0.07], color=HIGH_COLOR if high else LOW_COLOR, lw=3,
                        solid_capstyle="butt", clip_on=False)
            ax.axhline(threshold, color="0.5", ls=":", lw=1)
            if baselines and p in baselines:
                ax.axhline(baselines[p], color="0.35", ls="--", lw=1)
            ax.set_ylim(-0.1, 1.0)
            ax.set_xticks(range(H), [str(h) for h, _ in heads], fontsize="x-small")
            if i == 0:
                ax.set_title(f"layer L{l}")
            if i == len(models) - 1:
                ax.set_xlabel("head (sorted by median)")
            if j == 0:
                ax.set_ylabel(f"{model_label(p)}\nIA-Score", color=model_color(p), fontsize="small")
    handles = [Patch(color=HIGH_COLOR, label=f"High-IA-Head (median > {threshold})"),
               Patch(color=LOW_COLOR, label=f"Low-IA-Head (median ≤ {threshold})")]
    if baselines:
        handles.append(Line2D([], [], color="0.35", ls="--", label="uniform-attention IA-Score"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, bbox_to_anchor=(0.5, -0.01))
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


# ----------------------------------------------------------------------------- Fig. 9


def tsne_grid(df: pd.DataFrame, classes: Sequence[str] | None = None) -> Figure:
    """Fig. 9: t-SNE of each layer's IAV (and the classifier's logits), coloured by class."""
    models = _models(df)
    cols = list(dict.fromkeys(df["layer"]))
    labels = sorted(set(df["label"]))
    pal = sns.color_palette("tab10" if len(labels) <= 10 else "husl", len(labels))
    cmap = {c: pal[i] for i, c in enumerate(labels)}
    fig, axes = plt.subplots(len(models), len(cols), figsize=(1.75 * len(cols), 1.8 * len(models) + 0.5), squeeze=False)
    for i, p in enumerate(models):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            s = df[(df["model"] == p) & (df["layer"] == c)]
            ax.scatter(s["x"], s["y"], c=[cmap[v] for v in s["label"]], s=7, linewidths=0)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(c if c == "classifier" else f"IAV of {c}", fontsize="small")
            if j == 0:
                ax.set_ylabel(model_label(p), color=model_color(p), fontsize="small")
    names = list(classes) if classes else [str(c) for c in labels]
    handles = [Line2D([], [], ls="", marker="o", color=cmap[c], label=names[c] if c < len(names) else str(c)) for c in labels]
    fig.legend(handles=handles, loc="lower center", ncol=min(10, len(handles)), frameon=False, fontsize="small",
               bbox_to_anchor=(0.5, -0.01))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def separability_curves(df: pd.DataFrame, chance: float | None = None) -> Figure:
    """Fig. 9 in numbers: leave-one-out kNN accuracy of the class from each layer's IAV."""
    fig, ax = plt.subplots(figsize=(6, 3.3))
    for p in _models(df):
        s = df[df["model"] == p]
        ax.plot(range(len(s)), s["knn_accuracy"], marker="o", ms=3, color=model_color(p), label=model_label(p))
        ax.set_xticks(range(len(s)), list(s["layer"]))
    if chance is not None:
        ax.axhline(chance, color="0.5", ls=":", lw=1, label="chance")
    ax.set_xlabel("features")
    ax.set_ylabel("5-NN accuracy of the class (%)")
    ax.set_ylim(0, 100)
    ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- Fig. 2


def example_maps(examples: Sequence[dict[str, Any]], layers: Sequence[int] | None = None, classes: Sequence[str] | None = None) -> Figure:
    """Fig. 2: for one image, each model's SmoothGrad, every head's CLS attention and the IAV.

    Rows: models. Columns: image, SmoothGrad ``φ``, the attention map of each head of the chosen
    layers (titled with its IA-Score ``s`` and entropy ``H`` in nats) and the image's IAV
    heat-map ``[L,H]``. Maps are in "× uniform" units (:func:`~iavutils.publish.style.relative_to_uniform`):
    all attention panels share one colour scale (per figure) and all SmoothGrad panels another,
    each with its colour bar, so a near-uniform head looks flat.
    """
    ex0 = examples[0]
    L, H = ex0["cls_attn"].shape[:2]
    layers = list(layers) if layers else sorted({1, (L + 1) // 2, L})
    ncol = 2 + len(layers) * H + 1
    attn = [[relative_to_uniform(ex["cls_attn"][l - 1, h]) for l in layers for h in range(H)] for ex in examples]
    sgs = [relative_to_uniform(ex["smoothgrad"]) for ex in examples]
    a_lo, a_hi = common_scale([m for row in attn for m in row])
    s_lo, s_hi = common_scale(sgs)
    fig, axes = plt.subplots(len(examples), ncol, figsize=(1.25 * ncol + 1.2, 1.45 * len(examples) + 0.7), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * (ncol - 1) + [1.6]})
    for i, ex in enumerate(examples):
        p = ex["preset"]
        row = axes[i]
        row[0].imshow(ex["image"])
        name = classes[ex["label"]] if classes and ex["label"] < len(classes) else ex["label"]
        row[0].set_ylabel(model_label(p), color=model_color(p), fontsize="x-small")
        if i == 0:
            row[0].set_title(f"image ({name})", fontsize="x-small")
        sg_im = row[1].imshow(sgs[i], cmap="inferno", vmin=s_lo, vmax=s_hi)
        row[1].set_title(f"SmoothGrad φ\nH={map_entropy(ex['smoothgrad']):.2f}", fontsize="xx-small")
        k = 2
        for j, (l, h) in enumerate((l, h) for l in layers for h in range(H)):
            ax = row[k + j]
            att_im = ax.imshow(attn[i][j], cmap="viridis", interpolation="nearest", vmin=a_lo, vmax=a_hi)
            ax.set_title(f"L{l}h{h}\ns={ex['iav'][l - 1, h]:.2f} H={map_entropy(ex['cls_attn'][l - 1, h]):.2f}",
                         fontsize="xx-small")
        ax = row[-1]
        sns.heatmap(ex["iav"], ax=ax, vmin=0, vmax=1, cmap="viridis", cbar=i == 0, cbar_kws={"label": "IA-Score"},
                    xticklabels=True, yticklabels=[f"L{l + 1}" for l in range(L)])
        ax.tick_params(labelsize=7)
        ax.set_xlabel("head", fontsize="x-small")
        if i == 0:
            ax.set_title("IAV [layer × head]", fontsize="x-small")
        for ax in row[:-1]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"attention: one colour scale for the figure; SmoothGrad: one for its column; maps in {SCALE_LABEL}; "
                 "s = IA-Score, H = entropy (nats, uniform = log P)", fontsize="x-small")
    fig.tight_layout()
    fig.subplots_adjust(right=0.84)
    scale_colorbar(fig, att_im, "attention, × uniform", rect=(0.87, 0.15, 0.008, 0.7))
    scale_colorbar(fig, sg_im, "SmoothGrad, × uniform", rect=(0.935, 0.15, 0.008, 0.7))
    return fig
