"""The Hugging Face Hub through huggingface_hub: upload a folder, download a snapshot."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import HubError

log = logging.getLogger(__name__)

TOKEN_HELP = "set HF_TOKEN to a token from https://huggingface.co/settings/tokens"


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection errors of the HTTP client huggingface_hub uses (its name changed across versions)."""
    found: list[type[BaseException]] = [OSError, ValueError]
    for module in ("httpx2", "httpx", "requests"):
        try:
            found.append(__import__(module).HTTPError if module != "requests" else
                         __import__(module).RequestException)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _explain(err: Exception, repo_id: str, *, write: bool) -> HubError:
    from huggingface_hub import errors

    if isinstance(err, errors.GatedRepoError):
        return HubError(f"{repo_id} is gated: accept its terms on its Hugging Face page, then {TOKEN_HELP}")
    if isinstance(err, errors.RepositoryNotFoundError):
        return HubError(f"Hugging Face repo {repo_id} not found (or private): check the id, or {TOKEN_HELP}")
    if isinstance(err, errors.LocalTokenNotFoundError):
        return HubError(f"no Hugging Face token: {TOKEN_HELP} (with write access to push)")
    if isinstance(err, errors.LocalEntryNotFoundError):
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        return HubError(f"{repo_id} is not in the local Hugging Face cache and {why}: run `assistant clone "
                        f"{repo_id}` once on a machine with network access (unset HF_HUB_OFFLINE there), or give a local "
                        "folder")
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status == 401:
        return HubError(f"Hugging Face refused the token for {repo_id}: {TOKEN_HELP}")
    if status == 403:
        need = "write access" if write else "read access"
        return HubError(f"no {need} to {repo_id} on Hugging Face: use a token with {need} ({TOKEN_HELP})")
    if isinstance(err, OSError) and getattr(err, "errno", None) == 28:
        return HubError(f"disk full while downloading {repo_id}: free some space and run the command again")
    if type(err).__module__.split(".")[0] in ("httpx2", "httpx", "requests") and status is None:
        return HubError(f"cannot reach the Hugging Face Hub for {repo_id} ({type(err).__name__}: {err}): check the "
                        "network (and HF_ENDPOINT), then run the same command again")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    again = "run the same command again to resume (files already uploaded are skipped)" if write else \
        "run the command again to resume the download"
    return HubError(f"Hugging Face {'upload to' if write else 'download of'} {repo_id} failed: {first}; {again}")


def push_hf(folder: Path, repo_id: str, *, private: bool = False, message: str = "Upload model",
            branch: str | None = None, repo_type: str = "model", space_sdk: str | None = None,
            token: str | None = None) -> tuple[str, bool]:
    """Create the repo if needed and make it hold exactly `folder`; returns (commit url, whether it changed).

    upload_folder skips files whose content the repo already has (no files changed = no commit), remote
    files missing from `folder` are deleted in the same commit, and with Xet storage an interrupted upload
    resumes where it stopped.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    api = HfApi(token=token or os.environ.get("HF_TOKEN") or None)
    try:
        repo = api.create_repo(repo_id, private=private, repo_type=repo_type, exist_ok=True, space_sdk=space_sdk)
        if branch and branch != "main":
            api.create_branch(repo_id, branch=branch, repo_type=repo_type, exist_ok=True)
        before = api.repo_info(repo_id, repo_type=repo_type, revision=branch).sha
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type=repo_type, revision=branch,
                                 commit_message=message, ignore_patterns=[".git/*", ".cache/*"],
                                 delete_patterns=["*"])
    except (HfHubHTTPError, LocalTokenNotFoundError, *_network_errors()) as err:
        raise _explain(err, repo_id, write=True) from err
    url = getattr(info, "commit_url", None) or str(repo)
    changed = getattr(info, "oid", None) != before
    log.info("%s %s", "uploaded to" if changed else "already up to date:", url)
    return url, changed


def download_hf(repo_id: str, *, cache_dir: Path | None = None, revision: str | None = None,
                token: str | None = None) -> Path:
    """snapshot_download: the cached snapshot when offline, else download (resumes partial files)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = snapshot_download(repo_id, cache_dir=cache_dir, revision=revision,
                                 token=token or os.environ.get("HF_TOKEN") or None)
    except (HfHubHTTPError, LocalEntryNotFoundError, *_network_errors()) as err:
        raise _explain(err, repo_id, write=False) from err
    return Path(path)
