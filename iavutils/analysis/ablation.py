"""Head ablation: does a head matter for the decision?

A head's contribution enters the residual stream only through its slice of the attention
output projection's input (``blocks[l].attn.proj``: the heads' outputs concatenated, head ``h``
at channels ``h·d … (h+1)·d−1`` with ``d = in_features / num_heads``). Ablating a head replaces
that slice, in a forward pre-hook on ``attn.proj``, by zeros (``mode="zero"``) or by its mean
over a reference set at the same token position (``mode="mean"``, mean ablation, which keeps
the activation statistics the next layers expect). The hooks are
:func:`iavutils.core.hooks.head_mask` and :func:`~iavutils.core.hooks.tap_inputs`, context
managers that remove them in ``finally``; :func:`ablate_heads` only says which heads.

Measured per head (or group): drop of top-1 accuracy and drop of the mean target (label) logit,
and each head's mean GMAR weight. Chapter 10's statistics, cached run and verdict (relating the
drops to the IA-Score) are in :mod:`iavutils.analysis.head_ablation`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..core.hooks import eval_mode, head_mask, tap_inputs
from ..core.progress import tqdm  # one progress helper: widgets, terminal, or the book runner
from ..core.rollout import attention_and_grads, gmar_head_weights

__all__ = [
    "ablate_heads",
    "group_ablation",
    "head_ablation",
    "mean_gmar_weights",
    "proj_input_means",
]

HeadSpec = Tensor | Iterable[tuple[int, int]]


def _blocks(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise TypeError(f"{type(model).__name__} has no `blocks`; head ablation needs timm ViT-style blocks")
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        if attn is None or not isinstance(getattr(attn, "proj", None), nn.Linear) or not hasattr(attn, "num_heads"):
            raise TypeError(f"{type(model).__name__}.blocks[{i}].attn has no `proj` Linear / `num_heads`")
    return list(blocks)


def _head_sets(model: nn.Module, heads: HeadSpec) -> list[list[int]]:
    """Per layer, the sorted list of heads to ablate."""
    blocks = _blocks(model)
    L = len(blocks)
    H = int(blocks[0].attn.num_heads)
    sets: list[set[int]] = [set() for _ in range(L)]
    if isinstance(heads, Tensor):
        if heads.shape != (L, H):
            raise ValueError(f"a head mask must be [L,H]=({L},{H}), got {tuple(heads.shape)}")
        for l, h in heads.bool().nonzero().tolist():
            sets[l].add(h)
    else:
        for l, h in heads:
            l, h = int(l), int(h)
            if not (0 <= l < L and 0 <= h < int(blocks[l].attn.num_heads)):
                raise ValueError(f"head ({l}, {h}) out of range for {L} layers x {H} heads")
            sets[l].add(h)
    return [sorted(s) for s in sets]


@contextmanager
def ablate_heads(
    model: nn.Module,
    heads: HeadSpec,
    mode: str = "zero",
    means: Tensor | Sequence[Tensor] | None = None,
) -> Iterator[nn.Module]:
    """Context in which the given heads' outputs are zeroed or mean-replaced.

    Args:
        model: A timm ViT-family model (``blocks[l].attn.proj``, ``attn.num_heads``).
        heads: ``[L,H]`` bool mask or an iterable of ``(layer, head)`` pairs.
        mode: ``"zero"`` or ``"mean"``.
        means: For ``"mean"``: per layer the mean input of ``attn.proj``, ``[L,N,C]`` (per token
            position) or ``[L,C]`` (from :func:`proj_input_means`).

    Yields:
        The model (hooks installed; removed on exit, also after an exception).
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    if mode == "mean" and means is None:
        raise ValueError("mode='mean' needs means= (see proj_input_means)")
    sets = _head_sets(model, heads)
    masks: dict[int, tuple[Tensor, Tensor | None]] = {}
    for l, (blk, hs) in enumerate(zip(_blocks(model), sets, strict=True)):
        if not hs:
            continue
        proj = blk.attn.proj
        d = proj.in_features // int(blk.attn.num_heads)
        keep = torch.ones(proj.in_features)
        for h in hs:
            keep[h * d : (h + 1) * d] = 0.0
        masks[l] = (keep, None if mode == "zero" else means[l])
    with head_mask(model, masks):
        yield model


def _materialize(data: Any, device: torch.device | str | None) -> list[tuple[Tensor, Tensor]]:
    """``(x, y)`` tensors or an iterable of batches ``(x, y, *rest)`` → list of ``(x, y)``."""
    if isinstance(data, tuple | list) and len(data) >= 2 and isinstance(data[0], Tensor) and data[0].dim() == 4:
        batches = [(data[0], data[1])]
    else:
        batches = [(b[0], b[1]) for b in data]
    return [(x.to(device) if device else x, torch.as_tensor(y).long().to(x.device if not device else device))
            for x, y in batches]


def _split(batches: list[tuple[Tensor, Tensor]], batch_size: int | None) -> list[tuple[Tensor, Tensor]]:
    if not batch_size:
        return batches
    return [(x[s : s + batch_size], y[s : s + batch_size]) for x, y in batches for s in range(0, x.shape[0], batch_size)]


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _evaluate(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Per image: correct (float) and target-logit, concatenated over batches (CPU)."""
    correct, logit = [], []
    for x, y in batches:
        out = model(x)
        correct.append((out.argmax(1) == y).float().cpu())
        logit.append(out.gather(1, y.unsqueeze(1)).squeeze(1).float().cpu())
    return torch.cat(correct), torch.cat(logit)


class _StandIn(nn.Module):
    """Takes the place of a block the forward skips (see :class:`_Resume`)."""

    def __init__(self, holder: dict[str, Tensor], first: bool) -> None:
        super().__init__()
        self.holder, self.first = holder, first

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self.holder["x"] if self.first else x


class _Resume:
    """Forwards that start at block ``l`` from the clean forward's input of that block.

    An ablation confined to layers ``>= l`` leaves blocks ``0 … l−1`` as they are, so their
    output, block ``l``'s input, is the clean forward's: it is recorded once per batch and the
    ablated forwards skip those blocks (half the block compute of a head ablation on average;
    the numbers are those of full forwards). The skipped blocks are swapped for stand-ins only
    inside :meth:`evaluate` and restored in ``finally``. A model that does not run its blocks in
    order on the hidden state is caught by one check against the clean logits; it then gets
    full forwards. Memory: every block's input for every image (``L·B·N·C`` floats).
    """

    def __init__(self, model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> None:
        self.model, self.batches = model, batches
        blocks = _blocks(model)
        self.inputs: list[list[Tensor | None]] = [[None] * len(blocks) for _ in batches]
        current = [0]

        def keep_input(l: int, x: Tensor) -> None:
            self.inputs[current[0]][l] = x.detach()

        correct, logit = [], []
        with tap_inputs(blocks, keep_input), torch.no_grad():
            for i, (x, y) in enumerate(batches):
                current[0] = i
                out = model(x)
                correct.append((out.argmax(1) == y).float().cpu())
                logit.append(out.gather(1, y.unsqueeze(1)).squeeze(1).float().cpu())
        self.clean = (torch.cat(correct), torch.cat(logit))
        self.enabled = len(blocks) > 1 and all(t is not None for row in self.inputs for t in row)
        if self.enabled:
            try:
                _, z = self.evaluate(len(blocks) - 1)
                self.enabled = torch.allclose(z, self.clean[1], rtol=1e-4, atol=1e-4)
            except (TypeError, RuntimeError, IndexError):
                self.enabled = False

    @torch.no_grad()
    def evaluate(self, start: int) -> tuple[Tensor, Tensor]:
        """Per image: correct (float) and target logit, blocks ``< start`` taken from the record."""
        if not self.enabled or start <= 0:
            return _evaluate(self.model, self.batches)
        blocks = self.model.blocks
        originals = [blocks[i] for i in range(start)]
        holder: dict[str, Tensor] = {}
        correct, logit = [], []
        try:
            for i in range(start):
                blocks[i] = _StandIn(holder, first=i == 0)
            for i, (x, y) in enumerate(self.batches):
                holder["x"] = self.inputs[i][start]
                out = self.model(x)
                correct.append((out.argmax(1) == y).float().cpu())
                logit.append(out.gather(1, y.unsqueeze(1)).squeeze(1).float().cpu())
        finally:
            for i, block in enumerate(originals):
                blocks[i] = block
        return torch.cat(correct), torch.cat(logit)


def proj_input_means(model: nn.Module, data: Any, batch_size: int | None = None, per_token: bool = True) -> Tensor:
    """Mean input of every block's ``attn.proj`` over a reference set (for mean ablation).

    Args:
        model: A timm ViT-family model.
        data: ``(x, y)`` tensors or an iterable of ``(x, y, ...)`` batches.
        batch_size: Images per forward.
        per_token: Keep one mean per token position (``[L,N,C]``); else ``[L,C]``.

    Returns:
        The means, float32 on the CPU.
    """
    blocks = _blocks(model)
    sums: list[Tensor | None] = [None] * len(blocks)
    count = [0]

    def add(l: int, x: Tensor) -> None:
        s = x.detach().float().sum(0)  # [N,C]
        sums[l] = s if sums[l] is None else sums[l] + s

    batches = _split(_materialize(data, _device(model)), batch_size)
    with tap_inputs([blk.attn.proj for blk in blocks], add), eval_mode(model), torch.no_grad():
        for x, _ in batches:
            model(x)
            count[0] += x.shape[0]
    means = torch.stack([s.cpu() / count[0] for s in sums])  # type: ignore[union-attr]
    return means if per_token else means.mean(1)


def head_ablation(
    model: nn.Module,
    data: Any,
    heads: Sequence[tuple[int, int]] | None = None,
    mode: str = "zero",
    means: Tensor | None = None,
    batch_size: int | None = 256,
    progress: bool = True,
) -> dict[str, Tensor]:
    """Ablate one head at a time and measure accuracy and target-logit drops.

    Args:
        model: A timm ViT-family model.
        data: ``(x, y)`` tensors or an iterable of ``(x, y, ...)`` batches (labels = targets).
        heads: ``(layer, head)`` pairs to ablate; ``None`` = every head.
        mode: ``"zero"`` or ``"mean"`` (``means`` from :func:`proj_input_means`; computed on
            ``data`` when not given).
        means: Mean ``attn.proj`` inputs for mean ablation.
        batch_size: Images per forward.
        progress: Show a tqdm bar over heads.

    Returns:
        ``accuracy`` (clean, 0-d), ``logit`` (clean mean target logit, 0-d),
        ``accuracy_drop`` ``[L,H]`` and ``logit_drop`` ``[L,H]`` (clean − ablated, NaN for heads
        not ablated), ``correct`` ``[B]`` and ``target_logit`` ``[B]`` of the clean model,
        ``ablated_correct`` ``[L,H,B]``.
    """
    blocks = _blocks(model)
    L, H = len(blocks), int(blocks[0].attn.num_heads)
    batches = _split(_materialize(data, _device(model)), batch_size)
    if mode == "mean" and means is None:
        means = proj_input_means(model, batches)
    pairs = list(heads) if heads is not None else [(l, h) for l in range(L) for h in range(H)]
    with eval_mode(model):
        resume = _Resume(model, batches)  # ablated forwards start at the ablated layer
        c0, z0 = resume.clean
        acc_drop = torch.full((L, H), float("nan"))
        logit_drop = torch.full((L, H), float("nan"))
        ablated = torch.full((L, H, c0.numel()), float("nan"))
        for l, h in tqdm(pairs, desc="head ablation", disable=not progress, leave=False):
            with ablate_heads(model, [(l, h)], mode=mode, means=means):
                c, z = resume.evaluate(l)
            acc_drop[l, h] = c0.mean() - c.mean()
            logit_drop[l, h] = (z0 - z).mean()
            ablated[l, h] = c
    return {
        "accuracy": c0.mean(),
        "logit": z0.mean(),
        "accuracy_drop": acc_drop,
        "logit_drop": logit_drop,
        "correct": c0,
        "target_logit": z0,
        "ablated_correct": ablated,
    }


def group_ablation(
    model: nn.Module,
    data: Any,
    high_ia: Tensor,
    mode: str = "zero",
    means: Tensor | None = None,
    batch_size: int | None = 256,
    max_subsets: int = 20,
    seed: int = 0,
    progress: bool = True,
    cache: dict[tuple[int, tuple[int, ...]], tuple[float, float]] | None = None,
) -> dict[str, Tensor]:
    """Ablate all High-IA heads of a layer, all Low-IA heads of a layer, and size-matched controls.

    The control for a group of ``k`` heads of layer ``l`` is the mean drop over (up to
    ``max_subsets``, else a seeded sample of) all ``k``-subsets of that layer's heads: if the
    Low-IA group's drop is below its control, Low-IA heads matter less than heads in general.

    Args:
        model: A timm ViT-family model.
        data: ``(x, y)`` tensors or an iterable of ``(x, y, ...)`` batches.
        high_ia: ``[L,H]`` bool, True for High-IA heads (``scores.head_types``).
        mode: ``"zero"`` or ``"mean"``.
        means: Mean ``attn.proj`` inputs for mean ablation (computed on ``data`` if missing).
        batch_size: Images per forward.
        max_subsets: Largest number of subsets enumerated for a control.
        seed: Seed for sampling subsets when there are more.
        progress: Show a tqdm bar over layers.
        cache: ``{(layer, heads): (accuracy drop, logit drop)}`` of ablations already measured
            on the same model, data and mode (filled here): calls with two head splits share
            their "all heads" groups and same-size controls instead of measuring them twice.

    Returns:
        ``[L]`` tensors ``{high,low,all,high_control,low_control}_{accuracy,logit}_drop`` (NaN
        where a group is empty) and ``n_high``, ``n_low``.
    """
    blocks = _blocks(model)
    L, H = len(blocks), int(blocks[0].attn.num_heads)
    high_ia = high_ia.bool().cpu()
    if high_ia.shape != (L, H):
        raise ValueError(f"high_ia must be [L,H]=({L},{H}), got {tuple(high_ia.shape)}")
    batches = _split(_materialize(data, _device(model)), batch_size)
    if mode == "mean" and means is None:
        means = proj_input_means(model, batches)
    gen = torch.Generator().manual_seed(int(seed))
    names = ("high", "low", "all", "high_control", "low_control")
    out = {f"{n}_{m}_drop": torch.full((L,), float("nan")) for n in names for m in ("accuracy", "logit")}
    cache = {} if cache is None else cache

    with eval_mode(model):
        resume = _Resume(model, batches)  # ablated forwards start at the ablated layer
        c0, z0 = resume.clean

        def drop(l: int, hs: tuple[int, ...]) -> tuple[float, float]:
            if (l, hs) not in cache:
                with ablate_heads(model, [(l, h) for h in hs], mode=mode, means=means):
                    c, z = resume.evaluate(l)
                cache[(l, hs)] = (float(c0.mean() - c.mean()), float((z0 - z).mean()))
            return cache[(l, hs)]

        def control(l: int, k: int) -> tuple[float, float]:
            subsets = list(itertools.combinations(range(H), k))
            if len(subsets) > max_subsets:
                pick = torch.randperm(len(subsets), generator=gen)[:max_subsets].tolist()
                subsets = [subsets[i] for i in pick]
            d = torch.tensor([drop(l, s) for s in subsets])
            return float(d[:, 0].mean()), float(d[:, 1].mean())

        for l in tqdm(range(L), desc="group ablation", disable=not progress, leave=False):
            hi = tuple(int(h) for h in high_ia[l].nonzero().flatten())
            lo = tuple(int(h) for h in (~high_ia[l]).nonzero().flatten())
            groups = {"high": hi, "low": lo, "all": tuple(range(H))}
            for n, hs in groups.items():
                if hs:
                    out[f"{n}_accuracy_drop"][l], out[f"{n}_logit_drop"][l] = drop(l, hs)
            for n, hs in (("high_control", hi), ("low_control", lo)):
                if hs:
                    out[f"{n}_accuracy_drop"][l], out[f"{n}_logit_drop"][l] = control(l, len(hs))
    out["n_high"] = high_ia.sum(1).float()
    out["n_low"] = (~high_ia).sum(1).float()
    return out


def mean_gmar_weights(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    norm: str = "l1",
    batch_size: int | None = None,
) -> Tensor:
    """GMAR head weights averaged over images, ``[L,H]`` (each layer sums to 1).

    Args:
        model: A supported timm ViT-family model.
        x: Model-normalised images ``[B,3,H,W]``.
        target: ``None`` (predicted class), an int or a ``[B]`` tensor.
        norm: ``"l1"`` or ``"l2"`` gradient norm.
        batch_size: Images per chunk.

    Returns:
        ``[L,H]`` mean weights (CPU).
    """
    B = x.shape[0]
    step = B if not batch_size else batch_size
    total = None
    for s in range(0, B, step):
        t = target if target is None or isinstance(target, int) else torch.as_tensor(target)[s : s + step]
        attn, grads = attention_and_grads(model, x[s : s + step], t)
        w = gmar_head_weights(attn, grads, norm=norm)
        part = w.detach().sum(0).cpu()
        total = part if total is None else total + part
    return total / B  # type: ignore[operator]
