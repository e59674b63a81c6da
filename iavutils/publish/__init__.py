"""Publishing: the notebook runner and book builder, figures, the head explorer, JupyterLab and the
rehearsal of the real path. The top layer: imports everything below, imported by nothing in it.
"""
