"""Shared fixtures: tiny real checkpoints built once per session, never anything from a hub."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny InternLM2-format model folder (random weights, real sentencepiece tokenizer)."""
    from myassistant.model import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "internlm2-tiny")


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 600, input: str | None = None):
    """Run ``assistant <args>`` as a real subprocess of this interpreter; returns CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "myassistant.scripts.cli", *args], cwd=cwd, env=full_env, text=True,
                          capture_output=True, timeout=timeout, input=input)


def run_card_usage(card: str, folder: Path, picture: Path | None = None) -> str:
    """Run the Python of a model card's "## Use" block as a user pastes it (PATH: ``folder``; picture.jpg:
    ``picture``), in a process of its own, offline, with a few tokens; asserts the prompt starts with one <s>.
    Returns what it printed."""
    import subprocess

    code = card.split("## Use")[1].split("```python\n")[1].split("```")[0]
    code = code.replace('"PATH"', repr(str(folder))).replace("max_new_tokens=64", "max_new_tokens=4")
    if picture is not None:
        code = code.replace('"picture.jpg"', repr(str(picture)))
    tokenizer = "processor.tokenizer" if picture is not None else "tok"
    code += f'assert (inputs["input_ids"][0] == {tokenizer}.bos_token_id).sum() == 1, inputs["input_ids"][0, :4]\n'
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def cli(*args: str, cwd: Path = ROOT, env: dict | None = None):
    """``assistant <args>`` in this process: its exit code, stdout and stderr as run_cli returns them, without a new
    interpreter importing torch and transformers for each call (5-10 s on a busy 2-core machine); log lines go to its
    stderr as the command's own logging set-up prints them. For what needs a process of its own (the entry point,
    signals, a stdin, a timeout) use run_cli."""
    import contextlib
    import io
    import subprocess

    from myassistant.scripts import cli as cli_module

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    logs = logging.StreamHandler(err)
    logs.setFormatter(logging.Formatter(cli_module.LOG_FORMAT))
    logs.addFilter(cli_module._short_names)
    root, level = logging.getLogger(), logging.getLogger().level
    try:
        os.environ.update(env or {})
        os.chdir(cwd)
        root.addHandler(logs)
        root.setLevel(logging.INFO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli_module.main(list(args))
            except SystemExit as stop:  # argparse's usage errors
                code = stop.code if isinstance(stop.code, int) else 1
    finally:
        root.removeHandler(logs)
        root.setLevel(level)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["assistant", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def tiny_vision_encoder(tmp_path_factory) -> Path:
    """A tiny random CLIP vision tower folder with its image processor (16 patches a picture)."""
    from myassistant.model import build_tiny_vision_encoder

    return build_tiny_vision_encoder(tmp_path_factory.mktemp("vision") / "clip-tiny")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    """A tiny merged multimodal folder (Llava: tiny CLIP + tiny InternLM2), what plain transformers loads."""
    from myassistant.model import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("llava") / "llava-tiny")


# The longest files first (a few minutes each on 2 cores): with test files spread over workers (scripts/test.sh), a
# long one that starts last keeps its worker busy after the others are done.
LONGEST_FIRST = ("test_demo.py", "test_multimodal_proof.py", "test_studio_browser.py", "test_multimodal_train.py")


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))  # stable: the rest keep their order
