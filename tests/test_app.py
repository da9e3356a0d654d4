"""app.py: `import app` (loads nothing), `respond` and the page's parts, a real server under 20 gradio_client chats."""
from __future__ import annotations

import importlib
import json
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

from myassistant.chat import GenerationSettings

ROOT = Path(__file__).resolve().parents[1]
QUIET_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
APP_ENV_KEYS = ("MODEL_REPO", "MODEL_CACHE", "DEMO_MODEL_DIR", "APP_TITLE", "APP_SYSTEM_PROMPT", "APP_CONCURRENCY",
                "ASSISTANT_QUANTIZE", "ASSISTANT_FAST_DECODE", "ASSISTANT_COMPILE", "ASSISTANT_DECODE_ROWS")


def lfs_model_repo(tmp: Path, name: str | None = None, endless: bool = False, generation: dict | None = None,
                   **tiny_kwargs) -> str:
    """A tiny model pushed to a local bare git repo with its weights in git-lfs; returns its file:// URL.

    name: the assistant's name, recorded as `assistant merge` records it (merge.json);
    endless: a model that says only plain words and never ends its reply (see `never_ending`);
    generation: keys set in its generation_config.json."""
    from myassistant.hub import push_folder
    from myassistant.model import build_tiny_checkpoint

    folder = build_tiny_checkpoint(tmp / "tiny-assistant", **tiny_kwargs)
    if endless:
        never_ending(folder)
    if generation:
        config = json.loads((folder / "generation_config.json").read_text())
        (folder / "generation_config.json").write_text(json.dumps({**config, **generation}))
    if name:
        (folder / "merge.json").write_text(json.dumps({"name": name, "base_model": "internlm2-tiny"}))
    bare = tmp / "remote" / "tiny-assistant.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    push_folder(folder, bare.as_uri(), cache_dir=tmp / "push-cache")
    return bare.as_uri()


def never_ending(folder: Path, max_new_tokens: int = 30_000) -> None:
    """Make the random model say only plain words and, decoding greedily (its default now), never end its reply:
    every output row but those of the ASCII-word tokens is zeroed, so a stop token's logit (0) is never the largest.
    Greedy decoding of the random model did reach a stop token (a reply ended after ~1,200 tokens, 5 s, and a busy
    browser clicked Stop after it had gone), and sampling picks zeroed rows."""
    from safetensors.torch import load_file, save_file

    from myassistant.model import load_tokenizer

    tokenizer = load_tokenizer(folder)
    weights = load_file(str(folder / "model.safetensors"))
    words = [i for i, piece in enumerate(tokenizer.convert_ids_to_tokens(range(weights["output.weight"].shape[0])))
             if piece.lstrip("\u2581").isascii() and piece.lstrip("\u2581").isalpha()]
    assert len(words) > 50, f"{folder}: only {len(words)} word tokens"
    keep = weights["output.weight"][words]
    weights["output.weight"].zero_()
    weights["output.weight"][words] = keep
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    generation = json.loads((folder / "generation_config.json").read_text())
    generation.update(do_sample=False, max_new_tokens=max_new_tokens)
    (folder / "generation_config.json").write_text(json.dumps(generation))


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


def test_import_loads_nothing_and_the_first_request_loads_the_cloned_git_lfs_model(load_app, model_repo, tmp_path):
    app = load_app(MODEL_REPO=model_repo)
    assert app.served.engine is None and not (tmp_path / "models").exists()  # no clone, no model at import
    assert "Loading the model" in app.header() and app.title() == "tiny-assistant"
    replies = greedy_reply(app, "Who are you?")
    engine = app.served.engine
    assert engine is not None and (tmp_path / "models").is_dir()
    assert len(replies) > 1 and all(b.startswith(a) for a, b in zip(replies, replies[1:]))
    messages = [{"role": "system", "content": "You are Tiny."}, {"role": "user", "content": "Who are you?"}]
    assert replies[-1] == engine.generate(messages, temperature=0, max_new_tokens=24)
    # Gradio 6 hands history over as content parts
    history = [{"role": "user", "content": [{"type": "text", "text": "Who are you?"}]},
               {"role": "assistant", "content": [{"type": "text", "text": replies[-1]}]}]
    follow_up = greedy_reply(app, "And then?", history)[-1]
    assert follow_up == engine.generate(
        messages + [{"role": "assistant", "content": replies[-1]}, {"role": "user", "content": "And then?"}],
        temperature=0, max_new_tokens=24)
    text = app.header()
    assert "tiny-assistant" in text and model_repo in text and f"context {engine.max_context:,} tokens" in text


def test_settings_left_unset_take_the_models_generation_config(load_app, model_repo, tmp_path):
    app = load_app(MODEL_REPO=model_repo, APP_TITLE="Tiny Tim")
    engine = app.served.get()
    assert app.title() == "Tiny Tim"
    # the tiny checkpoint's generation_config.json sets no sampling: the one set of defaults in the code
    assert engine.defaults == GenerationSettings()
    heading, _, *sliders, longest = app.page_load()
    assert "Tiny Tim" in heading and sliders == [0.8, 0.8, 0, 1.0] and longest.value == 512
    assert longest.maximum == engine.max_context
    engine.defaults = GenerationSettings(temperature=0, max_new_tokens=12)  # as a merged model's would
    assert app.page_load()[2:6] == (0, 0.8, 0, 1.0) and app.page_load()[6].value == 12
    messages = [{"role": "user", "content": "Who are you?"}]
    assert list(app.respond("Who are you?", []))[-1] == engine.generate(messages, temperature=0, max_new_tokens=12)


def test_empty_and_blank_messages_get_no_reply(load_app, model_repo):
    app = load_app(MODEL_REPO=model_repo)
    for message in ("", "   ", "\n\t "):
        assert list(app.respond(message, [])) == []
        assert app.not_empty(message)["is_valid"] is False
    assert app.not_empty(" hi ")["is_valid"] is True
    assert app.served.engine is None  # not even loaded for it


def test_a_message_longer_than_the_context_is_answered_and_said_to_be_cut(load_app, model_repo):
    app = load_app(MODEL_REPO=model_repo)
    engine = app.served.get()
    long_message = " ".join(f"word{i}" for i in range(engine.max_context)) + " THE END"
    with pytest.warns(UserWarning, match="only its last .* tokens were read"):
        replies = list(app.respond(long_message, [], "", 0.0, 0.8, 0, 1.0, 8))
    assert replies


def test_an_unloadable_model_gives_a_page_with_the_error(load_app, tmp_path):
    app = load_app(MODEL_REPO="https://someone:SECRET-TOKEN@127.0.0.1:9/nobody/missing.git")
    (reply,) = greedy_reply(app, "hello?")
    assert reply.startswith("⚠️ **The model could not be loaded**") and "SECRET" not in reply
    text = app.page_load()[0]
    assert "could not be loaded" in text and "SECRET" not in text and "missing" in text
    app = load_app(MODEL_REPO=str(tmp_path / "no-such-model"))
    assert "could not be loaded" in app.page_load()[0]
    app = load_app(ASSISTANT_DECODE_ROWS="eight")  # a bad serving variable is shown the same way
    assert "ASSISTANT_DECODE_ROWS='eight'" in app.page_load()[0]


def test_a_repo_pushed_after_the_app_started_is_served_without_a_restart(load_app, model_repo, tmp_path):
    import shutil
    from urllib.parse import urlparse

    later = tmp_path / "pushed-later.git"
    app = load_app(MODEL_REPO=later.as_uri())
    (reply,) = greedy_reply(app, "hello?")
    assert reply.startswith("⚠️ **The model could not be loaded**")
    assert "tries again" in app.header()
    shutil.copytree(urlparse(model_repo).path, later)  # the push lands
    assert greedy_reply(app, "hello?")[0].startswith("⚠️")  # within RETRY_AFTER_S: the failure is kept
    app.RETRY_AFTER_S = 0
    assert not greedy_reply(app, "hello?")[-1].startswith("⚠️") and app.served.engine is not None


def test_demo_model_is_built_on_the_first_request_when_nothing_is_configured(load_app, tmp_path):
    app = load_app(DEMO_MODEL_DIR=str(tmp_path / "demo"))
    assert app.served.engine is None and not (tmp_path / "demo").exists()
    assert greedy_reply(app, "hi")[-1] and (tmp_path / "demo" / "config.json").is_file()
    assert "demo model" in app.header() and app.title() == "Demo model"


def test_running_app_completes_20_concurrent_chats(model_repo, tmp_path):
    from gradio_client import Client

    from myassistant.chat import ChatEngine
    from myassistant.hub import fetch_model

    questions = [f"{i} + {i} = ? 你好 {i}" for i in range(20)]
    engine = ChatEngine.from_pretrained(fetch_model(model_repo, tmp_path / "check"))
    expected = [engine.generate([{"role": "user", "content": q}], system_prompt="You are Tiny.", temperature=0,
                                max_new_tokens=16) for q in questions]
    # APP_CONCURRENCY unset: the default lets 8 chats in at once, sharing each decode step and their prefills;
    # each must still get, complete, the reply it gets alone
    env = {"MODEL_REPO": model_repo, "MODEL_CACHE": str(tmp_path / "models")}

    def chat(question: str) -> str:  # one client = one user session (a session keeps its chat history)
        return Client(url, verbose=False).predict(question, "You are Tiny.", 0.0, 0.8, 0, 1.0, 16, api_name="/chat")

    with running_app(env, tmp_path / "app.log") as url:
        with ThreadPoolExecutor(20) as pool:
            replies = list(pool.map(chat, questions, timeout=180))
    assert replies == expected


def test_an_api_caller_may_ask_for_as_many_tokens_as_the_context_holds_and_gets_the_models_sampling(tmp_path):
    """The settings an API caller leaves out are the model's generation_config.json's (here greedy, 12 tokens), as a
    page view's are: the same question gets the same reply."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    repo = lfs_model_repo(tmp_path, max_position_embeddings=8192, generation={"do_sample": False, "max_new_tokens": 12})
    with running_app({"MODEL_REPO": repo, "MODEL_CACHE": str(tmp_path / "models")}, tmp_path / "app.log") as url:
        client = Client(url, verbose=False)
        assert client.predict("hi", "", 0.0, 0.8, 0, 1.0, 4100, api_name="/chat")  # more than the page's 4,096
        with pytest.raises(AppError, match="greater than maximum value 8192"):
            client.predict("hi", "", 0.0, 0.8, 0, 1.0, 9000, api_name="/chat")
        # a client's calls continue one conversation (its session keeps the history): a new client a question
        replies = [Client(url, verbose=False).predict("Who are you?", api_name="/chat") for _ in range(3)]
    assert replies[0] and replies.count(replies[0]) == 3, replies


def test_a_bad_or_busy_port_is_one_line(tmp_path):
    env = {**os.environ, **QUIET_ENV, "GRADIO_SERVER_NAME": "127.0.0.1", "MODEL_REPO": str(tmp_path / "none")}
    done = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env={**env, "GRADIO_SERVER_PORT": "abc"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == "app.py: error: GRADIO_SERVER_PORT='abc' is not a port number (1-65535)"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env={**env, "GRADIO_SERVER_PORT": str(port)},
                              capture_output=True, text=True, timeout=180)
    assert done.returncode == 1 and f"port {port} is in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
