"""What a ``PRESETS=real make book`` run costs, chapter by chapter, from FLOP counts.

No GPU is needed: the FLOPs of one image's forward, forward + input-gradient backward (what
SmoothGrad, GMAR and gradient rollout do) and training step (forward + full backward) are
counted with :class:`torch.utils.flop_counter.FlopCounterMode` on each real preset's
architecture (random weights, 224×224), and multiplied by how many image passes each chapter
makes at the notebooks' default parameters and the paper's finetuning recipe. The pass counts
below follow the code of each chapter (cached analyses counted once, in the first chapter that
computes them); group ablation is counted at its upper bound (``max_subsets`` controls per
group). GPU-minutes are FLOPs divided by an *assumed* sustained rate (``--tflops``), not a
measurement.

Usage::

    python benchmarks/paper_cost.py                    # table for the four real presets
    python benchmarks/paper_cost.py --tflops 200 --json benchmarks/results/paper_cost.json
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from iavutils.analysis import disturbance, robustness  # noqa: E402
from iavutils.analysis import explanations as ev  # noqa: E402
from iavutils.core.metrics import DEFAULT_FRACTIONS  # noqa: E402
from iavutils.world.models import REAL_PRESETS, build_model  # noqa: E402
from iavutils.world.store import atomic_write_json  # noqa: E402
from iavutils.world.training import RECIPES  # noqa: E402

CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
GROUP_MAX_SUBSETS = 20  # iavutils.analysis.ablation.group_ablation's default


def notebook_defaults(stem: str) -> dict:
    """The parameters cell of ``notebooks/<stem>.ipynb`` as a dict of literals."""
    nb = json.loads((REPO / "notebooks" / f"{stem}.ipynb").read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            out = {}
            for node in ast.parse("".join(cell["source"])).body:
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                    out[node.targets[0].id] = ast.literal_eval(node.value)
            return out
    raise ValueError(f"{stem} has no parameters cell")


def pass_flops(preset: str) -> dict[str, float]:
    """FLOPs of one 224×224 image: forward, forward + input gradient, training step."""
    model = build_model(preset, num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        model(x)
    for p in model.parameters():
        p.requires_grad_(False)
    xg = x.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as grad:
        model(xg)[:, 0].sum().backward()
    for p in model.parameters():
        p.requires_grad_(True)
    with FlopCounterMode(display=False) as train:
        model(x)[:, 0].sum().backward()
    return {"forward": fwd.get_total_flops(), "input_grad": grad.get_total_flops(), "train": train.get_total_flops()}


def chapter_passes() -> dict[str, dict[str, float]]:
    """Image passes per model and chapter: ``{chapter: {"forward"|"input_grad"|"train": count}}``."""
    paper = RECIPES["paper"]
    E = paper.epochs
    d = {stem: notebook_defaults(stem) for stem in (
        "01_generalization_robustness", "02_training_dynamics", "03_input_disturbance", "08_gmar",
        "09_head_explorer", "10_head_ablation")}
    n_img, n_sg = d["02_training_dynamics"]["num_images"], d["02_training_dynamics"]["n_samples"]
    stride = d["02_training_dynamics"]["epoch_stride"]
    analysed = len(range(0, E + 1, stride)) + (E % stride != 0)
    # One checkpoint analysis: a clean forward (logits, CLS rows) and n noisy input-gradient passes.
    analysis = {"forward": n_img, "input_grad": n_img * n_sg}
    grid = 14
    jig2 = len(robustness._jigsaw_swaps(4)) - 1
    jigg = len(robustness._jigsaw_swaps(grid * grid)) - 1
    num_eval = d["01_generalization_robustness"]["num_eval"]
    F = len(DEFAULT_FRACTIONS)
    n8 = d["08_gmar"]["num_images"]
    pix = len(ev.PERTURBATION_METHODS) * 2 * F
    patch = len(ev.PATCH_MASKING_METHODS) * F
    abl = d["10_head_ablation"]["ablation_images"]
    L, H = 12, 12
    per_group_call = 1 + L * (3 + 2 * GROUP_MAX_SUBSETS)  # clean, high/low/all, two controls per layer
    return {
        "00_finetune": {"train": E * CIFAR_TRAIN, "forward": (E + 1) * CIFAR_TEST},
        "01_generalization_robustness": {
            "forward": CIFAR_TEST + num_eval * (len(robustness.BLUR_DEGREES) + jig2 + jigg)},
        "02_training_dynamics": {k: analysed * v for k, v in analysis.items()},
        "03_input_disturbance": {"forward": len(disturbance.MASK_METHODS) * len(disturbance.MASK_RATIOS) * n_img},
        "04_global_receptive_field": {},  # cached analyses of chapter 02
        "05_global_iav": {},
        "06_head_roles": {},
        "07_class_discrimination": {},
        "08_gmar": {"forward": n8 * (3 + pix + patch), "input_grad": 2 * n8},  # grad methods + GradCAM
        "09_head_explorer": {"forward": 1, "input_grad": d["09_head_explorer"]["n_samples"]},
        "10_head_ablation": {"input_grad": n_img, "forward": abl * (1 + L * H + 2 * per_group_call)},
        "11_pretraining_separability": {},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default=",".join(REAL_PRESETS))
    ap.add_argument("--tflops", type=float, default=80.0,
                    help="assumed sustained TFLOP/s (default 80: about 800 ViT-B/16 training images/s, an A100-class GPU in mixed precision); an assumption")
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    args = ap.parse_args(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    flops = {p: pass_flops(p) for p in presets}
    passes = chapter_passes()
    rows = []
    for chapter, counts in passes.items():
        total = sum(counts.get(k, 0) * flops[p][k] for p in presets for k in ("forward", "input_grad", "train"))
        rows.append({
            "chapter": chapter,
            "passes_per_model": {k: int(v) for k, v in counts.items()},
            "pflops": total / 1e15,
            "gpu_minutes": total / (args.tflops * 1e12) / 60,
        })
    grand = sum(r["pflops"] for r in rows)
    print(f"presets: {', '.join(presets)}; GFLOPs per image (forward / input-grad / train): "
          + "; ".join(f"{p} {f['forward'] / 1e9:.1f}/{f['input_grad'] / 1e9:.1f}/{f['train'] / 1e9:.1f}"
                      for p, f in flops.items()))
    print(f"GPU-minutes assume {args.tflops:g} TFLOP/s sustained (not measured)\n")
    print(f"| chapter | image passes per model | PFLOPs ({len(presets)} models) | GPU-minutes |")
    print("|---|---|---|---|")
    for r in rows:
        desc = ", ".join(f"{v:,} {k.replace('_', '-')}" for k, v in r["passes_per_model"].items()) or "cached (chapter 02)"
        print(f"| `{r['chapter']}` | {desc} | {r['pflops']:.2f} | {r['gpu_minutes']:.1f} |")
    print(f"| **total** | | **{grand:.1f}** | **{grand * 1e15 / (args.tflops * 1e12) / 60:.0f}** |")
    if args.json:
        atomic_write_json(args.json, {"presets": presets, "tflops_assumed": args.tflops,
                                      "flops_per_image": flops, "chapters": rows, "total_pflops": grand})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
