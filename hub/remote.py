"""What a model source or push target names: a local folder, a git remote, or a Hugging Face repo."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import HubError, has_credentials

_GIT_SCHEMES = ("http://", "https://", "ssh://", "git://", "file://", "git+ssh://")
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")  # git@github.com:owner/name.git
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HF_PREFIX = "hf:"


def default_cache_dir() -> Path:
    """Where clones and push work dirs live: $ASSISTANT_CACHE, else ~/.cache/myassistant."""
    return Path(os.environ.get("ASSISTANT_CACHE") or Path.home() / ".cache" / "myassistant").expanduser()


def is_git_url(text: str) -> bool:
    return is_remote_url(text) or text.endswith(".git")


def is_bare_repo(path: Path) -> bool:
    """A bare git repository (`git init --bare`): what a push to a folder of this machine needs."""
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def is_remote_url(text: str) -> bool:
    """A URL or an scp-like address (not a path of this machine, whatever its name ends in)."""
    return text.startswith(_GIT_SCHEMES) or bool(_SCP_LIKE.match(text))


def local_repo(url: str) -> Path | None:
    """The folder a file:// URL names (as ``git_url`` and push print it: a space as %20); None for any other URL."""
    return Path(unquote(urlparse(url).path)) if url.startswith("file://") else None


def refuse_credentials(url: str) -> None:
    if has_credentials(url):
        raise HubError(f"{url}: the URL carries credentials; give the URL without them and put the token in "
                       "OPENXLAB_TOKEN or GIT_TOKEN (user name in GIT_USERNAME), so it is never stored")


def hf_repo_id(text: str) -> str | None:
    """`hf:owner/name` (or `hf:spaces/owner/name`) -> `owner/name`; a bare `owner/name` too."""
    rest = text[len(HF_PREFIX):] if text.startswith(HF_PREFIX) else text
    rest = rest.removeprefix("spaces/")
    return rest if _HF_ID.match(rest) else None


def git_url(target: str) -> str:
    """A git remote as a URL git and git-lfs both accept: local paths become `file://` URLs."""
    if is_remote_url(target):
        refuse_credentials(target)
        return target
    return Path(target).expanduser().resolve().as_uri()


def slug(url: str) -> str:
    """A stable folder name for a remote: its last path part plus a short hash of the whole URL."""
    name = re.sub(r"[^\w.-]", "_", url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1].removesuffix(".git"))
    return f"{name or 'repo'}-{hashlib.sha1(url.encode()).hexdigest()[:10]}"
