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
    # hook plumbing and model geometry
    "record_attention": "hooks",
    "AttentionRecorder": "hooks",
    "model_geometry": "hooks",
    "ModelGeometry": "hooks",
    # attributions
    "smoothgrad": "attribution",
    "gradcam": "attribution",
    "patch_pool": "attribution",
    # scores
    "cls_attention": "scores",
    "ia_score": "scores",
    "iav": "scores",
    "aav": "scores",
    "global_iav": "scores",
    "head_types": "scores",
    "attention_entropy": "scores",
    # rollout family
    "attention_rollout": "rollout",
    "gmar": "rollout",
    "gmar_head_weights": "rollout",
    "gradient_rollout": "rollout",
    "gmar_from_grads": "rollout",
    "gradient_rollout_from_grads": "rollout",
    "noise_stream": "attribution",
    "noise_seeds": "attribution",
    "UnsupportedModelError": "hooks",
    # the embedded world and the real presets
    "load_model": "models",
    "ModelInfo": "models",
    "get_dataset": "data",
    "gaussian_blur": "shifts",
    "jigsaw": "shifts",
    "finetune": "training",
    "load_checkpoint": "training",
    "list_checkpoints": "training",
    "ResultStore": "store",
    "atomic_write": "store",
    # explanation quality and the paper's open questions
    "perturbation_curve": "evaluation",
    "localization_metrics": "evaluation",
    "explanation_maps": "evaluation",
    "evaluate_explanations": "evaluation",
    "ablate_heads": "ablation",
    "head_ablation": "ablation",
    "group_ablation": "ablation",
    "separability_test": "separability",
    "trend_features": "separability",
    # the fast engine (same numbers as the reference, fewer passes over memory)
    "iav_fast": "engine",
    "iav_dataset": "engine",
    "smoothgrad_fast": "engine",
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
