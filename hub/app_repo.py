"""push-app: the Gradio app repo (Spaces / OpenXLab apps) that serves a given model repo.

The repo holds the project's own app.py (as `assistant_app.py`), the packages it imports, the app's
requirements.txt and packages.txt, a README with Spaces front matter, and a small `app.py` that sets
MODEL_REPO's default to the model repo before running the project's app.
"""
from __future__ import annotations

import importlib.metadata
import logging
import shutil
from pathlib import Path

import yaml

from .errors import HubError
from .git_lfs import PushResult
from .gitcmd import GIT_TOKEN_ENVS
from .push import folder_files, push_folder
from .remote import (HF_PREFIX, default_cache_dir, git_url, hf_repo_id, is_bare_repo, is_remote_url, local_repo,
                     refuse_credentials, slug)

log = logging.getLogger(__name__)

APP_PACKAGES = ("chat", "hub", "model")  # what app.py imports, directly or through chat/ (as myassistant.*)
APP_FILES = ("app.py", "requirements.txt", "packages.txt")
PACKAGE = "myassistant"  # the app imports the packages under this name; __init__.py is the package's own
PROJECT_ROOT = Path(__file__).resolve().parent.parent

_ENTRY = '''"""Entry point of this app repo, written by `assistant push-app`: serves {model_repo}.

Set MODEL_REPO in the app's settings to serve another model; the app itself is assistant_app.py.
"""
import os
import runpy
from pathlib import Path

os.environ.setdefault("MODEL_REPO", {model_repo!r})
_app = runpy.run_path(str(Path(__file__).with_name("assistant_app.py")),
                      run_name="__main__" if __name__ == "__main__" else "assistant_app")
demo = _app.get("demo")
'''


def _front_matter(title: str) -> str:
    meta = {"title": title[:60], "emoji": "💬", "colorFrom": "indigo", "colorTo": "blue", "sdk": "gradio"}
    try:
        meta["sdk_version"] = importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        pass
    meta.update({"app_file": "app.py", "pinned": False})
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def app_source(model_repo: str) -> str:
    """``model_repo`` as the app clones it at start-up wherever it runs: a bare repository of this machine as its
    absolute file:// URL (a relative path meant another folder where the app ran); refused where the app cannot
    clone it (a folder of this machine, a file:// repo not there yet)."""
    push_first = "push the model first (assistant push FOLDER --to REMOTE) and give REMOTE"
    if model_repo.startswith("file://"):
        if not is_bare_repo(local_repo(model_repo)):
            raise HubError(f"--model-repo {model_repo}: no repository there; {push_first}")
        return model_repo
    if is_remote_url(model_repo) or model_repo.startswith(HF_PREFIX):
        return model_repo  # a remote: reached from where the app runs, which may not be this machine
    local = Path(model_repo).expanduser()
    if is_bare_repo(local):
        return git_url(model_repo)
    if local.exists():
        hub = f"; if you meant the Hugging Face repo {model_repo}: hf:{model_repo}" if hf_repo_id(model_repo) else ""
        raise HubError(f"--model-repo {model_repo}: a folder on this machine, which the app cannot clone where it runs; "
                       f"{push_first}{hub}")
    if model_repo.endswith(".git"):
        raise HubError(f"--model-repo {model_repo}: no repository there; {push_first}")
    if not hf_repo_id(model_repo):
        raise HubError(f"--model-repo {model_repo}: neither a git URL nor a Hugging Face id (owner/name); {push_first}")
    return model_repo


def write_app_folder(model_repo: str, out_dir: str | Path, *, title: str | None = None,
                     project_root: str | Path | None = None) -> Path:
    """Write the app repo's files into `out_dir` (replaced as a whole); returns it."""
    root = Path(project_root or PROJECT_ROOT)
    missing = [n for n in (*APP_FILES, *APP_PACKAGES, "__init__.py") if not (root / n).exists()]
    if missing:
        raise HubError(f"{root}: missing {', '.join(missing)}: push-app copies the project's app from its root "
                       "folder; run it from a checkout of the project (or pass project_root)")
    refuse_credentials(model_repo)
    model_repo = app_source(model_repo).removeprefix(HF_PREFIX)
    title = title or model_repo.rstrip("/").removesuffix(".git").rsplit("/", 1)[-1]
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(root / "app.py", tmp / "assistant_app.py")
    for name in APP_FILES[1:]:
        shutil.copy2(root / name, tmp / name)
    (tmp / PACKAGE).mkdir()
    shutil.copy2(root / "__init__.py", tmp / PACKAGE / "__init__.py")
    for package in APP_PACKAGES:
        for rel, src in folder_files(root / package).items():
            (tmp / PACKAGE / package / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / PACKAGE / package / rel)
    (tmp / "app.py").write_text(_ENTRY.format(model_repo=model_repo), encoding="utf-8")
    readme = (f"{_front_matter(title)}\n# {title}\n\nA chat app for the model `{model_repo}`, made with "
              "myassistant. It clones the model at start-up (set `MODEL_REPO` to serve another one).\n")
    (tmp / "README.md").write_text(readme, encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def push_app(model_repo: str, to: str, *, title: str | None = None, project_root: str | Path | None = None,
             private: bool = False, message: str | None = None, branch: str = "main",
             cache_dir: str | Path | None = None, token_env: tuple[str, ...] = GIT_TOKEN_ENVS) -> PushResult:
    """Write the app repo for `model_repo` and push it to `to` (a git remote, or hf:owner/name = a Space)."""
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = write_app_folder(model_repo, cache / "app" / slug(to), title=title, project_root=project_root)
    if to.startswith(HF_PREFIX) and not to.startswith(HF_PREFIX + "spaces/"):
        to = HF_PREFIX + "spaces/" + to[len(HF_PREFIX):]
    return push_folder(folder, to, private=private, message=message or f"App for {model_repo}", branch=branch,
                       card=False, cache_dir=cache, token_env=token_env)
