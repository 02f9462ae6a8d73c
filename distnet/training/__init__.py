"""Training: a ``Run`` (run.py), a pure ``step`` (step.py), the short loop (loop.py) and its observers."""
