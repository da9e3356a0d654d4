"""myassistant: turn an open chat LLM into your own assistant and put it online.

The repository root is this package (pyproject maps it), so a checkout reads as the pipeline
``trainer/ → hub/ → app.py`` while an install puts everything under one name, ``myassistant``.
"""
__version__ = "0.1.0"
