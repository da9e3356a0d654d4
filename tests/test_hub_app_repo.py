"""push-app: the Gradio app repo (Spaces front matter, the project's app and packages) pushed to a git remote."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from myassistant.hub import push_app

ROOT = Path(__file__).resolve().parents[1]
MODEL_REPO = "https://code.openxlab.org.cn/alice/tiny-assistant.git"
pytestmark = pytest.mark.skipif(subprocess.run(["git", "lfs", "version"], capture_output=True).returncode != 0,
                                reason="git-lfs is not installed")


def _bare(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    return path


def _clone(remote: Path, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", remote.as_uri(), str(dest)], check=True, capture_output=True)
    return dest


def test_push_app_cli_writes_the_app_repo(tmp_path):
    remote = _bare(tmp_path / "app.git")
    env = {**os.environ, "HOME": str(tmp_path), "ASSISTANT_CACHE": str(tmp_path / "cache"), "GIT_CONFIG_NOSYSTEM": "1"}
    result = subprocess.run([sys.executable, "-m", "myassistant.scripts.cli", "push-app", "--model-repo", MODEL_REPO, "--to",
                             str(remote), "--title", "Alice's assistant"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    app = _clone(remote, tmp_path / "clone")
    files = {p.relative_to(app).as_posix() for p in app.rglob("*") if ".git" not in p.relative_to(app).parts}
    assert {"app.py", "assistant_app.py", "requirements.txt", "packages.txt", "README.md", "myassistant/__init__.py",
            "myassistant/chat/__init__.py", "myassistant/hub/__init__.py", "myassistant/model/__init__.py"} <= files
    assert not any("__pycache__" in f for f in files)
    assert (app / "assistant_app.py").read_bytes() == (ROOT / "app.py").read_bytes()
    assert (app / "requirements.txt").read_bytes() == (ROOT / "requirements.txt").read_bytes()
    assert "git-lfs" in (app / "packages.txt").read_text().split()
    meta = yaml.safe_load((app / "README.md").read_text().split("---\n")[1])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["title"] == "Alice's assistant"
    entry = (app / "app.py").read_text()
    assert f'os.environ.setdefault("MODEL_REPO", {MODEL_REPO!r})' in entry
    compile(entry, "app.py", "exec")

    again = subprocess.run([sys.executable, "-m", "myassistant.scripts.cli", "push-app", "--model-repo", MODEL_REPO, "--to",
                            str(remote), "--title", "Alice's assistant"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and "already up to date" in again.stdout, again.stderr


def test_app_entry_point_defaults_model_repo_and_runs_the_app(tmp_path):
    project = tmp_path / "project"  # a stand-in project whose app only reports what it was given
    for package in ("chat", "hub", "model"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text("")
    (project / "__init__.py").write_text("")
    (project / "app.py").write_text("import os\nprint('MODEL_REPO=' + os.environ['MODEL_REPO'], __name__)\n")
    (project / "requirements.txt").write_text("gradio\n")
    (project / "packages.txt").write_text("git-lfs\n")
    remote = _bare(tmp_path / "app.git")
    push_app("hf:alice/tiny-assistant", str(remote), project_root=project, cache_dir=tmp_path / "cache")
    app = _clone(remote, tmp_path / "clone")

    def run(**env: str) -> str:
        full = {k: v for k, v in os.environ.items() if k != "MODEL_REPO"} | env
        return subprocess.run([sys.executable, "app.py"], cwd=app, env=full, capture_output=True, text=True,
                              check=True).stdout.strip()

    assert run() == "MODEL_REPO=alice/tiny-assistant __main__"
    assert run(MODEL_REPO="bob/other") == "MODEL_REPO=bob/other __main__"


def test_push_app_refuses_credentials_in_the_model_repo(tmp_path):
    from myassistant.hub import HubError

    with pytest.raises(HubError, match="carries credentials") as err:
        push_app("https://alice:s3cret-token@example.com/m.git", str(_bare(tmp_path / "a.git")),
                 cache_dir=tmp_path / "cache")
    assert "s3cret-token" not in str(err.value)


def test_push_app_refuses_a_model_repo_the_app_could_not_clone(tmp_path):
    """The app clones MODEL_REPO where it runs (a Space): a folder here, or a repo not pushed yet, is not there."""
    from myassistant.hub import HubError

    merged = tmp_path / "merged"
    merged.mkdir()
    for source, said in ((str(merged), "a folder on this machine"), ("merged", "neither a git URL nor a Hugging Face id"),
                         ((tmp_path / "later.git").as_uri(), "no repository there")):
        with pytest.raises(HubError, match=said) as err:
            push_app(source, str(_bare(tmp_path / f"app-{len(said)}.git")), cache_dir=tmp_path / "cache")
        assert "push the model first (assistant push FOLDER --to REMOTE) and give REMOTE" in str(err.value)
    assert not (tmp_path / "cache" / "app").exists() or not any((tmp_path / "cache" / "app").iterdir())
    with pytest.raises(HubError, match="no repository there"):  # a relative .git path that is not there yet
        push_app("remotes/none.git", str(_bare(tmp_path / "app-none.git")), cache_dir=tmp_path / "cache")


def test_the_app_clones_a_bare_repo_of_this_machine_by_its_absolute_url(tmp_path, monkeypatch):
    """push prints a file:// URL with spaces as %20: push-app refused it; a relative path (or one without .git) of a
    bare repo was refused, or written as it was given, so the app cloned another folder where it ran."""
    model = _bare(tmp_path / "my work" / "alice")  # no .git suffix, a space in the path
    monkeypatch.chdir(tmp_path)
    for given in (model.as_uri(), "my work/alice", str(model)):
        app = push_app(given, str(_bare(tmp_path / f"app{len(given)}.git")), cache_dir=tmp_path / "cache").work_dir
        assert f'os.environ.setdefault("MODEL_REPO", {model.as_uri()!r})' in (app / "app.py").read_text(), given
