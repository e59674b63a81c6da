"""Figures of the "over finetuning" chapters (02, 04, 05): epoch 0 apart, labelled "before finetuning".

Epoch 0 is the pretrained backbone with a random head (:mod:`iavutils.analysis.dynamics`): it
is drawn as its own grey marker or dashed line, labelled, never joined to the finetuned epochs'
curves, whose shades (darker = later) start at the first finetuned epoch.
"""

from __future__ import annotations

import textwrap

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from . import plots
from .style import model_color, model_label

__all__ = ["training_dynamics", "head_profiles_over_finetuning"]

_BEFORE = "epoch 0 (before finetuning)"
_BEFORE_COLOR = "0.55"


def training_dynamics(df: pd.DataFrame) -> Figure:
    """Fig. 4: (a) ‖φ_t − φ_T‖, (b) ‖A_t − A_T‖ of the layer-averaged attention map, (c) the per-head mean.

    Args:
        df: :func:`iavutils.analysis.dynamics.training_dynamics` frame.
    """
    import matplotlib.pyplot as plt

    panels = [("phi_distance", "(a) SmoothGrad  ‖φ_t − φ_T‖"),
              ("attention_distance", "(b) layer-averaged attention map  ‖Ā_t − Ā_T‖")]
    if "attention_distance_per_head" in df:
        panels.append(("attention_distance_per_head", "per-head distances, mean (not the paper's)"))
    models = list(dict.fromkeys(df["model"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.5), squeeze=False)
    for ax, (col, title) in zip(axes[0], panels):
        for p in models:
            s = df[df["model"] == p].sort_values("epoch")
            tuned, before = s[s["epoch"] > 0], s[s["epoch"] == 0]
            ax.plot(tuned["epoch"], tuned[col], marker="o", ms=3, color=model_color(p))
            # Epoch 0 apart: a hollow marker, not joined to the curve (it is not a finetuned model).
            ax.plot(before["epoch"], before[col], ls="none", marker="o", ms=6, mfc="none", color=model_color(p))
        ax.set_xlabel("epoch t (0: before finetuning)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize="medium")
        ax.set_ylim(bottom=0)
    axes[0, 0].set_ylabel("distance to the last epoch\n(unit-L2 maps)")
    handles = [Line2D([], [], color=model_color(p), lw=2, label=model_label(p)) for p in models]
    handles.append(Line2D([], [], ls="none", marker="o", mfc="none", color=_BEFORE_COLOR, label=_BEFORE))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def head_profiles_over_finetuning(
    df: pd.DataFrame, value: str = "value", *, row: str | None = None, self_reference: str | None = None, **kw
) -> Figure:
    """:func:`iavutils.publish.plots.head_profiles` of the finetuned epochs, epoch 0 dashed grey and labelled.

    Args:
        df: Columns ``model, epoch, layer, rank, value`` (+ ``row``).
        value: Column to plot.
        row: Column splitting the panels into rows.
        self_reference: A note written into every panel whose ``row`` value is the model's own
            AAV (``"AAV (<model>)"``), e.g. :data:`iavutils.analysis.global_iav.SELF_REFERENCE`.
        **kw: Passed on (``ylabel``, ``title``, ``ylim``, ``baselines``).
    """
    fig = plots.head_profiles(df[df["epoch"] > 0], value=value, row=row, **kw)
    models = list(dict.fromkeys(df[df["epoch"] > 0]["model"]))
    rows = list(dict.fromkeys(df[row])) if row else [None]
    axes = fig.axes[: len(rows) * len(models)]
    H = int(df["rank"].max()) + 1
    for i, r in enumerate(rows):
        for j, p in enumerate(models):
            ax = axes[i * len(models) + j]
            sub = df[(df["model"] == p) & (df["epoch"] == 0)]
            if r is not None:
                sub = sub[sub[row] == r]
            s = sub.assign(pos=(sub["layer"] - 1) * H + sub["rank"]).sort_values("pos")
            for _, seg in s.groupby("layer"):
                ax.plot(seg["pos"], seg[value], color=_BEFORE_COLOR, lw=1.0, ls="--")
            if self_reference and r is not None and r == f"AAV ({p})":
                ax.text(0.5, 0.04, textwrap.fill(self_reference, 34), transform=ax.transAxes, ha="center",
                        va="bottom", fontsize="x-small", bbox={"fc": "white", "ec": "0.6", "alpha": 0.9})
            if i == 0 and len(s):
                legend = ax.get_legend()
                handles = list(legend.legend_handles) if legend is not None else []
                handles.insert(0, Line2D([], [], color=_BEFORE_COLOR, lw=1.0, ls="--", label=_BEFORE))
                ax.legend(handles=handles, fontsize="x-small", frameon=False, loc="best")
    return fig
