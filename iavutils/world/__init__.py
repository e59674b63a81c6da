"""The world the analyses study: datasets, distribution shifts, models and presets, pretraining,
finetuning and the result store. Imports ``core`` only.
"""
