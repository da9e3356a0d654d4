"""app.py: `import app` + iterate `respond`, and a real app server under 20 concurrent gradio_client chats."""
from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUIET_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
APP_ENV_KEYS = ("MODEL_REPO", "MODEL_CACHE", "DEMO_MODEL_DIR", "APP_LAZY_LOAD", "APP_CONCURRENCY")


def lfs_model_repo(tmp: Path, **tiny_kwargs) -> str:
    """A tiny model pushed to a local bare git repo with its weights in git-lfs; returns its file:// URL."""
    from myassistant.hub import push_folder
    from myassistant.model import build_tiny_checkpoint

    folder = build_tiny_checkpoint(tmp / "tiny-assistant", **tiny_kwargs)
    bare = tmp / "remote" / "tiny-assistant.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    push_folder(folder, bare.as_uri(), cache_dir=tmp / "push-cache")
    return bare.as_uri()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(env: dict[str, str], log_file: Path, timeout_s: float = 120) -> Iterator[str]:
    """`python app.py` as a real process on 127.0.0.1; yields its URL once it answers."""
    port = free_port()
    full_env = {**os.environ, **QUIET_ENV, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), **env}
    url = f"http://127.0.0.1:{port}/"
    with open(log_file, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{log_file.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"app.py did not answer within {timeout_s} s:\n{log_file.read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory) -> str:
    return lfs_model_repo(tmp_path_factory.mktemp("app-model"))


@pytest.fixture
def load_app(monkeypatch, tmp_path):
    """Import app.py afresh with the given environment (it reads it at import)."""

    def load(**env: str):
        for key in APP_ENV_KEYS:
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("MODEL_CACHE", str(tmp_path / "models"))
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        sys.modules.pop("app", None)
        return importlib.import_module("app")

    yield load
    sys.modules.pop("app", None)


def greedy_reply(app, message: str, history: list | None = None) -> list[str]:
    return list(app.respond(message, history or [], "You are Tiny.", 0.0, 0.8, 0, 1.0, 24))


def test_respond_streams_the_growing_reply_of_a_cloned_git_lfs_model(load_app, model_repo, tmp_path):
    app = load_app(MODEL_REPO=model_repo)
    assert app.demo.title == "tiny-assistant chat" and model_repo in app.demo.description
    assert (tmp_path / "models").is_dir() and app._engine is not None
    replies = greedy_reply(app, "Who are you?")
    assert len(replies) > 1 and all(b.startswith(a) for a, b in zip(replies, replies[1:]))
    messages = [{"role": "system", "content": "You are Tiny."}, {"role": "user", "content": "Who are you?"}]
    assert replies[-1] == app._engine.generate(messages, temperature=0, max_new_tokens=24)
    # Gradio 6 hands history over as content parts
    history = [{"role": "user", "content": [{"type": "text", "text": "Who are you?"}]},
               {"role": "assistant", "content": [{"type": "text", "text": replies[-1]}]}]
    follow_up = greedy_reply(app, "And then?", history)[-1]
    assert follow_up == app._engine.generate(
        messages + [{"role": "assistant", "content": replies[-1]}, {"role": "user", "content": "And then?"}],
        temperature=0, max_new_tokens=24)


def test_an_unloadable_model_gives_a_page_with_the_error(load_app, tmp_path):
    app = load_app(MODEL_REPO="https://someone:SECRET-TOKEN@127.0.0.1:9/nobody/missing.git")
    assert "could not be loaded" in app.demo.description and "SECRET" not in app.demo.description
    (reply,) = greedy_reply(app, "hello?")
    assert reply.startswith("⚠️ The model could not be loaded") and "SECRET" not in reply
    app = load_app(MODEL_REPO=str(tmp_path / "no-such-model"))
    assert "could not be loaded" in app.demo.description


def test_demo_model_is_built_and_loaded_lazily_when_nothing_is_configured(load_app, tmp_path):
    app = load_app(DEMO_MODEL_DIR=str(tmp_path / "demo"), APP_LAZY_LOAD="1")
    assert app._engine is None and "demo model" in app.demo.description
    assert greedy_reply(app, "hi")[-1] and (tmp_path / "demo" / "config.json").is_file()
    assert app._engine is not None


def test_running_app_completes_20_concurrent_chats(model_repo, tmp_path):
    from gradio_client import Client

    from myassistant.chat import ChatEngine
    from myassistant.hub import fetch_model

    questions = [f"{i} + {i} = ? 你好 {i}" for i in range(20)]
    engine = ChatEngine.from_pretrained(fetch_model(model_repo, tmp_path / "check"))
    expected = [engine.generate([{"role": "user", "content": q}], system_prompt="You are Tiny.", temperature=0,
                                max_new_tokens=16) for q in questions]
    env = {"MODEL_REPO": model_repo, "MODEL_CACHE": str(tmp_path / "models"), "APP_CONCURRENCY": "4"}

    def chat(question: str) -> str:  # one client = one user session (a session keeps its chat history)
        return Client(url, verbose=False).predict(question, "You are Tiny.", 0.0, 0.8, 0, 1.0, 16, api_name="/chat")

    with running_app(env, tmp_path / "app.log") as url:
        with ThreadPoolExecutor(20) as pool:
            replies = list(pool.map(chat, questions, timeout=180))
    assert replies == expected
