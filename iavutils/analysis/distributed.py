"""Data-parallel IAV sweeps with ``torchrun`` (PyTorch distributed).

Each rank takes a strided shard of the dataset indices, computes its IAVs with
:func:`iavutils.core.sweep.iav_dataset`, and the shards are gathered to rank 0, which puts them in
index order and writes them atomically into the results store (:class:`iavutils.world.store.ResultStore`).
The noise of every image is seeded from ``(seed, dataset index)`` only
(:func:`iavutils.core.noise.image_seed`), so the result is the same for any number of ranks.

Backends: ``nccl`` when CUDA is available (one GPU per rank, ``cuda:LOCAL_RANK``), ``gloo`` on
CPU. Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) it runs as a single process.

Command line::

    torchrun --nproc_per_node=4 -m iavutils.analysis.distributed --preset dino --dataset cifar10 \\
        --checkpoint-epoch 30 --num-images 10000 --run-dir runs
    python -m iavutils.analysis.distributed --preset tiny-dino --num-images 64      # one process
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..core.noise import NOISE_MODES
from ..core.spec import AnalysisSpec
from ..core.sweep import iav_dataset

__all__ = ["gather_shards", "init_distributed", "main", "shard_indices", "sweep", "sweep_key"]

RESULT_NAME = "iav_sweep"


def shard_indices(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The indices rank ``rank`` computes: a strided shard (balanced to within one image).

    Args:
        indices: all dataset indices of the sweep, in order.
        rank: this process's rank.
        world_size: number of processes.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    return list(indices)[rank::world_size]


def init_distributed(backend: str = "auto") -> tuple[int, int, torch.device]:
    """Joins the ``torchrun`` process group (if launched by it) and picks this rank's device.

    Returns:
        ``(rank, world_size, device)``; ``(0, 1, ...)`` when not launched by ``torchrun``.
    """
    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, device


def gather_shards(part: dict[str, Tensor], rank: int, world_size: int) -> dict[str, Tensor] | None:
    """Gathers every rank's ``iav_dataset`` dict to rank 0, sorted by dataset index.

    Returns:
        The merged dict on rank 0, ``None`` elsewhere.
    """
    part = {k: v.detach().cpu() for k, v in part.items()}
    if world_size == 1:
        parts = [part]
    else:
        parts = [None] * world_size if rank == 0 else None
        dist.gather_object(part, parts, dst=0)
        if rank != 0:
            return None
    parts = [p for p in parts if p and len(p.get("indices", ())) > 0]
    merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    order = torch.argsort(merged["indices"])
    return {k: v[order] for k, v in merged.items()}


def sweep_key(
    preset: str, dataset: str, split: str, indices: Sequence[int], n_samples: int, noise_level: float,
    seed: int, noise: str, target: str, weights: str,
) -> dict[str, Any]:
    """The store key of a sweep: everything the numbers depend on (not the number of ranks)."""
    idx = list(int(i) for i in indices)
    digest = hashlib.sha256(json.dumps(idx).encode()).hexdigest()[:16]
    return {
        "preset": preset, "dataset": dataset, "split": split, "num_images": len(idx), "indices_sha": digest,
        "n_samples": n_samples, "noise_level": noise_level, "seed": seed, "noise": noise, "target": target,
        "weights": weights,
    }


def sweep(
    model: nn.Module,
    dataset: Any,
    indices: Sequence[int],
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = True,
    **engine_kw: Any,
) -> dict[str, Tensor] | None:
    """Computes this rank's shard and gathers the full result to rank 0.

    Args:
        model: the ViT, already on ``device``.
        dataset: map-style dataset (items ``(x, y, ...)``).
        indices: all indices of the sweep.
        rank, world_size: from :func:`init_distributed`.
        device: this rank's device.
        progress: tqdm on rank 0 only.
        **engine_kw: passed to :func:`iavutils.core.sweep.iav_dataset` (``n_samples``,
            ``noise_level``, ``seed``, ``noise``, ``target``, ``chunk_size``, ``autocast`` …).

    Returns:
        ``iav_dataset``'s dict for all indices on rank 0; ``None`` on other ranks.
    """
    mine = shard_indices(indices, rank, world_size)
    if mine:
        part = iav_dataset(model, dataset, indices=mine, device=device, progress=progress and rank == 0, **engine_kw)
    else:
        part = {}
    return gather_shards(part, rank, world_size)


def _build(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, Any, str]:
    from ..world.models import load_model

    # every rank must build the same model: random weights (--random-weights) and a new,
    # randomly initialised head (--num-classes on a preset without one) come from this seed
    torch.manual_seed(args.model_seed)
    if args.checkpoint_epoch is not None:
        from ..world.training import load_checkpoint

        model, info = load_checkpoint(args.run_dir, args.dataset, args.preset, args.checkpoint_epoch, device=device)
        weights = f"checkpoint:{args.dataset}:{args.checkpoint_epoch}"
    elif args.random_weights:
        model, info = load_model(args.preset, num_classes=args.num_classes, pretrained=False, device=device)
        weights = f"random:{args.model_seed}"
    else:
        model, info = load_model(args.preset, num_classes=args.num_classes, device=device)
        weights = f"pretrained:head-seed{args.model_seed}" if args.num_classes is not None else "pretrained"
    return model.eval(), info, weights


def _dataset(args: argparse.Namespace, info: Any) -> Any:
    from ..world.data import get_dataset

    return get_dataset(args.dataset, split=args.split, info=info, root=args.data_root)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m iavutils.analysis.distributed", description="Data-parallel IAV sweep (torchrun).")
    ap.add_argument("--preset", required=True)
    ap.add_argument("--dataset", default="embedded")
    ap.add_argument("--split", default="val")
    ap.add_argument("--data-root", default=None, help="CIFAR-10 directory")
    ap.add_argument("--num-images", type=int, default=None, help="first N images (default: all)")
    spec = AnalysisSpec()  # the defaults are declared there only
    ap.add_argument("--n-samples", type=int, default=spec.n_samples)
    ap.add_argument("--noise-level", type=float, default=spec.noise_level)
    ap.add_argument("--noise", choices=NOISE_MODES, default=spec.noise)
    ap.add_argument("--target", choices=("pred", "label"), default="pred")
    ap.add_argument("--seed", type=int, default=spec.seed, help="base seed; image i uses image_seed(seed, i)")
    ap.add_argument("--run-dir", default="runs")
    ap.add_argument("--checkpoint-epoch", type=int, default=None, help="use a finetuned checkpoint from --run-dir")
    ap.add_argument("--num-classes", type=int, default=None,
                    help="new (seeded, random) head with this many outputs; default: keep the pretrained head. "
                         "For meaningful targets use --checkpoint-epoch (a finetuned model)")
    ap.add_argument("--random-weights", action="store_true", help="architecture only (benchmarks, tests)")
    ap.add_argument("--model-seed", type=int, default=0, help="seed of random weights / a new head (same on every rank)")
    ap.add_argument("--chunk-size", default="auto")
    ap.add_argument("--autocast", choices=("off", "bf16"), default="off")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--backend", default="auto", help="auto: nccl with CUDA, gloo on CPU")
    ap.add_argument("--out", default=None, help="also write the result to this safetensors file")
    ap.add_argument("--recompute", action="store_true", help="ignore a cached result")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Tensor] | None:
    """CLI entry point; returns the result on rank 0."""
    from ..world.store import ResultStore, atomic_write

    args = parse_args(argv)
    rank, world, device = init_distributed(args.backend)
    try:
        if device.type == "cpu" and world > 1 and "OMP_NUM_THREADS" not in os.environ:
            # share the cores between the ranks instead of oversubscribing them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
        model, info, weights = _build(args, device)
        ds = _dataset(args, info)
        total = len(ds) if args.num_images is None else min(args.num_images, len(ds))
        indices = list(range(total))
        key = sweep_key(args.preset, args.dataset, args.split, indices, args.n_samples, args.noise_level,
                        args.seed, args.noise, args.target, weights)
        store = ResultStore(args.run_dir)
        cached = None
        if rank == 0 and not args.recompute:
            cached = store.get(RESULT_NAME, key)
        hit = [cached is not None]
        if world > 1:
            dist.broadcast_object_list(hit, src=0)
        if hit[0]:
            result = cached
        else:
            result = sweep(
                model, ds, indices, rank=rank, world_size=world, device=device, progress=not args.no_progress,
                n_samples=args.n_samples, noise_level=args.noise_level, seed=args.seed, noise=args.noise,
                target=args.target, chunk_size=args.chunk_size if args.chunk_size == "auto" else int(args.chunk_size),
                autocast=torch.bfloat16 if args.autocast == "bf16" else None, compile=args.compile,
            )
            if rank == 0:
                result = store.put(RESULT_NAME, key, result, meta={"world_size": world, "device": str(device)})
        if rank == 0:
            if args.out:
                from safetensors.torch import save_file

                atomic_write(args.out, lambda p: save_file({k: v.contiguous() for k, v in result.items()}, str(p)))
            path, _ = store.paths(RESULT_NAME, key)
            print(f"IAV sweep: {len(result['iav'])} images, {world} rank(s) -> {path}")
        if world > 1:
            dist.barrier()
        return result if rank == 0 else None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
