"""fetch_model: a model source (git URL, Hugging Face repo id, or local folder) -> a verified local folder."""
from __future__ import annotations

import logging
from pathlib import Path

from .errors import HubError
from .git_lfs import clone_or_update, pointer_error, pointer_files
from .gitcmd import token_from_env
from .hf import download_hf
from .remote import HF_PREFIX, default_cache_dir, git_url, hf_repo_id, is_bare_repo, is_git_url, slug

log = logging.getLogger(__name__)


def fetch_model(source: str, cache_dir: str | Path | None = None, *,
                token_env: tuple[str, ...] = ("HF_TOKEN", "OPENXLAB_TOKEN", "GIT_TOKEN")) -> Path:
    """A local folder holding the model named by `source`, with real weights (no git-lfs pointers).

    - an existing local folder: itself (checked for pointer files);
    - a git URL: cloned into `cache_dir` with GIT_LFS_SKIP_SMUDGE + `git lfs pull`, every LFS file checked
      against its pointer; a later call fetches and fast-forwards the same clone;
    - `owner/name` or `hf:owner/name`: huggingface_hub.snapshot_download (its cache is `cache_dir` when
      given, else the Hugging Face default).
    Tokens are read from the environment variables in `token_env` (HF_* for the Hub, the others for git).
    """
    source = source.strip()
    if not source:
        raise HubError("no model source given: pass a git URL, a Hugging Face repo id or a local folder")
    local = Path(source).expanduser()
    bare_repo = is_bare_repo(local)
    if not source.startswith(HF_PREFIX) and local.exists() and not bare_repo:
        if not local.is_dir():
            raise HubError(f"{local}: not a folder; a model source is a folder, a git URL or a repo id")
        left = pointer_files(local)
        if left:
            raise pointer_error(local, left)
        return local.resolve()
    if is_git_url(source) or bare_repo:
        url = git_url(source)
        # absolute: git runs in the clone's parent folder, where a relative path would point elsewhere
        root = Path(cache_dir).expanduser().resolve() if cache_dir else default_cache_dir() / "models"
        return clone_or_update(url, root / slug(url), token_env=tuple(token_env))
    repo_id = hf_repo_id(source)
    if repo_id is None and (local.is_absolute() or source.startswith(("~", "./", "../")) or source.count("/") > 1):
        raise HubError(f"{local}: no such folder (a model source is a folder, a git URL or a Hugging Face repo id)")
    if repo_id is None:
        raise HubError(f"{source!r} is not a folder, a git URL (https://..., file://..., git@host:...) or a "
                       "Hugging Face repo id (owner/name)")
    token = token_from_env([n for n in token_env if n.startswith("HF_")])
    try:
        return download_hf(repo_id, cache_dir=Path(cache_dir).expanduser() if cache_dir else None, token=token)
    except HubError as err:
        if source.startswith(HF_PREFIX):
            raise
        # owner/name is also how a folder two levels down is written: a mistyped one read as a repo id
        raise HubError(f"{err} (no folder {local.absolute()} here either)") from None
