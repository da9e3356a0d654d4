"""Where the studio may listen, decided before anything heavy is imported: 127.0.0.1, or a login.

It can start trainings and push with tokens, so beyond this machine (``--host``, ``--share``) it asks
for a login (``--auth user:password`` or STUDIO_AUTH) and warns.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
AUTH_ENV = "STUDIO_AUTH"  # user:password, the login asked for when the studio listens beyond this machine


class StudioError(ValueError):
    """How the studio was asked to start cannot be done safely (one line, exit 1)."""

    user_error = True


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise StudioError(f"--auth / {AUTH_ENV}: expected user:password")
    return user, password


def login_for(host: str, share: bool, auth: str | None) -> tuple[str, str] | None:
    """The login to ask for (None on loopback without one); StudioError when exposed without a login."""
    login = parse_auth(auth or os.environ.get(AUTH_ENV))
    exposed = share or host not in LOOPBACK
    if exposed and login is None:
        raise StudioError(f"the studio starts trainings and pushes with your tokens: listening on {host}"
                          f"{' with a public share link' if share else ''} needs a login; pass --auth user:password "
                          f"or set {AUTH_ENV}")
    return login


def warn_if_exposed(host: str, share: bool) -> None:
    if share or host not in LOOPBACK:
        log.warning("the studio is reachable beyond this machine (%s%s); anyone with the login can run jobs and "
                    "push with the tokens of this environment", host, ", public share link" if share else "")
