"""iavutils: measurable Vision Transformer interpretability.

IA-Score / IAV / AAV (Park & Choi), attention rollout, GMAR (Jo, Jang & Park) and gradient
rollout (Chefer et al.), with an offline world of tiny pretrained ViTs. Names are imported
lazily so that ``import iavutils`` stays cheap and a submodule is loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # the analysis specification (every knob of an IAV analysis, its defaults, the cache key)
    "AnalysisSpec": "core.spec",
    "Study": "analysis.study",
    # hook plumbing and model geometry
    "record_attention": "core.hooks",
    "AttentionRecorder": "core.hooks",
    "model_geometry": "core.geometry",
    "ModelGeometry": "core.geometry",
    # attributions (smoothgrad is the chunked, input-only-gradient engine)
    "smoothgrad": "core.attribution",
    "gradcam": "core.attribution",
    "patch_pool": "core.attribution",
    # scores
    "cls_attention": "core.scores",
    "ia_score": "core.scores",
    "iav": "core.scores",
    "aav": "core.scores",
    "global_iav": "core.scores",
    "head_types": "core.scores",
    "attention_entropy": "core.scores",
    # rollout family
    "attention_rollout": "core.rollout",
    "gmar": "core.rollout",
    "gmar_head_weights": "core.rollout",
    "gradient_rollout": "core.rollout",
    "gmar_from_grads": "core.rollout",
    "gradient_rollout_from_grads": "core.rollout",
    "attention_and_grads": "core.rollout",
    # the SmoothGrad noise contract and the dataset seeding rule
    "noise_stream": "core.noise",
    "noise_seeds": "core.noise",
    "image_seed": "core.noise",
    "UnsupportedModelError": "core.geometry",
    # the embedded world and the real presets
    "load_model": "world.models",
    "ModelInfo": "world.models",
    "get_dataset": "world.data",
    "gaussian_blur": "world.shifts",
    "jigsaw": "world.shifts",
    "finetune": "world.training",
    "load_checkpoint": "world.training",
    "list_checkpoints": "world.training",
    "ResultStore": "world.store",
    "atomic_write": "world.store",
    # explanation quality and the paper's open questions
    "perturbation_curve": "core.metrics",
    "localization_metrics": "core.metrics",
    "explanation_maps": "analysis.explanations",
    "evaluate_explanations": "analysis.explanations",
    "ablate_heads": "analysis.ablation",
    "head_ablation": "analysis.ablation",
    "group_ablation": "analysis.ablation",
    "separability_test": "analysis.separability",
    "trend_features": "analysis.separability",
    # sweeps over a dataset (image i's noise seeded by image_seed(seed, i))
    "iav_dataset": "core.sweep",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'iavutils' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"iavutils.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
