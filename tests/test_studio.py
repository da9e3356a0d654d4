"""The studio without a browser: how it may be served, and one training per run folder (trainer.runlock)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli

from myassistant.trainer import runlock
from myassistant.trainer.config import ConfigError
from myassistant.trainer.data.corpus import TextSpec

ROOT = Path(__file__).resolve().parents[1]


def _studio(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if k != "STUDIO_AUTH"} | (env or {})
    return subprocess.run([sys.executable, "-m", "myassistant.scripts.cli", "studio", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags", [["--host", "0.0.0.0"], ["--share"]])
def test_beyond_loopback_without_a_login_is_refused(tmp_path, flags):
    done = _studio("--workdir", str(tmp_path / "ws"), "--port", "1", *flags)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("assistant studio: error:") and "--auth user:password" in done.stderr
    assert "Traceback" not in done.stderr
    bad = _studio("--workdir", str(tmp_path / "ws"), "--host", "0.0.0.0", "--auth", "nopassword")
    assert bad.returncode == 1 and "expected user:password" in bad.stderr


def test_a_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _studio("--workdir", str(tmp_path / "ws"), "--port", str(port))
    assert done.returncode == 1 and f"port {port} on 127.0.0.1 is in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    (tmp_path / "notes.txt").write_text("x")  # no port, a file as the work folder: tracebacks before
    for args, said in ((["--port", "99999"], "argument --port: 99999 is not a port: 1-65535"),
                       (["--workdir", str(tmp_path / "notes.txt")], f"--workdir {tmp_path / 'notes.txt'}: a file")):
        done = cli("studio", *args)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_jobs_file_log_and_command_line_shown_hold_no_url_credentials(tmp_path):
    """A URL typed with its token in it (the Base model tab takes any URL) is run, but the job file, the log and the
    command the page shows hold it without the token."""
    from myassistant.studio import jobs

    args = ["clone", "https://bob:SECRETTOK31@127.0.0.1:9/x.git", "--cache-dir", str(tmp_path / "models")]
    job_file, log_file = tmp_path / "job" / jobs.JOB_NAME, tmp_path / "job" / "job.log"
    jobs.start(args, cwd=tmp_path, job_file=job_file, log_file=log_file).wait(timeout=120)
    shown = jobs.shown(args)
    assert "SECRETTOK31" not in shown and "https://127.0.0.1:9/x.git" in shown
    for written in (job_file, log_file):
        assert "SECRETTOK31" not in written.read_text(), written.name
    assert "https://127.0.0.1:9/x.git" in job_file.read_text()


def test_a_run_folder_has_one_writer(tmp_path):
    run = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.mkdir()
        (run / runlock.LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        assert runlock.holder(run) == sleeper.pid
        with pytest.raises(ConfigError, match=f"another training \\(pid {sleeper.pid}\\)"):
            runlock.acquire(run, ConfigError)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert runlock.holder(run) is None  # its writer died: the lock is stale and taken over
    lock = runlock.acquire(run, ConfigError)
    assert runlock.holder(run) is not None
    runlock.release(lock)
    assert not lock.exists()


def test_a_new_pages_defaults_never_blank_what_was_typed_meanwhile(tmp_path):
    """The page's load answers after the user may have typed (a slow machine): it changes only what it fills."""
    from myassistant.studio.tab_train import fresh_inputs
    from myassistant.studio.ui import Workspace

    ws = Workspace(tmp_path / "ws")
    ws.runs.mkdir(parents=True)
    assert [u.get("value", "unchanged") if isinstance(u, dict) else u
            for u in fresh_inputs(ws, "run-1", "", "")] == ["unchanged"] * 3  # nothing to fill: nothing overwritten
    (ws.runs / "run-1").mkdir()
    assert fresh_inputs(ws, "run-1", "", "")[0] == "run-2"


def test_a_failed_run_says_why_under_its_plot(tmp_path):
    """A run that stops at its first check (here a base model that is not there) showed only "✗ failed · step 0"."""
    from myassistant.studio import jobs, runs

    run = tmp_path / "runs" / "q-1"
    args = ["train", "--config", str(ROOT / "configs" / "tiny_lora_cpu.yaml"), f"model.base={tmp_path / 'nowhere'}",
            f"train.output_dir={run}"]
    jobs.start(args, cwd=tmp_path, job_file=runs.job_path(run), log_file=runs.log_path(run)).wait(timeout=300)
    shown = runs.live_text(run)
    assert "failed" in shown and f"⚠ `{tmp_path / 'nowhere'}: no such model folder`" in shown, \
        shown


def test_start_names_what_this_machine_lacks_before_it_starts(tmp_path, tiny_checkpoint):
    import torch

    from myassistant.studio.tab_train import check
    from myassistant.studio.ui import Workspace

    chats = tmp_path / "chats.jsonl"
    chats.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    problems = check(Workspace(tmp_path / "ws"), "tiny_lora_cpu", "q-1", str(tiny_checkpoint), str(chats),
                     ["quant.method=qlora"])
    ws = Workspace(tmp_path / "ws")  # a name in capitals was refused: "a run name is letters ..."
    assert check(ws, "tiny_lora_cpu", "MyRun", str(tiny_checkpoint), str(chats), []) == {}
    assert "a run name is letters" in check(ws, "tiny_lora_cpu", "my run", str(tiny_checkpoint), str(chats), [])["run"]
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may have what QLoRA needs")
    assert problems == {"method": "qlora needs a CUDA GPU with bitsandbytes, and a CUDA GPU is missing; use "
                                  "quant.method=lora on CPU (same adapter, full-precision base)"}


def test_every_problem_of_the_other_overrides_is_shown_where_it_was_typed(tmp_path, tiny_checkpoint):
    from myassistant.studio.tab_train import check
    from myassistant.studio.ui import Workspace

    chats = tmp_path / "chats.jsonl"
    chats.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    extra = "lora.r=abc\nnonsense\ntrain.foo=1"
    problems = check(Workspace(tmp_path / "ws"), "tiny_lora_cpu", "run-1", str(tiny_checkpoint), str(chats),
                     ["train.learning_rate=fast", *extra.splitlines()], extra)
    assert problems["lr"] == "train.learning_rate: expected a number, got 'fast'"  # the form's field: under it
    assert set(problems) == {"lr", "extra"} and all(f"override '{line}'" in problems["extra"]
                                                    for line in extra.splitlines()), problems


def test_the_train_and_data_tabs_read_raw_text_and_llava_data_as_the_command_does(tmp_path, tiny_checkpoint,
                                                                                  tiny_vision_encoder):
    """The Train tab checked every data file as one chat file, so a corpus folder, a GBK text with data.encoding or a
    LLaVA file never started from the page although the command it shows trained; the Data tab's Check gave other
    answers than `assistant data check`."""
    from myassistant.studio.tab_train import check
    from myassistant.studio.ui import Workspace
    from myassistant.trainer.multimodal import write_shapes_dataset
    from myassistant.trainer.preflight import describe_data

    ws = Workspace(tmp_path / "ws")
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("第一段。\n\n第二段。\n", encoding="utf-8")
    (corpus / "sub" / "gbk.txt").write_bytes("你好。\n".encode("gb18030"))
    args = ["train.max_steps=1", "data.encoding=gb18030"]
    assert check(ws, "internlm2_1_8b_full_pretrain", "pt", str(tiny_checkpoint), str(corpus), args) == {}
    stats, records = describe_data(str(corpus), spec=TextSpec(encoding="gb18030"))
    assert records is None and stats["documents"] == 3
    problems = check(ws, "internlm2_1_8b_full_pretrain", "pt", str(tiny_checkpoint), str(corpus), args[:1])
    assert problems["train_file"].startswith(f"{corpus / 'sub' / 'gbk.txt'}:1: not utf-8 text"), problems  # no "str: "
    assert "data.encoding=gb18030" in problems["train_file"]
    shapes = write_shapes_dataset(tmp_path / "shapes", per_class=1, eval_per_class=1, size=32)
    llava = ["vision.stage=pretrain", f"vision.encoder={tiny_vision_encoder}"]
    assert check(ws, "tiny_llava_pretrain_cpu", "mm", str(tiny_checkpoint), str(shapes / "pretrain.jsonl"), llava) == {}
    (shapes / "pretrain.jsonl").write_text((shapes / "pretrain.jsonl").read_text().replace(".png", ".gone.png", 1))
    problems = check(ws, "tiny_llava_pretrain_cpu", "mm", str(tiny_checkpoint), str(shapes / "pretrain.jsonl"), llava)
    assert ".gone.png not found" in problems["train_file"], problems


def test_the_base_model_tab_says_a_file_is_no_model_folder(tmp_path, tiny_checkpoint):
    """A model's config.json given as the base was called missing: 'no such folder, and not a git URL'."""
    from myassistant.studio.tab_model import source_problem
    from myassistant.studio.ui import Workspace

    ws = Workspace(tmp_path / "ws")
    assert source_problem(ws, str(tiny_checkpoint / "config.json")) == (
        f"{tiny_checkpoint / 'config.json'}: a file; give the model's folder (the one with config.json)")
    assert "no such folder" in source_problem(ws, str(tmp_path / "nope"))
    assert source_problem(ws, "internlm/internlm2-chat-1_8b") is None


def test_generate_with_a_name_used_before_keeps_data_made_with_other_settings(tmp_path):
    """Generate "Alice" again with another ratio replaced data/alice, which earlier runs had trained on (and whose
    held-out sets their reports read); the same settings write the same files again."""
    from myassistant.studio.tab_data import same_settings
    from myassistant.trainer.identity import IdentitySpec, write_identity_dataset

    spec = IdentitySpec(name="Alice", count=4, eval_identity=2, eval_general=2)
    folder = write_identity_dataset(spec, tmp_path / "alice")
    assert same_settings(folder, IdentitySpec(name="Alice", count=4, eval_identity=2, eval_general=2))
    assert not same_settings(folder, IdentitySpec(name="Alice", count=4, eval_identity=2, eval_general=2, ratio=0))
    assert not same_settings(folder, IdentitySpec(name="alice", count=4, eval_identity=2, eval_general=2))
