"""The maths and the hook plumbing: attention taps, SmoothGrad, scores, rollout, metrics.

Nothing here knows about datasets, presets, checkpoints or notebooks. ``core`` imports only
torch (and itself); every other layer may import it.
"""
