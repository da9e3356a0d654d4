"""push_folder: a model (or adapter, or app) folder -> a git-lfs remote or a Hugging Face repo."""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from .card import PUBLISHED_AS_PUBLIC, assistant_name, model_card, public_file
from .errors import HubError
from .git_lfs import PushResult, pointer_error, pointer_files, push_git
from .gitcmd import GIT_TOKEN_ENVS, git
from .hf import push_hf
from .remote import HF_PREFIX, default_cache_dir, git_url, hf_repo_id, local_repo, slug

log = logging.getLogger(__name__)

_SKIP_PARTS = {".git", "__pycache__", ".cache", ".ipynb_checkpoints"}
# what a transformers Trainer writes beside the weights of a checkpoint-N folder
TRAINING_STATE = {"optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin"}  # and rng_state*.pth


def folder_files(folder: Path) -> dict[str, Path]:
    """rel path -> file, for everything under `folder` worth pushing. A link is pushed as the file it points to (a
    Hugging Face cache snapshot is links into its blobs): git would store the link itself, and no weights."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not _SKIP_PARTS & set(rel.parts) and path.suffix != ".pyc":
            files[rel.as_posix()] = path.resolve() if path.is_symlink() else path
    return files


def push_folder(folder: str | Path, remote: str, *, private: bool = False, message: str | None = None,
                branch: str = "main", card: bool = True, name: str | None = None,
                cache_dir: str | Path | None = None, repo_type: str = "model",
                token_env: tuple[str, ...] = GIT_TOKEN_ENVS, add: list[str | Path] | tuple = ()) -> PushResult:
    """Make `remote`'s `branch` hold exactly the files of `folder` (+ a model card README.md when `card`).

    `add`: files from elsewhere pushed at the top of the repo too, e.g. the GGUF of `assistant export`
    and its Modelfile (``*.gguf`` is stored in git-lfs, so a laptop can pull that one file).

    `remote`: `hf:owner/name` for the Hugging Face Hub; else a git URL or the path of a bare repo.
    Pushing the same files again makes no commit; a changed file makes one.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise HubError(f"{folder}: no such folder to push")
    files = folder_files(folder)
    checkpoints = sorted({rel.split("/", 1)[0] for rel in files if re.match(r"checkpoint-\d+/", rel)})
    final = next((f for f in ("adapter_config.json", "config.json") if f in files), None)
    if final and checkpoints:  # a training run: its final adapter (or weights), not its resume points
        log.info("pushing the run's final %s, not its %s (the resume points)",
                 "adapter" if final == "adapter_config.json" else "model", ", ".join(checkpoints))
        files = {rel: path for rel, path in files.items() if rel.split("/", 1)[0] not in checkpoints}
    for extra in map(lambda p: Path(p).expanduser(), add):
        if not extra.is_file():
            raise HubError(f"{extra}: no such file to add to the push")
        if extra.name in files and files[extra.name].resolve() != extra.resolve():
            raise HubError(f"--add {extra}: {folder} has a {extra.name} of its own, which it would replace; "
                           "rename the file to add")
        files[extra.name] = extra
    if not files:
        raise HubError(f"{folder}: the folder is empty, nothing to push")
    # a mistyped folder (merged/ itself, a data folder) is no model to publish: a model's files are at its top
    if card and not any(rel in ("config.json", "adapter_config.json") or rel.endswith(".gguf") and "/" not in rel
                        for rel in files):
        raise HubError(f"{folder}: holds no model (no config.json, adapter_config.json or .gguf); push a merged model "
                       "(assistant merge RUN --out DIR), an adapter or an export folder, or pass --no-card to push "
                       "its files as they are")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", remote) and not Path(remote).expanduser().exists():  # owner/name: no hf:
        hub = "" if remote.endswith(".git") else f"a Hugging Face repo is hf:{remote}, "  # (a .git is a folder's)
        raise HubError(f"{remote}: no such local repository; {hub}a new local one needs `git init --bare {remote}` "
                       "first")
    state = [rel for rel in files if rel.rsplit("/", 1)[-1] in TRAINING_STATE or "/rng_state" in f"/{rel}"]
    if state:  # a Trainer's output folder: its checkpoints' optimizer state would be pushed over the model
        raise HubError(f"{folder}: holds training state ({state[0]}), not a model to push; merge it first "
                       f"(assistant merge {folder} --out DIR) and push DIR")
    left = pointer_files(folder)
    if left:
        raise pointer_error(folder, left)
    gitattributes = files.pop(".gitattributes", None)
    # the card's title and the commit message name the assistant when the folder records its name
    name = name or assistant_name(folder) or remote.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") or folder.name
    generated = {}
    if card:
        if "README.md" in files:
            log.info("replacing %s with a generated model card (pass card=False / --no-card to keep it)",
                     files.pop("README.md"))
        generated["README.md"] = model_card(folder, name=name).encode()
    for published in PUBLISHED_AS_PUBLIC:  # no /home/<user>/... of the machine that trained
        if published in files and (public := public_file(folder, published)) is not None:
            generated[published] = public
            files.pop(published)
    message = message or f"Upload {name}"
    if remote.startswith(HF_PREFIX):
        repo_id = hf_repo_id(remote)
        if repo_id is None:
            raise HubError(f"{remote!r}: a Hugging Face target is hf:owner/name")
        return _push_to_hf(folder, files, generated, repo_id, private=private, message=message, branch=branch,
                           repo_type="space" if remote.startswith(HF_PREFIX + "spaces/") else repo_type)
    url = git_url(remote)
    if git(["check-ref-format", "--branch", branch], cwd=None, env=dict(os.environ), check=False).returncode != 0:
        raise HubError(f"--branch {branch!r}: not a branch name (no spaces, '..', '~', '^', ':' or a leading '-')")
    local = local_repo(url)
    if local is not None and (local / ".git").exists():  # a push re-pointed its HEAD, its files shown as deleted
        raise HubError(f"{remote}: a working copy (git init without --bare), not a repository to push to; make "
                       f"one with `git init --bare {remote}.git` and push there")
    if private:
        log.warning("--private applies to Hugging Face repos; a git remote's visibility is set on its server")
    work_dir = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "push" / slug(f"{url}#{branch}")
    extra = gitattributes.read_text(encoding="utf-8").splitlines() if gitattributes else []
    return push_git(files, generated, url, work_dir=work_dir, branch=branch, message=message,
                    gitattributes=extra, token_env=token_env)


def _push_to_hf(folder: Path, files: dict[str, Path], generated: dict[str, bytes], repo_id: str, *,
                private: bool, message: str, branch: str, repo_type: str) -> PushResult:
    # Upload a staging folder of hard links (copies across file systems) plus the generated files, so the
    # user's folder is never written to.
    try:
        staging = tempfile.TemporaryDirectory(prefix=".push-", dir=folder.parent)
    except OSError:
        staging = tempfile.TemporaryDirectory(prefix="push-")
    with staging as tmp:
        stage = Path(tmp)
        for rel, src in files.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                (stage / rel).hardlink_to(src)
            except OSError:
                shutil.copy2(src, stage / rel)
        for rel, data in generated.items():
            (stage / rel).write_bytes(data)
        url, changed = push_hf(stage, repo_id, private=private, message=message, branch=branch,
                               repo_type=repo_type, space_sdk="gradio" if repo_type == "space" else None)
    return PushResult(remote=f"hf:{repo_id}", revision=url, changed=changed)
