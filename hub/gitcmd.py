"""Running git: the environment that carries a token to git (never to disk), and git errors as HubErrors."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from .errors import HubError, redact, strip_credentials

log = logging.getLogger(__name__)

GIT_TOKEN_ENVS = ("OPENXLAB_TOKEN", "GIT_TOKEN")
_PASSWORD_VAR = "ASSISTANT_GIT_PASSWORD"
# An inline credential helper: git runs it with "get" and reads username/password from its stdout. The
# token stays in this process tree's environment; "store"/"erase" are ignored so nothing is written.
_HELPER = (
    '!f() { test "$1" = get || exit 0; '
    'echo "username=${GIT_USERNAME:-oauth2}"; echo "password=${%s}"; }; f' % _PASSWORD_VAR
)
INSTALL_GIT_LFS = (
    "git-lfs is not installed: install it (Debian/Ubuntu: `apt-get install git-lfs`, Fedora: `dnf install "
    "git-lfs`, macOS: `brew install git-lfs`) and run the command again"
)

# (substrings of git's stderr, lower case) -> what to tell the user; the first match wins.
_AUTH_NEEDLES = ("could not read username", "could not read password", "terminal prompts disabled",
                 "authentication failed", "http 401", "401 unauthorized", "error: 401", "authorization error",
                 "credentials for")
_TOKEN_REFUSED = ("{url} refused the token set in OPENXLAB_TOKEN / GIT_TOKEN: check that it is valid, not expired and "
                  "has access to this repo (and GIT_USERNAME if the server needs your user name)")
_KNOWN_FAILURES: list[tuple[tuple[str, ...], str]] = [
    (("refusing to update checked out branch",),
     "{url} is a working copy with that branch checked out, not a bare repository: push to a bare one "
     "(`git init --bare PATH`) or a hosted repo"),
    (("'lfs' is not a git command", "git-lfs: not found", "git-lfs: command not found"), INSTALL_GIT_LFS),
    (("no space left on device", "disk quota exceeded"),
     "disk full while writing {where}: free some space (weights need about twice their size while cloning) "
     "and run the command again"),
    (_AUTH_NEEDLES,
     "authentication required by {url}: set OPENXLAB_TOKEN or GIT_TOKEN (and GIT_USERNAME if the server "
     "needs your user name) to an access token with access to this repo"),
    (("http 403", "403 forbidden", "error: 403", "permission denied", "access denied", "not allowed to push",
      "write access", "protected branch"),
     "no write access to {url}: use a token (OPENXLAB_TOKEN / GIT_TOKEN) of an account that may push there"),
    (("repository not found", "does not appear to be a git repository", "http 404", "error: 404",
      "not found: 404", "project you were looking for could not be found"),
     "repository {url} not found: check the URL, or create the repository first (OpenXLab/GitHub: on the "
     "web site; a local bare repo: `git init --bare PATH`)"),
    (("object does not exist on the server", "smudge filter lfs failed", "missing object", "[404] object"),
     "git-lfs objects are missing on {url}: the weights were not uploaded with git-lfs; push them again "
     "with `assistant push`"),
    (("index.lock': file exists",),
     "another git command is running in {where}, or one was killed: if none is running, delete "
     "{where}/.git/index.lock and run the command again"),
]


def require_git_lfs() -> None:
    if shutil.which("git") is None:
        raise HubError("git is not installed: install it (Debian/Ubuntu: `apt-get install git git-lfs`)")
    done = subprocess.run(["git", "lfs", "version"], capture_output=True, text=True)
    if done.returncode != 0:
        raise HubError(INSTALL_GIT_LFS)


def token_from_env(names: tuple[str, ...] | list[str]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def git_env(token_env: tuple[str, ...] | list[str] = GIT_TOKEN_ENVS, *, skip_smudge: bool = False,
            url: str = "") -> dict[str, str]:
    """The environment for git: never prompts; with a token set, a transient credential helper serves it.

    The helper is configured through GIT_CONFIG_COUNT/KEY/VALUE, which every git process in the tree
    (git-lfs's `git credential fill` included) reads, and which never reaches any config file.
    """
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"
    if skip_smudge:
        env["GIT_LFS_SKIP_SMUDGE"] = "1"
    # HF_TOKEN is the Hub's, sent only to it: to huggingface.co's git too (a Space's MODEL_REPO as a git URL)
    to_hub = urlparse(url).hostname in ("huggingface.co", "hf.co")
    token = token_from_env([n for n in token_env if to_hub or not n.startswith("HF_")])
    if token:
        if url.startswith("http://"):
            log.warning("%s is plain http: the token goes to it unencrypted (use https:// where the server has it)",
                        strip_credentials(url))
        n = int(env.get("GIT_CONFIG_COUNT") or 0)
        # An empty value first resets any helper from the user's config, so ours is the only one asked.
        for i, value in enumerate(("", _HELPER)):
            env[f"GIT_CONFIG_KEY_{n + i}"] = "credential.helper"
            env[f"GIT_CONFIG_VALUE_{n + i}"] = value
        env["GIT_CONFIG_COUNT"] = str(n + 2)
        env[_PASSWORD_VAR] = token
    return env


def explain(stderr: str, *, url: str, where: Path | str, token_given: bool = False) -> str | None:
    low = stderr.lower()
    if token_given and any(s in low for s in _AUTH_NEEDLES):  # a token was sent and refused: not "set a token"
        return _TOKEN_REFUSED.format(url=strip_credentials(url))
    for needles, message in _KNOWN_FAILURES:
        if any(s in low for s in needles):
            return message.format(url=strip_credentials(url), where=where)
    return None


def cause(output: str, returncode: int) -> str:
    """git's own reason in its output: the first error line (the last line is often only "failed to push some
    refs"), else the last line."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    reasons = [line for line in lines if line.lower().startswith(("fatal:", "error:", "remote: error:", "remote: fatal:"))]
    return (reasons or lines or [f"exit code {returncode}"])[0 if reasons else -1]


def git(args: list[str], *, cwd: Path | str | None, env: dict[str, str], url: str = "",
        what: str = "", check: bool = True, input: str | None = None,
        encoding: str = "utf-8") -> subprocess.CompletedProcess[str]:
    """Run `git args...`; on failure raise a HubError that says what failed and what to do.

    `encoding="latin-1"` maps bytes 1:1 to characters, for output that is binary or sized in bytes. The bytes are
    decoded here, not by a text-mode pipe: its newline translation turned a blob's CR LF into one character, and
    `git cat-file --batch`'s sizes then no longer matched.
    """
    try:
        raw = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True,
                             input=None if input is None else input.encode(encoding))
    except FileNotFoundError as err:
        raise HubError("git is not installed: install it (Debian/Ubuntu: `apt-get install git git-lfs`)") from err
    done = subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(encoding, errors="replace"),
                                       raw.stderr.decode(encoding, errors="replace"))
    if done.stderr.strip():
        log.debug("git %s: %s", args[0], redact(done.stderr.strip()))
    if check and done.returncode != 0:
        detail = explain(done.stderr + done.stdout, url=url, where=cwd or ".", token_given=_PASSWORD_VAR in env)
        raise HubError(f"{what or 'git ' + args[0]} failed: {detail or cause(done.stderr or done.stdout, done.returncode)}")
    return done
