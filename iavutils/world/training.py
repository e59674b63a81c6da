"""Finetuning with a checkpoint per epoch, resumable at any point.

Layout of a run (``{run_dir}/{dataset}/{preset}/``)::

    config.json                       the recipe and everything else the run depends on
    metrics.json                      per epoch: train_loss, train_acc, val_loss, val_acc, lr, seconds
    checkpoints/epoch_000.safetensors the pretrained weights with the new, randomly initialised head
    checkpoints/epoch_001.safetensors ... one per epoch
    checkpoints/train_state_XXX.pt    optimizer, scheduler, AMP scaler and RNG state of the two
                                      newest complete epochs while training, of the last one once
                                      the run is finished (read back with ``weights_only=True``)

Every file is written atomically. Within an epoch the order is checkpoint, training state,
then ``metrics.json``; an epoch is complete when all three are there. A run killed at any point
and started again resumes from the last complete epoch and, since each epoch's data order,
augmentation and dropout are seeded by ``(seed, epoch)``, produces the same weights and metrics
as an uninterrupted run. Starting a finished run again does nothing.

A damaged newest checkpoint or training state (a copy cut short, a full disk) is skipped with a
warning naming the file, and training resumes from the newest epoch that can be resumed
exactly: the one before while training (two training states are kept), epoch 0 otherwise.
Unreadable ``config.json`` / ``metrics.json`` raise an error naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from ..core.progress import tqdm  # one progress helper: widgets, terminal, or the book runner

# Reading a run back lives in checkpoints; imported here, where it has always been importable.
from .checkpoints import (
    _complete_epochs,
    _read_config,
    _read_metrics,
    _resume_point,
    list_checkpoints,
    load_checkpoint,
    run_path,
)
from .data import get_dataset
from .models import PRESETS, ModelInfo, load_model, load_state_dict_file, safetensors_problem
from .store import atomic_write, atomic_write_json

__all__ = ["FinetuneConfig", "RECIPES", "finetune", "list_checkpoints", "load_checkpoint", "run_path", "resolve_device", "evaluate"]


@dataclass(frozen=True)
class FinetuneConfig:
    """A finetuning recipe.

    Attributes:
        epochs: Training epochs (one checkpoint each, plus epoch 0 = initialisation).
        batch_size: Images per optimizer step (the effective batch).
        micro_batch_size: Images per forward/backward; gradients are accumulated over
            ``batch_size / micro_batch_size`` micro-batches. ``None``: the whole batch at once,
            halved automatically on a CUDA out-of-memory error.
        lr: Peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_epochs: Linear warm-up before the cosine decay (fractional allowed).
        min_lr: Learning rate at the end of the cosine schedule.
        amp: Mixed precision on CUDA (bfloat16 where supported, else float16 with loss scaling).
            Ignored on the CPU.
        seed: Seeds the head initialisation, data order, augmentation and dropout.
        augment: ``"flip"`` (random horizontal flips) or ``"none"``.
        label_smoothing: Cross-entropy label smoothing.
        grad_clip: Max gradient norm, or ``None``.
        max_val: Evaluate on the first ``max_val`` validation images only (``None``: all).
        eval_batch_size: Images per forward pass when evaluating.
    """

    epochs: int = 30
    batch_size: int = 768
    micro_batch_size: int | None = None
    lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    amp: bool = True
    seed: int = 0
    augment: str = "flip"
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    max_val: int | None = None
    eval_batch_size: int = 256

    def replace(self, **changes) -> "FinetuneConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


RECIPES: dict[str, FinetuneConfig] = {
    # The paper: batch 768, lr 1e-5, cosine schedule, 30 epochs (AdamW, mixed precision on GPU).
    "paper": FinetuneConfig(epochs=30, batch_size=768, lr=1e-5, weight_decay=0.05, warmup_epochs=0.0, amp=True),
    # CPU-sized for the tiny presets on the embedded dataset (5000 images, 4 epochs): one to two
    # minutes per preset on a busy 2-core CPU.
    "tiny": FinetuneConfig(epochs=4, batch_size=64, lr=5e-4, weight_decay=0.05, warmup_epochs=0.5, min_lr=1e-5, amp=False),
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; an unavailable device is a clear error.

    Raises:
        ValueError: Not a device name, or a CUDA / MPS device that this machine does not have.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a device name ({err}); use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(
                f"device={str(device)!r} was requested, but CUDA is not available on this machine (torch "
                f"{torch.__version__}, {build}; no usable GPU or driver). Use device='cpu', or device='auto' "
                f"to take a GPU only when there is one."
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device={str(device)!r} was requested, but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={str(device)!r} was requested, but MPS is not available; use device='cpu' or 'auto'")
    return dev


def _fetch(ds, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(ds, "get_batch"):
        batch = ds.get_batch(index)
        return batch[0], batch[1]
    items = [ds[int(i)] for i in index]
    return torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def evaluate(
    model: nn.Module, ds, device: str | torch.device = "cpu", batch_size: int = 256, limit: int | None = None,
    amp: bool = True, progress: bool = False,
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on a dataset (first ``limit`` items)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    n = len(ds) if limit is None else min(limit, len(ds))
    correct, loss_sum = 0, 0.0
    try:
        for start in tqdm(range(0, n, batch_size), desc="eval", leave=False, disable=not progress):
            x, y = _fetch(ds, torch.arange(start, min(n, start + batch_size)))
            x, y = x.to(device), y.to(device)
            with _autocast(device, amp):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(-1) == y).sum().item()
    finally:
        model.train(was_training)
    return {"acc": correct / max(n, 1), "loss": loss_sum / max(n, 1)}


def _lr_factor(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return (min_lr + (lr - min_lr) * cos) / lr


def _config_doc(preset: str, dataset: str, cfg: FinetuneConfig, num_classes: int, max_train: int | None) -> dict:
    return {"preset": preset, "dataset": dataset, "num_classes": num_classes, "max_train": max_train, **dataclasses.asdict(cfg)}


def finetune(
    preset: str,
    dataset: str = "embedded",
    run_dir: str | Path = "runs",
    config: FinetuneConfig | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    num_classes: int | None = None,
    max_train: int | None = None,
    *,
    data_root: str | Path | None = None,
) -> list[dict]:
    """Finetunes a preset with a checkpoint per epoch; resumes an interrupted run.

    Args:
        preset: A preset of :mod:`iavutils.world.models`.
        dataset: ``"embedded"`` or ``"cifar10"`` (validation: ``"val"`` / ``"test"`` split).
        run_dir: Root of the runs; this run lives in ``{run_dir}/{dataset}/{preset}``.
        config: The recipe; ``None``: ``RECIPES["tiny"]`` for tiny presets, else ``RECIPES["paper"]``.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ...
        progress: Show tqdm progress bars.
        num_classes: Head size; ``None``: the dataset's number of classes.
        max_train: Train on the first ``max_train`` training images only (tests, quick looks).
        data_root: CIFAR-10 directory (see :class:`iavutils.world.data.CIFAR10Dataset`).

    Returns:
        The per-epoch metrics (also in ``metrics.json``), epoch 0 being the initialisation.

    Raises:
        ValueError: Unknown preset; a device this machine does not have (checked before any
            file is written); the run directory holds a run with a different configuration;
            an unreadable ``config.json`` or ``metrics.json`` (named in the message).
    """
    # Everything that can be checked is checked before a file is written.
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if config is None:
        config = RECIPES["tiny"] if preset.startswith("tiny-") else RECIPES["paper"]
    cfg = config
    device = resolve_device(device)
    run = run_path(run_dir, dataset, preset)
    ck = run / "checkpoints"

    if (run / "config.json").exists():
        _read_config(run)  # a damaged file is named now, not after the datasets are built
        _read_metrics(run)

    # Datasets first: their class count fixes the head, which is part of the configuration.
    info = PRESETS[preset]
    train_ds = get_dataset(dataset, "train", info=info, root=data_root)
    val_split = "val" if dataset != "cifar10" else "test"
    val_ds = get_dataset(dataset, val_split, info=info, root=data_root)
    if num_classes is None:
        num_classes = train_ds.num_classes

    doc = _config_doc(preset, dataset, cfg, num_classes, max_train)
    if (run / "config.json").exists():
        old = _read_config(run)
        if old != json.loads(json.dumps(doc)):
            diff = sorted(k for k in set(old) | set(doc) if old.get(k) != json.loads(json.dumps(doc)).get(k))
            raise ValueError(
                f"{run} holds a run with a different configuration (differs in {diff}); "
                f"use another run_dir or delete that directory"
            )
    else:
        atomic_write_json(run / "config.json", doc)

    metrics = _read_metrics(run)
    last = _complete_epochs(run, metrics)
    last, saved = _resume_point(ck, min(last, cfg.epochs), cfg.epochs)
    metrics = metrics[: last + 1]
    if last >= cfg.epochs:
        return metrics

    n_train = len(train_ds) if max_train is None else min(max_train, len(train_ds))
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))

    torch.manual_seed(cfg.seed)  # the new head's initialisation
    model, info = load_model(preset, num_classes=num_classes, device=device)
    use_amp = cfg.amp and device.type == "cuda"

    if last < 0:
        t0 = time.perf_counter()
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write(ck / "epoch_000.safetensors", lambda p: save_file(state, p))
        ev = evaluate(model, val_ds, device, cfg.eval_batch_size, cfg.max_val, use_amp)
        metrics = [{"epoch": 0, "train_loss": None, "train_acc": None, "val_loss": ev["loss"], "val_acc": ev["acc"],
                    "lr": None, "seconds": time.perf_counter() - t0}]
        atomic_write_json(run / "metrics.json", metrics)
        last = 0

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # Norms, biases, tokens and position tables are not decayed (timm/BEiT convention).
        (no_decay if p.ndim <= 1 or name.endswith(("cls_token", "pos_embed", "relative_position_bias_table")) else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total_steps, warmup_steps, cfg.lr, cfg.min_lr)
    )
    fp16 = use_amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)

    if last > 0:
        model.load_state_dict(load_state_dict_file(ck / f"epoch_{last:03d}.safetensors"))
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["torch_rng"])
        if device.type == "cuda" and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        micro = saved.get("micro_batch_size") or cfg.micro_batch_size
    elif last == 0:
        model.load_state_dict(load_state_dict_file(ck / "epoch_000.safetensors"))
        micro = cfg.micro_batch_size

    micro = micro or cfg.batch_size
    model.train()
    for epoch in range(last + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout / drop-path, if any
        order = torch.randperm(n_train, generator=g)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"{preset} epoch {epoch}/{cfg.epochs}", leave=False, disable=not progress)
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            flips = torch.rand(len(idx), generator=g) < 0.5 if cfg.augment == "flip" else None
            while True:
                try:
                    batch_loss, batch_correct = _train_step(model, train_ds, idx, flips, micro, device, use_amp, cfg.label_smoothing, scaler)
                    break
                except torch.cuda.OutOfMemoryError:
                    optimizer.zero_grad(set_to_none=True)
                    if micro <= 1:
                        raise
                    micro = max(1, micro // 2)
                    torch.cuda.empty_cache()
                    tqdm.write(f"out of GPU memory: accumulating micro-batches of {micro}")
            if cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loss_sum += batch_loss
            correct += batch_correct
            seen += len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        lr_now = optimizer.param_groups[0]["lr"]
        ev = evaluate(model, val_ds, device, cfg.eval_batch_size, cfg.max_val, use_amp)
        model.train()

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write(ck / f"epoch_{epoch:03d}.safetensors", lambda p: save_file(state, p))
        train_state = {
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "micro_batch_size": micro,
        }
        atomic_write(ck / f"train_state_{epoch:03d}.pt", lambda p: torch.save(train_state, p))
        metrics.append({
            "epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen, "val_loss": ev["loss"],
            "val_acc": ev["acc"], "lr": lr_now, "seconds": time.perf_counter() - t0,
        })
        atomic_write_json(run / "metrics.json", metrics)
        # Only the newest optimizer states are kept (ViT-B's is ~1 GB per epoch): two while
        # training, so that a damaged newest one still leaves an epoch to resume from exactly;
        # one once the run is finished.
        keep = {f"train_state_{e:03d}.pt" for e in (epoch, epoch - 1 if epoch < cfg.epochs else epoch)}
        for old in ck.glob("train_state_*.pt"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
        if progress:
            tqdm.write(f"{preset} epoch {epoch}: train_loss {loss_sum / seen:.4f} train_acc {correct / seen:.4f} "
                       f"val_acc {ev['acc']:.4f} ({metrics[-1]['seconds']:.1f}s)")
    model.eval()
    return metrics


def _train_step(model, ds, idx, flips, micro, device, use_amp, label_smoothing, scaler) -> tuple[float, int]:
    """Forward/backward of one batch in micro-batches; gradients accumulate in ``.grad``."""
    loss_sum, correct = 0.0, 0
    for start in range(0, len(idx), micro):
        sub = idx[start : start + micro]
        x, y = _fetch(ds, sub)
        if flips is not None:
            f = flips[start : start + micro]
            x = torch.where(f[:, None, None, None], x.flip(-1), x)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, use_amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=label_smoothing)
        scaler.scale(loss / len(idx)).backward()
        loss_sum += loss.item()
        correct += (logits.argmax(-1) == y).sum().item()
    return loss_sum, correct
