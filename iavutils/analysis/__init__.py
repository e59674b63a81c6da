"""The experiments: run plumbing (run directories, checkpoints, the analysis specification and its
cache) and one module per chapter. Imports ``world`` and ``core``.
"""
