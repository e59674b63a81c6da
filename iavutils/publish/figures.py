"""Seaborn figures of chapters 08 (GMAR and its rivals), 10 (head ablation) and 11 (separability).

Every function takes the results or tidy frames of the chapter's analysis modules
(:mod:`iavutils.analysis.explanation_report`, :mod:`iavutils.analysis.head_ablation`,
:mod:`iavutils.analysis.pretraining_types`) and returns a ``matplotlib`` figure; where the
chapter also shows the numbers behind a figure, the function returns ``(figure, table)``. Models
keep the colours and labels of :mod:`iavutils.publish.style`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ..core.metrics import LOCALIZATION_METRICS
from .style import (
    HIGH_COLOR,
    LOW_COLOR,
    SCALE_LABEL,
    common_scale,
    map_entropy,
    model_color,
    model_label,
    model_palette,
    relative_to_uniform,
    scale_colorbar,
)

__all__ = [
    "ablation_scatter",
    "auc_bars",
    "explanation_grid",
    "group_bars",
    "localization_bars",
    "mask_aav_lines",
    "perturbation_curves",
    "permutation_nulls",
    "show",
    "show_tables",
    "trend_lines",
]


def show(fig: Figure, *tables: Any) -> None:
    """Show a figure in the notebook, then the tables that go with it."""
    from IPython.display import display

    plt.show()
    for t in tables:
        display(t)


def show_tables(tables: Mapping[str, Any]) -> None:
    """Show ``{title: table}`` in the notebook, each table under its title in bold."""
    from IPython.display import Markdown, display

    for title, t in tables.items():
        display(Markdown(f"**{title}**"), t)


def _label_legend(texts: Any, models: Sequence[str]) -> None:
    """Legend entries named by preset get the models' labels."""
    for t, p in zip(texts, models):
        t.set_text(model_label(p))


# ----------------------------------------------------------------------------- chapter 08


def perturbation_curves(curves: pd.DataFrame, models: Sequence[str], order: Sequence[str]) -> Figure:
    """Accuracy against the removed fraction, one panel per model (columns) and test (rows).

    Args:
        curves: :func:`iavutils.analysis.explanation_report.perturbation_frame`.
        models: Models in display order.
        order: Methods in display order.
    """
    curves = curves.assign(model=curves["model"].map(model_label))
    g = sns.relplot(data=curves, x="removed pixels (%)", y="accuracy (%)", hue="method", row="mode",
                    col="model", kind="line", marker="o", markersize=3, height=2.6, aspect=1.0,
                    row_order=["positive", "negative"], col_order=[model_label(p) for p in models],
                    hue_order=[m for m in order if m in set(curves["method"])],
                    palette="colorblind", facet_kws={"margin_titles": True})
    g.set_titles(row_template="{row_name}", col_template="{col_name}")
    g.figure.suptitle("Perturbation curves (positive: most relevant first; negative: least relevant first)", y=1.02)
    return g.figure


def auc_bars(table: pd.DataFrame, models: Sequence[str], order: Sequence[str]) -> Figure:
    """Positive and negative perturbation AUC per method, one bar per model.

    Args:
        table: :func:`iavutils.analysis.explanations.explanation_table`.
        models: Models in display order.
        order: Methods in display order.
    """
    long = table.melt(id_vars=["model", "method"], value_vars=["auc_positive", "auc_negative"],
                      var_name="test", value_name="AUC").dropna()
    long["test"] = long["test"].map({"auc_positive": "positive (lower = better)", "auc_negative": "negative (higher = better)"})
    g = sns.catplot(data=long, y="method", x="AUC", hue="model", col="test", kind="bar", palette=model_palette(models),
                    order=[m for m in order if m in set(long["method"])], hue_order=list(models), height=3.6, aspect=1.1)
    g.set_axis_labels("AUC (accuracy % × removed fraction)", "")
    g.set_titles("{col_name}")
    sns.move_legend(g, "upper center", bbox_to_anchor=(0.5, 0.02), ncol=len(models), title=None, frameon=False)
    _label_legend(g.legend.texts, models)
    return g.figure


def localization_bars(
    table: pd.DataFrame, models: Sequence[str], order: Sequence[str], metrics: Sequence[str] = LOCALIZATION_METRICS
) -> Figure:
    """Localization means per method and metric, one bar per model.

    Args:
        table: :func:`iavutils.analysis.explanations.explanation_table`.
        models: Models in display order.
        order: Methods in display order.
        metrics: Localization metrics (default: all of them).
    """
    loc = table.melt(id_vars=["model", "method"], value_vars=list(metrics), var_name="metric", value_name="value")
    g = sns.catplot(data=loc, y="method", x="value", hue="model", col="metric", kind="bar",
                    palette=model_palette(models), order=list(order), hue_order=list(models), height=3.6, aspect=0.75)
    g.set_axis_labels("", "")
    g.set_titles("{col_name}")
    g.figure.supxlabel("score (fraction of pixels / images; higher = better)", y=0.06)
    sns.move_legend(g, "upper center", bbox_to_anchor=(0.5, 0.02), ncol=len(models), title=None, frameon=False)
    _label_legend(g.legend.texts, models)
    return g.figure


def explanation_grid(
    results: Mapping[str, Mapping[str, Any]],
    dataset: str,
    models: Sequence[str],
    order: Sequence[str],
    n_examples: int,
    spec: Any = None,
) -> Figure:
    """The maps side by side: per image and model a row, per method a column, on one colour scale.

    The first columns are the image and, where the dataset has one, its object mask. Each map
    is shown in "× uniform" units (:func:`~iavutils.publish.style.relative_to_uniform`, negative
    parts clipped), all maps of the figure share one colour scale (0 to the 99.5th percentile of
    all their pixels, brighter pixels saturate) with a colour bar, and each panel's title holds
    the map's entropy (nats, of the map at its own resolution normalised to sum 1).

    Args:
        results: ``{model: run_explanation_eval(...)}`` (their ``map.{method}``).
        dataset: The dataset the results were computed on.
        models: Models (rows within each image).
        order: Methods (columns).
        n_examples: Images shown (the first ones).
        spec: The :class:`~iavutils.core.spec.AnalysisSpec` of the results (its ``num_images``
            and ``seed`` choose the same images; ``None``: the defaults).
    """
    from ..analysis.images import load_images
    from ..core.metrics import to_pixel_maps
    from ..core.spec import AnalysisSpec
    from ..world.models import PRESETS

    spec = AnalysisSpec() if spec is None else spec
    info0 = PRESETS[models[0]]
    imgs = load_images(dataset, info0, spec.num_images, spec.seed)
    show = list(range(min(n_examples, imgs["x"].shape[0])))
    masks = ["mask"] if "mask" in imgs else []  # no mask column for a dataset without masks
    cols = ["image"] + masks + list(order)
    H, W = imgs["x"].shape[-2:]
    maps = {(b, p, m): relative_to_uniform(to_pixel_maps(results[p][f"map.{m}"][b:b + 1], (H, W), PRESETS[p].grid)[0])
            for b in show for p in models for m in order}
    lo, hi = common_scale(list(maps.values()), quantile=99.5)
    fig, axes = plt.subplots(len(show) * len(models), len(cols), squeeze=False,
                             figsize=(1.15 * len(cols) + 0.8, 1.3 * len(show) * len(models) + 0.7))
    for i, b in enumerate(show):
        for j, p in enumerate(models):
            row = axes[i * len(models) + j]
            row[0].imshow(info0.denormalize(imgs["x"][b:b + 1])[0].permute(1, 2, 0).clamp(0, 1))
            row[0].set_ylabel(model_label(p).split(" ")[0], color=model_color(p), fontsize="x-small")
            if "mask" in imgs:
                row[1].imshow(imgs["mask"][b], cmap="gray", vmin=0, vmax=1)
            for k, m in enumerate(order):
                ax = row[1 + len(masks) + k]
                im = ax.imshow(maps[b, p, m], cmap="inferno", vmin=lo, vmax=hi)
                head = m.replace("_", " ") + "\n" if i == 0 and j == 0 else ""
                ax.set_title(f"{head}H={map_entropy(results[p][f'map.{m}'][b]):.2f}", fontsize="xx-small")
    for ax, c in zip(axes[0], cols[:1 + len(masks)]):
        ax.set_title(c.replace("_", " "), fontsize="x-small")
    for ax in axes.flat:
        ax.set_xticks([]); ax.set_yticks([])
    fig.suptitle("one colour scale for the figure; H = entropy (nats)", fontsize="x-small")
    fig.tight_layout(pad=0.2)
    fig.subplots_adjust(right=0.86)
    scale_colorbar(fig, im, SCALE_LABEL + ", brighter saturate", rect=(0.9, 0.15, 0.02, 0.7))
    return fig


def mask_aav_lines(aav: pd.DataFrame, models: Sequence[str]) -> tuple[Figure, pd.DataFrame]:
    """AAV with the object mask per layer (band: min–max over heads), and its layer means.

    Args:
        aav: :func:`iavutils.analysis.explanation_report.mask_aav_frame` (not empty).
        models: Models in display order.

    Returns:
        ``(figure, models × layers table of the mean AAV)``.
    """
    fig, ax = plt.subplots(figsize=(6, 3.3))
    sns.lineplot(data=aav, x="layer", y="AAV (mask)", hue="model", palette=model_palette(models), hue_order=list(models),
                 marker="o", errorbar=("pi", 100), ax=ax)
    ax.set_ylabel("AAV with the object mask (cosine)")
    ax.set_xlabel("layer (band: min–max over heads)")
    _label_legend(ax.get_legend().texts, models)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    table = aav.groupby(["model", "layer"])["AAV (mask)"].mean().unstack("layer").reindex(list(models)).round(2)
    return fig, table


# ----------------------------------------------------------------------------- chapter 10


def ablation_scatter(heads: pd.DataFrame, models: Sequence[str]) -> Figure:
    """Per head: target-logit drop when ablated against its IA-Score (left) and GMAR weight (right).

    Args:
        heads: :func:`iavutils.analysis.head_ablation.head_frame`.
        models: Models in display order.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    # Note: the style shows the paper's head type; the dashed line marks its 0.5 threshold.
    for ax, col, label in [(axes[0], "ia", "IA-Score (global-IAV, cosine)"),
                           (axes[1], "gmar_weight", "mean GMAR head weight (share within its layer)")]:
        sns.scatterplot(data=heads, x=col, y="logit_drop", hue="model", style="head type", palette=model_palette(models),
                        hue_order=list(models), style_order=["High-IA", "Low-IA"], markers={"High-IA": "o", "Low-IA": "X"},
                        s=40, alpha=0.85, ax=ax, legend=ax is axes[1])
        ax.axhline(0, color="0.5", lw=0.8, ls=":")
        ax.set_xlabel(label)
    axes[0].axvline(0.5, color="0.5", lw=0.8, ls="--")
    axes[0].set_ylabel("target-logit drop when ablated (logit units)")
    handles, labels = axes[1].get_legend_handles_labels()
    labels = [model_label(l) if l in models else l for l in labels]
    axes[1].legend(handles, labels, bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


def group_bars(groups: pd.DataFrame, title: str) -> tuple[Figure, pd.DataFrame]:
    """Per model and layer: logit drop of each head group and its same-size control.

    Args:
        groups: :func:`iavutils.analysis.head_ablation.group_frame`.
        title: Figure title (which split).

    Returns:
        ``(figure, mean drops per model and group)``.
    """
    df = groups.assign(model=groups["model"].map(model_label))
    g = sns.catplot(data=df, x="layer", y="logit drop", hue="group", col="model", col_wrap=2, kind="bar",
                    height=2.6, aspect=1.6,
                    palette=[HIGH_COLOR, "#a6c8e6", LOW_COLOR, "#f2b3a6", "0.6"],
                    hue_order=["high-IA heads", "same-size control (high)", "low-IA heads",
                               "same-size control (low)", "all heads"])
    g.set_axis_labels("layer", "target-logit drop (logit units)")
    g.set_titles("{col_name}")
    g.figure.suptitle(title, y=1.02)
    table = df.groupby(["model", "group"])[["logit drop", "accuracy drop (pp)"]].mean().unstack("group").round(2)
    return g.figure, table


# ----------------------------------------------------------------------------- chapter 11


def trend_lines(df: pd.DataFrame, models: Sequence[str]) -> Figure:
    """The trends being classified: per-layer mean of the global-IAV over finetuning.

    Args:
        df: :func:`iavutils.analysis.pretraining_types.trend_frame`.
        models: Models in display order.
    """
    g = sns.relplot(data=df, x="epoch", y="global-IAV (layer mean)", hue="model", col="layer", col_wrap=3,
                    kind="line", marker="o", palette=model_palette(models), hue_order=list(models), height=2.3, aspect=1.3)
    g.set_axis_labels("finetuning epoch", "mean IA-Score (cosine)")
    g.set_titles("{col_name}")
    _label_legend(g.legend.texts, models)
    g.figure.suptitle("The trends being classified: per-layer mean of the global-IAV over finetuning", y=1.03)
    return g.figure


def permutation_nulls(results: Mapping[str, Any]) -> Figure:
    """Per feature set: the accuracies of the permuted labellings and that of the true labels.

    Args:
        results: :func:`iavutils.analysis.separability.separability_report`'s results.
    """
    fig, axes = plt.subplots(1, len(results), figsize=(3.4 * len(results), 2.8), sharey=True, squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        vals, counts = np.unique(np.round(r.null, 6), return_counts=True)
        ax.bar(vals, counts, width=0.04, color="0.6", label="permuted labellings")
        ax.axvline(r.accuracy, color=HIGH_COLOR, lw=2, label="true labels")
        ax.set_title(f"{name}\np = {r.p_value:.2f} (min {r.min_p_value:.2f})", fontsize="small")
        ax.set_xlabel("leave-one-model-out accuracy")
        ax.set_xlim(-0.05, 1.05)
    axes[0, 0].set_ylabel("number of labellings")
    axes[0, -1].legend(frameon=False, fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig
