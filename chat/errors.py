"""The chat package's one user-error class (its own module, so every chat module can raise it)."""
from __future__ import annotations


class EngineError(Exception):
    """The model could not be loaded or the request cannot be served as asked."""

    user_error = True
