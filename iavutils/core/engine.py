"""Compatibility names of the former fast engine, while the other layers move to the new ones.

Temporary: the lead deletes this module once no caller imports it. Old name -> new home:

* ``smoothgrad_fast`` -> :func:`iavutils.core.attribution.smoothgrad_passes`
  (:func:`iavutils.core.attribution.smoothgrad` for pixels)
* ``iav_fast`` -> :func:`iavutils.core.scores.iav`
* ``engine_cls_attention`` -> :func:`iavutils.core.scores.clean_cls_attention`
* ``cls_rows_from_block_input`` -> :mod:`iavutils.core.cls_rows`
* ``image_seed``, ``NOISE_MODES`` -> :mod:`iavutils.core.noise`
* ``ChunkPlan``, ``auto_chunk_size``, ``saved_bytes_per_sample`` -> :mod:`iavutils.core.chunking`
* ``iav_dataset``, ``autocast_deviation``, ``BF16_TOLERANCE`` -> :mod:`iavutils.core.sweep`
"""

from __future__ import annotations

from .attribution import smoothgrad_passes as smoothgrad_fast
from .chunking import ChunkPlan, auto_chunk_size, saved_bytes_per_sample
from .cls_rows import cls_rows_from_block_input
from .noise import NOISE_MODES, image_seed
from .scores import clean_cls_attention as engine_cls_attention
from .scores import iav as iav_fast
from .sweep import BF16_TOLERANCE, autocast_deviation, iav_dataset

__all__ = [
    "BF16_TOLERANCE",
    "ChunkPlan",
    "NOISE_MODES",
    "auto_chunk_size",
    "autocast_deviation",
    "cls_rows_from_block_input",
    "engine_cls_attention",
    "image_seed",
    "iav_dataset",
    "iav_fast",
    "saved_bytes_per_sample",
    "smoothgrad_fast",
]
