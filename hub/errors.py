"""The one error class of the hub package, and the redaction every message goes through."""
from __future__ import annotations

import os
import re

# Environment variables that may hold a secret; their values are masked in every message we raise.
SECRET_ENVS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENXLAB_TOKEN", "GIT_TOKEN")

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


class HubError(RuntimeError):
    """A push or clone failed for a reason the user can fix; the message says what to do next."""

    user_error = True

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


def strip_credentials(url: str) -> str:
    """`https://user:token@host/x` -> `https://host/x` (also inside longer text)."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>", url)


def has_credentials(url: str) -> bool:
    return bool(_URL_CREDENTIALS.match(url.strip()))


def redact(text: str) -> str:
    """Remove URL credentials and the value of any token variable from `text`."""
    text = strip_credentials(text)
    for name in SECRET_ENVS:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text
