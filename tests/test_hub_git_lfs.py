"""hub push / clone against real git + git-lfs `file://` remotes made in tmp_path, through the CLI."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(subprocess.run(["git", "lfs", "version"], capture_output=True).returncode != 0,
                                reason="git-lfs is not installed")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_TOKEN", "OPENXLAB_TOKEN", "HF_TOKEN")}
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(HOME=str(tmp_path / "home"), ASSISTANT_CACHE=str(tmp_path / "cache"), GIT_CONFIG_NOSYSTEM="1",
               OMP_NUM_THREADS="1", **extra)
    return env


def _assistant(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "myassistant.scripts.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def remote(tmp_path) -> Path:
    path = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    return path


@pytest.fixture
def model(tmp_path) -> Path:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(400_000))
    (folder / "tokenizer.model").write_bytes(os.urandom(30_000))
    (folder / "sub" / "extra.bin").write_bytes(os.urandom(5_000))
    (folder / "config.json").write_text('{"model_type": "internlm2"}\n')
    (folder / "notes.md").write_text("你好，我是小助手。\n", encoding="utf-8")  # small, not LFS, multi-byte
    # a small binary blob outside LFS; with CR LF pairs in it, which text-mode reads once shortened (~1 run in 40 of
    # the suite, where the random bytes held one)
    (folder / "tiny.dat").write_bytes(b"\r\n" + os.urandom(200) + b"\r\n")
    (folder / "run_config.yaml").write_text("model:\n  base: internlm/internlm2-chat-1_8b\nquant:\n  method: lora\n")
    return folder


def test_push_clone_roundtrip_noop_and_one_commit_per_change(tmp_path, remote, model):
    env = _env(tmp_path)
    first = _assistant(["push", str(model), "--to", str(remote), "--message", "first"], env)
    assert first.returncode == 0, first.stderr
    assert _git(remote, "rev-list", "--count", "main").strip() == "1"
    tree = set(_git(remote, "ls-tree", "-r", "--name-only", "main").split())
    assert tree == {".gitattributes", "README.md", "config.json", "model.safetensors", "run_config.yaml",
                    "sub/extra.bin", "tokenizer.model", "notes.md", "tiny.dat"}
    attributes = _git(remote, "show", "main:.gitattributes")
    for pattern in ("*.safetensors", "*.bin", "*.model", "*.gguf", "*.tiktoken"):
        assert f"{pattern} filter=lfs diff=lfs merge=lfs -text" in attributes
    pointer = _git(remote, "show", "main:model.safetensors")
    oid = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    assert pointer.startswith("version https://git-lfs.github.com/spec/v1") and f"oid sha256:{oid}" in pointer
    assert "base_model: internlm/internlm2-chat-1_8b" in _git(remote, "show", "main:README.md")
    # the push's work tree links the weights (no second copy on disk; git-lfs keeps its one object)
    (kept,) = (tmp_path / "cache" / "push").glob("*/model.safetensors")
    assert kept.stat().st_ino == (model / "model.safetensors").stat().st_ino

    again = _assistant(["push", str(model), "--to", remote.as_uri()], env)  # path and file:// URL are one remote
    assert again.returncode == 0 and "already up to date" in again.stdout, again.stderr
    assert _git(remote, "rev-list", "--count", "main").strip() == "1"

    cloned = _assistant(["clone", remote.as_uri()], env)
    assert cloned.returncode == 0, cloned.stderr
    clone = Path(cloned.stdout.strip())
    for name in ("model.safetensors", "tokenizer.model", "sub/extra.bin", "config.json", "notes.md", "tiny.dat"):
        assert (clone / name).read_bytes() == (model / name).read_bytes()

    (model / "model.safetensors").write_bytes(os.urandom(400_000))
    (model / "sub" / "extra.bin").unlink()
    changed = _assistant(["push", str(model), "--to", str(remote)], env)
    assert changed.returncode == 0 and "pushed" in changed.stdout, changed.stderr
    assert _git(remote, "rev-list", "--count", "main").strip() == "2"
    assert "sub/extra.bin" not in _git(remote, "ls-tree", "-r", "--name-only", "main")

    # The cached clone is reused: fetched, fast-forwarded, LFS content pulled and verified.
    updated = _assistant(["clone", str(remote)], env)
    assert updated.returncode == 0, updated.stderr
    assert Path(updated.stdout.strip()) == clone
    assert (clone / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    assert not (clone / "sub" / "extra.bin").exists()

    remote.rename(tmp_path / "gone.git")  # the remote cannot be reached: the verified cached clone still serves
    offline = _assistant(["clone", str(remote.as_uri())], env)
    assert offline.returncode == 0 and Path(offline.stdout.strip()) == clone, offline.stderr
    assert "using the cached clone" in offline.stderr


def test_push_adds_a_gguf_in_lfs_that_can_be_pulled_alone(tmp_path, remote, model):
    gguf = tmp_path / "export" / "model-q4_k_m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + os.urandom(300_000))
    (gguf.parent / "model-q4_k_m.Modelfile").write_text("FROM ./model-q4_k_m.gguf\n")
    env = _env(tmp_path)
    done = _assistant(["push", str(model), "--to", str(remote), "--add", str(gguf),
                       "--add", str(gguf.with_suffix(".Modelfile"))], env)
    assert done.returncode == 0, done.stderr
    assert _git(remote, "show", "main:model-q4_k_m.gguf").startswith("version https://git-lfs.github.com/spec/v1")
    assert _git(remote, "show", "main:model-q4_k_m.Modelfile") == "FROM ./model-q4_k_m.gguf\n"
    # A laptop takes just the GGUF: clone without LFS content, then pull that one file.
    laptop = tmp_path / "laptop"
    subprocess.run(["git", "clone", "-q", remote.as_uri(), str(laptop)], env={**env, "GIT_LFS_SKIP_SMUDGE": "1"},
                   check=True)
    subprocess.run(["git", "lfs", "install", "--local"], cwd=laptop, env=env, check=True, capture_output=True)
    subprocess.run(["git", "lfs", "pull", "--include", "model-q4_k_m.gguf"], cwd=laptop, env=env, check=True)
    assert (laptop / "model-q4_k_m.gguf").read_bytes() == gguf.read_bytes()
    assert (laptop / "model.safetensors").read_bytes().startswith(b"version https://git-lfs")
    missing = _assistant(["push", str(model), "--to", str(remote), "--add", str(tmp_path / "nope.gguf")], env)
    assert missing.returncode == 1 and "nope.gguf: no such file" in missing.stderr
    (tmp_path / "config.json").write_text("{}")  # a file named as one of the model's: refused, not swapped in
    clash = _assistant(["push", str(model), "--to", str(remote), "--add", str(tmp_path / "config.json")], env)
    assert clash.returncode == 1 and "has a config.json of its own" in clash.stderr, clash.stderr
    again = _assistant(["push", str(model), "--to", str(remote)], env)  # the folder alone: the GGUF goes, said so
    assert again.returncode == 0, again.stderr
    assert "removing from" in again.stderr and "model-q4_k_m.gguf" in again.stderr and "--add" in again.stderr


def test_missing_lfs_objects_are_reported_as_pointer_files(tmp_path, remote, model):
    env = _env(tmp_path)
    assert _assistant(["push", str(model), "--to", str(remote)], env).returncode == 0
    oid = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    stored = remote / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    kept = stored.read_bytes()
    stored.unlink()  # the server lost the weights
    broken = _assistant(["clone", str(remote)], env)
    assert broken.returncode == 1
    assert "model.safetensors" in broken.stderr and "assistant push" in broken.stderr
    assert broken.stderr.count("\n") == 1
    stored.write_bytes(kept)  # the server has it again: the interrupted clone resumes where it stopped
    resumed = _assistant(["clone", str(remote)], env)
    assert resumed.returncode == 0, resumed.stderr
    weights = Path(resumed.stdout.strip()) / "model.safetensors"
    assert weights.read_bytes() == (model / "model.safetensors").read_bytes()
    assert not list((tmp_path / "cache" / "models").glob("*.partial"))

    # A clone made by hand without LFS content: fetch_model on it (a local folder) refuses it too.
    by_hand = tmp_path / "by-hand"
    subprocess.run(["git", "clone", "-q", remote.as_uri(), str(by_hand)], check=True,
                   env={**env, "GIT_LFS_SKIP_SMUDGE": "1"})
    local = _assistant(["clone", str(by_hand)], env)
    assert local.returncode == 1
    assert "git-lfs pointer files, not the weights" in local.stderr and "lfs pull" in local.stderr
    # ... and pushing such a folder is refused before anything is written.
    pushed = _assistant(["push", str(by_hand), "--to", str(tmp_path / "other.git")], env)
    assert pushed.returncode == 1 and "pointer files" in pushed.stderr


def test_corrupt_download_is_detected(tmp_path, remote, model):
    env = _env(tmp_path)
    assert _assistant(["push", str(model), "--to", str(remote)], env).returncode == 0
    cloned = _assistant(["clone", str(remote)], env)
    assert cloned.returncode == 0, cloned.stderr
    clone = Path(cloned.stdout.strip())
    data = bytearray((clone / "tokenizer.model").read_bytes())
    data[0] ^= 0xFF
    (clone / "tokenizer.model").write_bytes(bytes(data))  # same size, different bytes
    again = _assistant(["clone", str(remote)], env)
    assert again.returncode == 1
    assert "tokenizer.model" in again.stderr and "sha256" in again.stderr


def test_large_file_outside_lfs_is_refused(tmp_path, remote, model):
    (model / "optimizer.npy").write_bytes(b"\0" * (11 * 1024 * 1024))
    result = _assistant(["push", str(model), "--to", str(remote)], _env(tmp_path))
    assert result.returncode == 1
    assert "optimizer.npy" in result.stderr and "not tracked by git-lfs" in result.stderr
    assert _git(remote, "for-each-ref").strip() == ""  # nothing reached the remote

    (model / ".gitattributes").write_text("*.npy filter=lfs diff=lfs merge=lfs -text\n")
    allowed = _assistant(["push", str(model), "--to", str(remote)], _env(tmp_path))
    assert allowed.returncode == 0, allowed.stderr
    assert "*.npy filter=lfs" in _git(remote, "show", "main:.gitattributes")


def test_clear_errors_for_missing_repo_and_missing_git_lfs(tmp_path, model):
    env = _env(tmp_path)
    missing = _assistant(["push", str(model), "--to", str(tmp_path / "nowhere.git")], env)
    assert missing.returncode == 1
    assert "not found" in missing.stderr and "git init --bare" in missing.stderr
    assert not (tmp_path / "cache" / "push").exists()  # nothing committed, so no work dir is left behind
    # a working copy: a push to one without commits said "pushed" and left its files shown as deleted
    subprocess.run(["git", "init", "-q", str(tmp_path / "new")], check=True)
    assert "a working copy (git init without --bare)" in cli("push", str(model), "--to", str(tmp_path / "new")).stderr
    checkout = tmp_path / "checkout"  # one with its branch checked out
    subprocess.run(["git", "init", "-q", "-b", "main", str(checkout)], check=True)
    subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "--allow-empty", "-m", "x"],
                   cwd=checkout, check=True)
    busy = _assistant(["push", str(model), "--to", str(checkout)], env)
    assert busy.returncode == 1 and "a working copy (git init without --bare)" in busy.stderr, busy.stderr

    bin_dir = tmp_path / "bin"  # a PATH with git but without git-lfs
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(subprocess.run(["which", "git"], capture_output=True, text=True).stdout.strip())
    no_lfs = _assistant(["clone", (tmp_path / "nowhere.git").as_uri()], {**env, "PATH": str(bin_dir)})
    assert no_lfs.returncode == 1
    assert "git-lfs is not installed" in no_lfs.stderr and "apt-get install git-lfs" in no_lfs.stderr


def test_failed_push_keeps_the_commit_and_resumes(tmp_path, remote, model):
    env = _env(tmp_path)
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'refusing for the test' >&2\nexit 1\n")
    hook.chmod(0o755)
    failed = _assistant(["push", str(model), "--to", str(remote)], env)
    assert failed.returncode == 1
    assert "run the same command again to resume" in failed.stderr
    work_dir = next((tmp_path / "cache" / "push").iterdir())
    assert _git(work_dir, "status", "--porcelain") == ""  # consistent: everything committed
    hook.unlink()
    resumed = _assistant(["push", str(model), "--to", str(remote)], env)
    assert resumed.returncode == 0 and "pushed" in resumed.stdout, resumed.stderr
    assert _git(remote, "rev-list", "--count", "main").strip() == "1"


def test_clone_into_a_relative_cache_dir(tmp_path, remote, model):
    env = _env(tmp_path)
    assert _assistant(["push", str(model), "--to", str(remote)], env).returncode == 0
    work = tmp_path / "work"
    work.mkdir()
    cloned = subprocess.run([sys.executable, "-m", "myassistant.scripts.cli", "clone", remote.as_uri(), "--cache-dir",
                             "models"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert cloned.returncode == 0, cloned.stderr
    clone = Path(cloned.stdout.strip())
    assert clone.parent == work / "models"
    assert (clone / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    (work / "other" / clone.name).mkdir(parents=True)  # a folder of the user's where the clone goes: a traceback
    (work / "other" / clone.name / "notes.txt").write_text("mine")
    blocked = _assistant(["clone", remote.as_uri(), "--cache-dir", str(work / "other")], env)
    assert blocked.returncode == 1 and "is in the way of the clone and is not one (no .git)" in blocked.stderr
    assert "Traceback" not in blocked.stderr and (work / "other" / clone.name / "notes.txt").read_text() == "mine"


def test_a_run_pushes_its_final_model_and_a_checkpoint_is_not_pushed(tmp_path, remote, model):
    """A run folder's checkpoints (optimizer state and all) were pushed; then such a folder was refused, although
    `push` says it takes an adapter. A run pushes its final adapter (or weights); a checkpoint-N itself is refused."""
    checkpoint = model / "checkpoint-190"
    checkpoint.mkdir()
    (checkpoint / "optimizer.pt").write_bytes(b"state")
    (checkpoint / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    done = cli("push", str(checkpoint), "--to", str(remote))
    assert done.returncode == 1 and done.stderr.strip().endswith(
        f"{checkpoint}: holds training state (optimizer.pt), not a model to push; merge it first "
        f"(assistant merge {checkpoint} --out DIR) and push DIR"), done.stderr
    assert _git(remote, "for-each-ref") == ""  # nothing pushed
    (model / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')  # a LoRA run: its final adapter
    done = cli("push", str(model), "--to", str(remote))
    assert done.returncode == 0 and "pushing the run's final adapter, not its checkpoint-190" in done.stderr, \
        done.stderr
    assert "checkpoint-190" not in _git(remote, "ls-tree", "-r", "--name-only", "main")


def test_owner_slash_name_without_hf_says_which_it_may_mean(model):
    done = cli("push", str(model), "--to", "me/alice")  # no such folder under the working directory
    assert done.returncode == 1 and done.stderr.strip().endswith(
        "me/alice: no such local repository; a Hugging Face repo is hf:me/alice, a new local one needs "
        "`git init --bare me/alice` first")
    bad = cli("push", str(model), "--to", "x.git", "--branch", "my branch")  # git init's error, a .init folder left
    assert bad.returncode == 1 and "--branch 'my branch': not a branch name" in bad.stderr, bad.stderr
    done = cli("push", str(model), "--to", "remotes/alice.git")  # a folder's name: no Hugging Face repo is meant
    assert done.stderr.strip().endswith("remotes/alice.git: no such local repository; a new local one needs "
                                        "`git init --bare remotes/alice.git` first"), done.stderr


def test_a_folder_that_holds_no_model_is_not_published_as_one(tmp_path, remote):
    """A mistyped folder (merged/ itself, a data folder) was pushed with a "chat model" card and a usage snippet."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"text": "hi"}\n')
    done = cli("push", str(data), "--to", str(remote))
    assert done.returncode == 1 and done.stderr.strip().endswith(
        f"{data}: holds no model (no config.json, adapter_config.json or .gguf); push a merged model (assistant merge "
        "RUN --out DIR), an adapter or an export folder, or pass --no-card to push its files as they are"), done.stderr
    assert cli("push", str(data), "--to", str(remote), "--no-card").returncode == 0
    merged = tmp_path / "merged"  # the parent of the model folders: it was pushed, a card titled by the repo over them
    (merged / "alice").mkdir(parents=True)
    (merged / "alice" / "config.json").write_text('{"model_type": "llama"}')
    done = cli("push", str(merged), "--to", str(remote))
    assert done.returncode == 1 and f"{merged}: holds no model" in done.stderr, done.stderr


def test_a_folder_of_links_pushes_the_files_they_point_to(tmp_path, remote, model):
    """A Hugging Face cache snapshot is links into its blobs: git stored the links, no weights went to LFS, and the
    push and the clone both said all was well."""
    snapshot = tmp_path / "hub" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    for path in model.iterdir():
        if path.is_file():
            (snapshot / path.name).symlink_to(os.path.relpath(path, snapshot))
    env = _env(tmp_path)
    done = _assistant(["push", str(snapshot), "--to", str(remote)], env)
    assert done.returncode == 0, done.stderr
    modes = {line.split()[3]: line.split()[0] for line in _git(remote, "ls-tree", "main").splitlines()}
    assert modes["model.safetensors"] == modes["config.json"] == "100644", modes  # files, not links (120000)
    cloned = _assistant(["clone", str(remote), "--cache-dir", str(tmp_path / "clones")], env)
    assert cloned.returncode == 0, cloned.stderr
    folder = Path(cloned.stdout.strip())
    assert (folder / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()


def test_a_pushed_adapter_names_its_base_without_this_machines_path(tmp_path, remote, model):
    """peft writes where the base was (/home/<user>/...): published, the folder's name; the folder keeps its file."""
    config = '{"base_model_name_or_path": "/home/alice/models/internlm2-chat-1_8b", "peft_type": "LORA", "r": 8}'
    (model / "adapter_config.json").write_text(config)
    done = cli("push", str(model), "--to", str(remote))
    assert done.returncode == 0, done.stderr
    published = _git(remote, "show", "main:adapter_config.json")
    assert '"base_model_name_or_path": "internlm2-chat-1_8b"' in published and "/home/alice" not in published
    assert "/home/alice" not in _git(remote, "show", "main:README.md")
    assert (model / "adapter_config.json").read_text() == config


def test_a_plain_git_clone_of_a_bare_repo_pushed_to_checks_out_the_model(tmp_path, model):
    """`git init --bare` names master as HEAD; the push goes to main: `git clone` made an empty folder."""
    bare = tmp_path / "made-with-master.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "master", str(bare)], check=True)
    assert cli("push", str(model), "--to", str(bare)).returncode == 0
    cloned = subprocess.run(["git", "clone", "-q", str(bare), str(tmp_path / "plain")], capture_output=True, text=True,
                            env={**os.environ, "GIT_LFS_SKIP_SMUDGE": "1"})
    assert cloned.returncode == 0 and "nonexistent ref" not in cloned.stderr, cloned.stderr
    assert (tmp_path / "plain" / "config.json").read_text() == (model / "config.json").read_text()


def test_a_remote_made_again_starts_a_history_of_its_own(tmp_path, remote, model):
    """A remote deleted and made again got the earlier pushes' commits back (their files, and LFS pointers it has no
    objects for)."""
    env = _env(tmp_path)
    assert _assistant(["push", str(model), "--to", str(remote)], env).returncode == 0
    subprocess.run(["rm", "-rf", str(remote)], check=True)
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    (model / "notes.md").write_text("changed\n")
    again = _assistant(["push", str(model), "--to", str(remote)], env)
    assert again.returncode == 0, again.stderr
    assert _git(remote, "rev-list", "--count", "main").strip() == "1"


def test_a_push_beside_the_remotes_default_branch_says_what_a_clone_gets(tmp_path, model):
    """A remote made with master as its default and a first commit there: push wrote main and said nothing, and
    clone and the app got the README of master."""
    bare = tmp_path / "made-with-master.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "master", str(bare)], check=True)
    seed = tmp_path / "seed"
    subprocess.run(["git", "clone", "-q", str(bare), str(seed)], check=True, capture_output=True)
    (seed / "README.md").write_text("hello\n")
    for args in (["add", "README.md"], ["-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "-m", "x"],
                 ["push", "-q", "origin", "HEAD:master"]):
        subprocess.run(["git", *args], cwd=seed, check=True)
    done = cli("push", str(model), "--to", str(bare))
    assert done.returncode == 0 and "default branch is master, not main: a clone (assistant clone, the app) gets " \
        "master's files; make main the default on the server, or push with --branch master" in done.stderr, done.stderr
