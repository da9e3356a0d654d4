"""myassistant: turn an open chat LLM into your own assistant and put it online.

The repository root is this package (pyproject maps it), so a checkout reads as the pipeline
``trainer/ → hub/ → app.py`` while an install puts everything under one name, ``myassistant``.
"""
__version__ = "0.1.0"

import os as _os

# libgomp (torch's OpenMP runtime) spins 300,000 times at a barrier before it sleeps. On a shared 2-core host
# (a free Space, CI, a laptop with a browser open) one worker descheduled by another process then keeps its
# sibling spinning for milliseconds at every parallel region: a CPU decode step of the 1.8B shape took about
# 4x as long beside one busy process (benchmarks/cpu_contention.py). libgomp reads this when it loads, i.e. at
# `import torch`; a value set by the user wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "3000")
