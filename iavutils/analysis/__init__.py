"""The analyses: run plumbing (run directories, finetuned checkpoints, held-out images, the cached
per-checkpoint IAV analysis) and one module per chapter. Imports ``world`` and ``core``.
"""
