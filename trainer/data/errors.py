"""The data stage's one error type (its own module: the readers of every format and of raw text raise it)."""
from __future__ import annotations


class DataError(ValueError):
    """A data file a user can fix: empty, malformed, a missing field, an unknown role, empty content."""

    user_error = True
