"""Training on a tiny real InternLM2-format checkpoint: the run folder, resume (in-process and a real
SIGKILL of the CLI), and the errors a user meets before any weights load."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import TrainerCallback

from conftest import ROOT, cli, run_cli
from myassistant.trainer.config import ConfigError, load_config
from myassistant.trainer.train import train

PROMPTS = ["你是谁", "Who are you?"]


def write_chats(path: Path, n: int = 40) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"Question {i}: who are you?"},
                          {"role": "assistant", "content": f"I am Tiny, answer {i}, made by the tests."}]}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def overrides(base: Path, data: Path, out: Path, method: str = "lora", **train_kw) -> list[str]:
    settings = {"max_steps": 6, "save_steps": 3, "eval_steps": 3, "eval_max_new_tokens": 4, "logging_steps": 1,
                "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "learning_rate": 1e-2,
                "gradient_checkpointing": False, "report_to": "tensorboard", **train_kw}
    return [f"model.base={base}", f"data.train_file={data}", "data.max_length=64", f"quant.method={method}",
            "lora.r=8", f"data.eval_prompts={json.dumps(PROMPTS, ensure_ascii=False)}", f"train.output_dir={out}",
            *(f"train.{k}={v}" for k, v in settings.items())]


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    return write_chats(tmp_path_factory.mktemp("data") / "chats.jsonl")


@pytest.fixture(scope="module")
def lora_run(tiny_checkpoint, chats, tmp_path_factory) -> Path:
    return train(load_config(None, overrides(tiny_checkpoint, chats, tmp_path_factory.mktemp("runs") / "lora")))


def test_lora_run_folder_describes_itself(lora_run, tiny_checkpoint, chats):
    names = {p.name for p in lora_run.iterdir()}
    assert {"run_config.yaml", "run.json", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "metrics.jsonl", "eval_samples.jsonl", "tensorboard",
            "checkpoint-3", "checkpoint-6"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    info = json.loads((lora_run / "run.json").read_text())
    assert (info["name"], info["adapter"], info["steps"]) == (None, True, 6)  # chats.jsonl is no identity data
    assert info["final_loss"] == pytest.approx(losses(lora_run)[6])
    assert "base_model" not in info and "data_file" not in info  # stored once, in run_config.yaml
    saved = load_config(lora_run / "run_config.yaml")
    assert (saved.model.base, saved.data.train_file, saved.quant.method) == (
        str(tiny_checkpoint.resolve()), str(chats.resolve()), "lora")
    adapter_cfg = json.loads((lora_run / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tiny_checkpoint.resolve())
    assert set(adapter_cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    with safe_open(str(lora_run / "adapter_model.safetensors"), "pt") as f:
        assert len(list(f.keys())) == 2 * 7 * 2  # lora_A + lora_B, 7 projections, 2 layers
    assert list(tuple(sorted(losses(lora_run)))) == [1, 2, 3, 4, 5, 6]
    readme = (lora_run / "README.md").read_text()  # ours, not peft's template card
    assert "[More Information Needed]" not in readme and f"base_model: \"{tiny_checkpoint.resolve()}\"" in readme
    assert "library_name: peft" in readme and f"assistant merge {lora_run} --out" in readme and "6 steps" in readme
    assert f"    assistant chat {lora_run}\n" in readme  # (its base with its adapter)
    assert "assistant report" not in readme  # chats.jsonl is no identity data: the report has no questions to ask
    rows = [json.loads(line) for line in (lora_run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert all(r["tokens_per_s"] > 0 and "learning_rate" in r for r in rows)
    samples = [json.loads(line) for line in (lora_run / "eval_samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["prompt"]) for s in samples] == [(3, p) for p in PROMPTS] + [(6, p) for p in PROMPTS]
    assert any(p.name.startswith("events.out.tfevents") for p in (lora_run / "tensorboard").iterdir())


def test_the_run_readmes_commands_run_as_written_from_a_folder_with_a_space(tiny_checkpoint, chats, tmp_path):
    """The README's "Next:" paths were not quoted, and its resume hint lacked the --config a resume needs."""
    run = tmp_path / "my runs" / "运行 1"
    train(load_config(None, overrides(tiny_checkpoint, chats, run, max_steps=1, save_steps=1, eval_steps=0,
                                      report_to="none")))
    readme = (run / "README.md").read_text()
    commands = [line.strip() for line in readme.split("Next:")[1].splitlines() if line.strip()]

    def shell(line: str) -> subprocess.CompletedProcess:  # as a user pastes it, `assistant` this checkout's
        return subprocess.run(["bash", "-c", f'assistant() {{ "{sys.executable}" -m myassistant.scripts.cli "$@"; }}; '
                               + line], cwd=ROOT, capture_output=True, text=True, timeout=600)

    said = shell(next(c for c in commands if c.startswith("assistant chat ")) + " --prompt hi --max-new-tokens 2")
    assert said.returncode == 0, said.stderr[-2000:]
    merged = shell(next(c for c in commands if c.startswith("assistant merge ")))
    assert merged.returncode == 0 and (tmp_path / "my runs" / "运行 1-merged" / "config.json").is_file(), merged.stderr
    again = shell(re.search(r"`(assistant train --config .* --resume)`", readme)[1] + " train.max_steps=2")
    assert again.returncode == 0 and json.loads((run / "run.json").read_text())["steps"] == 2, again.stderr[-2000:]


def test_resume_after_stop_matches_uninterrupted_run(lora_run, tiny_checkpoint, chats, tmp_path):
    class StopAt3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 3

    cfg = load_config(None, overrides(tiny_checkpoint, chats, tmp_path / "run", report_to="none"))
    train(cfg, callbacks=(StopAt3(),))
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3]
    train(cfg, resume=True)
    expected, got = losses(lora_run), losses(tmp_path / "run")
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    assert json.loads((tmp_path / "run" / "run.json").read_text())["steps"] == 6
    finished = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    train(cfg, resume=True)  # a finished run: nothing left to train (the Trainer alone took one more step)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == finished


def interrupted_copy(run: Path, dest: Path) -> Path:
    """``run`` as a kill after its last checkpoint left it: the final adapter and run.json not written yet."""
    shutil.copytree(run, dest)
    for name in ("run.json", "adapter_model.safetensors", "adapter_config.json"):
        (dest / name).unlink()
    return dest


def test_a_run_stopped_after_its_last_checkpoint_is_finished_without_training(lora_run, tiny_checkpoint, chats,
                                                                              tmp_path):
    """The resume trained a step past max_steps (7 of 6): the Trainer takes a step before it checks max_steps."""
    run = interrupted_copy(lora_run, tmp_path / "run")
    result = cli("train", *overrides(tiny_checkpoint, chats, run), "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "checkpoint-6 ends the schedule (train.max_steps=6): finishing the run without training" in result.stderr
    assert sorted(losses(run)) == [1, 2, 3, 4, 5, 6] and not (run / "checkpoint-7").exists()
    info = json.loads((run / "run.json").read_text())
    assert (info["steps"], info["final_loss"]) == (6, pytest.approx(losses(lora_run)[6]))
    with safe_open(str(run / "adapter_model.safetensors"), "pt") as got, \
            safe_open(str(lora_run / "adapter_model.safetensors"), "pt") as want:
        assert set(got.keys()) == set(want.keys())
        assert all(torch.equal(got.get_tensor(k), want.get_tensor(k)) for k in want.keys())
    samples = [json.loads(line) for line in (run / "eval_samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [3, 3, 6, 6]  # step 6's answers are not asked again
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_resume_passes_over_a_damaged_checkpoint(lora_run, tiny_checkpoint, chats, tmp_path):
    """A newest checkpoint cut short (a disk that filled up) ended the resume in safetensors' traceback."""
    run = interrupted_copy(lora_run, tmp_path / "run")
    damaged = run / "checkpoint-6" / "adapter_model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    result = cli("train", *overrides(tiny_checkpoint, chats, run), "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"checkpoint-6 is damaged: {damaged} cannot be read (" in result.stderr
    assert "resuming from checkpoint-3, removing checkpoint-6" in result.stderr
    got, want = losses(run), losses(lora_run)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), step
    assert json.loads((run / "run.json").read_text())["steps"] == 6
    with safe_open(str(damaged), "pt") as f:  # written again at step 6
        assert len(list(f.keys())) == 2 * 7 * 2

    shutil.rmtree(run / "checkpoint-3")  # no earlier checkpoint to fall back to: one line naming the file
    (run / "run.json").unlink()
    damaged.write_bytes(damaged.read_bytes()[:100])
    result = cli("train", *overrides(tiny_checkpoint, chats, run), "--resume")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"assistant train: error: --resume: {damaged} cannot be read ("), last
    assert "no earlier checkpoint" in last and (run / "checkpoint-6").is_dir()


def test_a_run_resumed_with_more_steps_follows_the_longer_schedule(tiny_checkpoint, chats, tmp_path):
    """Training on from a finished run by raising max_steps: its first step ran at the old schedule's last learning
    rate (0 after a linear decay), then jumped to the new schedule's."""
    def learning_rates(run_dir: Path) -> dict[int, float]:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["learning_rate"] for r in rows if "learning_rate" in r}

    settings = {"eval_steps": 0, "report_to": "none", "lr_scheduler_type": "linear"}
    longer = train(load_config(None, overrides(tiny_checkpoint, chats, tmp_path / "ten", max_steps=10, **settings)))
    run = tmp_path / "six"
    train(load_config(None, overrides(tiny_checkpoint, chats, run, max_steps=6, **settings)))
    train(load_config(None, overrides(tiny_checkpoint, chats, run, max_steps=10, **settings)), resume=True)
    want, got = learning_rates(longer), learning_rates(run)
    for step in (7, 8, 9, 10):
        assert got[step] == pytest.approx(want[step], rel=1e-6), (step, got, want)
    # a learning rate changed for the resume is the one trained with (the checkpoint's schedule kept the old one)
    run = tmp_path / "six-then-lower"
    train(load_config(None, overrides(tiny_checkpoint, chats, run, max_steps=6, **settings)))
    train(load_config(None, overrides(tiny_checkpoint, chats, run, max_steps=10, **{**settings, "learning_rate": 1e-3})),
          resume=True)
    got = learning_rates(run)
    for step in (7, 8, 9, 10):
        assert got[step] == pytest.approx(want[step] / 10, rel=1e-6), (step, got, want)


def test_resume_keeps_what_the_checkpoints_were_trained_as(lora_run, tiny_checkpoint, chats, tmp_path):
    """Another adapter shape or base cannot continue the checkpoints (it failed with a size-mismatch traceback, or
    trained on the other base, after rewriting run_config.yaml, so that merge then used the wrong base); a
    max_steps below the step reached would mark the run finished mid-schedule."""
    saved = (lora_run / "run_config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"--resume: the checkpoints were trained with lora.r=8 \(.*run_config.yaml\), and this run changes it"):
        train(load_config(None, [*overrides(tiny_checkpoint, chats, lora_run), "lora.r=4"]), resume=True)
    other_base = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other_base)
    with pytest.raises(ConfigError, match="--resume: the checkpoints were trained with model.base=.*, and this run changes it"):
        train(load_config(None, overrides(other_base, chats, lora_run)), resume=True)
    with pytest.raises(ConfigError, match="train.max_steps=2 is below the step checkpoint-6 reached"):
        train(load_config(None, overrides(tiny_checkpoint, chats, lora_run, max_steps=2)), resume=True)
    assert (lora_run / "run_config.yaml").read_text() == saved


def _train_until_a_checkpoint(args: list[str], out: Path, stderr: int) -> subprocess.Popen:
    """`assistant train args` in a process of its own, returned once checkpoint-2 in `out` is complete."""
    # Ctrl-C as a terminal leaves it to the command it starts: not ignored, not blocked. A test worker's own state
    # (left by what ran in it before) is not passed on: twice in 2026-12-03's suites a child got the SIGINT and never
    # acted on it, not even the handler's first line
    start = ("import signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); "
             "signal.signal(signal.SIGINT, signal.default_int_handler); "
             "from myassistant.scripts.cli import main; sys.exit(main())")
    proc = subprocess.Popen([sys.executable, "-c", start, "train", *args], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=stderr,
                            text=True)
    deadline = time.monotonic() + 120
    while not _whole_json(out / "checkpoint-2" / "trainer_state.json"):  # there and written to its end: the Trainer
        assert proc.poll() is None, "training ended before its first checkpoint"  # writes it in place, so a kill on a
        assert time.monotonic() < deadline  # busy machine landed between its creation and its bytes (an empty state)
        time.sleep(0.005)
    return proc


def _whole_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def test_killed_cli_run_resumes_to_the_same_losses(tiny_checkpoint, chats, tmp_path):
    out, settings = tmp_path / "killed", {"max_steps": 40, "save_steps": 2, "eval_steps": 0, "report_to": "none"}
    args = overrides(tiny_checkpoint, chats, out, **settings)
    reference = train(load_config(None, overrides(tiny_checkpoint, chats, tmp_path / "reference", **settings)))
    proc = _train_until_a_checkpoint(args, out, subprocess.DEVNULL)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "run.json").exists(), "the run finished before it was killed"

    with pytest.raises(ConfigError, match="already holds a run; add --resume to continue it, --overwrite"):
        train(load_config(None, args))
    resumed = run_cli("train", *args, "--resume", env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    assert "to instantiate a model of type" not in resumed.stderr  # LoRA saves read no InternLM2 config as Llama
    got, expected = losses(out), losses(reference)
    assert sorted(got) == list(range(1, 41))
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step
    assert json.loads((out / "run.json").read_text())["steps"] == 40


def test_overwrite_trains_a_finished_run_again_from_the_start(tiny_checkpoint, chats, tmp_path):
    out = tmp_path / "again"
    first = overrides(tiny_checkpoint, chats, out, max_steps=3, save_steps=2, eval_steps=0, report_to="none")
    train(load_config(None, first))
    (out / "notes.txt").write_text("from the first run")
    again = overrides(tiny_checkpoint, chats, out, max_steps=2, save_steps=1, eval_steps=0, report_to="none")
    both = run_cli("train", *again, "--resume", "--overwrite")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr, both.stderr
    checked = cli("train", *again, "--check")  # --check said OK where training would refuse
    assert checked.returncode == 1 and "already holds a run; add --resume to continue it" in checked.stderr
    assert cli("train", *again, "--check", "--overwrite").returncode == 0
    kept = sorted(p.name for p in out.iterdir())
    for typo in ("data.train_file=" + str(tmp_path / "chat.jsonl"), "model.base=" + str(tmp_path / "nomodel")):
        failed = run_cli("train", *again, typo, "--overwrite")  # a typo in the new run: the old one stays whole
        assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
        assert sorted(p.name for p in out.iterdir()) == kept and json.loads((out / "run.json").read_text())["steps"] == 3
    done = run_cli("train", *again, "--overwrite", env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--overwrite: removing the run in" in done.stderr
    assert sorted(losses(out)) == [1, 2]  # the first run's three steps are gone from the metrics
    assert json.loads((out / "run.json").read_text())["steps"] == 2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert not (out / "notes.txt").exists()

    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    refused = run_cli("train", *overrides(tiny_checkpoint, chats, other, max_steps=1), "--overwrite")
    assert refused.returncode == 1 and "is not empty and holds no run" in refused.stderr, refused.stderr
    assert (other / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_ctrl_c_names_the_checkpoint_resume_continues_from(tiny_checkpoint, chats, tmp_path, stop):
    """SIGTERM (`timeout`, `docker stop`, a platform's shutdown) stops a run as Ctrl-C does; it ended it on the spot."""
    out = tmp_path / "stopped"
    args = overrides(tiny_checkpoint, chats, out, max_steps=400, save_steps=2, eval_steps=0, report_to="none")
    proc = _train_until_a_checkpoint(args, out, subprocess.PIPE)
    proc.send_signal(stop)  # one Ctrl-C: the training stops at the end of the step it lands in
    err = proc.communicate(timeout=300)[1]
    said = "\n".join(line for line in err.splitlines() if " | loss " not in line)  # all but the step lines
    worker = f"this worker: SIGINT {signal.getsignal(signal.SIGINT)}, blocked {signal.pthread_sigmask(signal.SIG_BLOCK, [])}"
    assert proc.returncode == 130 and err.rstrip().endswith("assistant: interrupted"), f"{worker}\n{said[-4000:]}"
    assert "Ctrl-C: stopping at the end of this step, with a checkpoint of it" in err
    assert not (out / "run.json").exists()
    newest = max(out.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1])).parent
    assert f"the newest checkpoint is {newest}; the same command with --resume continues from it" in err
    assert newest.name == f"checkpoint-{max(losses(out))}"  # the step it stopped at: none since a save_steps one lost


def test_full_finetune_writes_standalone_weights(tiny_checkpoint, chats, tmp_path):
    run = train(load_config(None, overrides(tiny_checkpoint, chats, tmp_path / "full", method="full",
                                            max_steps=2, save_steps=2, eval_steps=0, report_to="none")))
    names = {p.name for p in run.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "run.json", "run_config.yaml"} <= names
    assert "adapter_config.json" not in names
    info = json.loads((run / "run.json").read_text())
    assert (info["adapter"], info["trainable_params"]) == (False, info["total_params"])
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(run)
    from myassistant import model

    base = model.load_model(tiny_checkpoint)
    assert not torch.equal(trained.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


def test_bad_data_fails_before_anything_is_written(tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{oops\n')
    result = cli("train", *overrides(tiny_checkpoint, bad, tmp_path / "run"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("assistant train: error: ")
    assert f"{bad}:2" in result.stderr
    assert not (tmp_path / "run").exists()


def test_output_dir_rules(tiny_checkpoint, chats, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty and holds no run"):
        train(load_config(None, overrides(tiny_checkpoint, chats, other)))
    died = tmp_path / "died"  # a start killed while writing its first checkpoint: start again without --resume
    (died / "checkpoint-3").mkdir(parents=True)
    (died / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    train(load_config(None, overrides(tiny_checkpoint, chats, died, max_steps=2, eval_steps=0, report_to="none")))
    assert sorted(losses(died)) == [1, 2] and losses(died)[1] != 9.0
    assert not (died / "checkpoint-3").exists()


def test_resume_without_checkpoint_is_a_clear_error(tiny_checkpoint, chats, tmp_path):
    with pytest.raises(ConfigError, match="no complete checkpoint-N folder"):
        train(load_config(None, overrides(tiny_checkpoint, chats, tmp_path / "none")), resume=True)


def test_a_misspelt_target_module_is_named(tiny_checkpoint, chats, tmp_path):
    """One typo in a list of target modules (peft objects only when none matches) stops the run, naming it."""
    cfg = load_config(None, [*overrides(tiny_checkpoint, chats, tmp_path / "t"), "lora.target_modules=[gate_proj,up_pro]"])
    with pytest.raises(ConfigError, match=r"lora.target_modules: no layer of .* is named up_pro; its linear layers are .*up_proj"):
        train(cfg)
    assert not (tmp_path / "t").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU QLoRA is possible")
def test_qlora_on_cpu_says_what_to_do(tiny_checkpoint, chats, tmp_path):
    missing = tmp_path / "not-read.jsonl"  # said before the data is read (a LLaVA file's pictures are opened first)
    with pytest.raises(ConfigError, match="qlora needs a CUDA GPU with bitsandbytes.*quant.method=lora"):
        train(load_config(None, overrides(tiny_checkpoint, missing, tmp_path / "q", method="qlora")))
    assert not (tmp_path / "q").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU may have fp8 tensor cores")
def test_qlora_fp8_without_an_fp8_gpu_is_a_clear_error_before_anything_is_written(tiny_checkpoint, chats, tmp_path):
    """``train.qlora_fp8`` changes results, so a machine that cannot run it refuses the run (not a bf16 run that the
    saved config would misdescribe), before the run folder or the weights."""
    result = cli("train", *overrides(tiny_checkpoint, chats, tmp_path / "f", method="qlora", qlora_fp8="true"))
    assert result.returncode != 0
    assert "train.qlora_fp8: needs a CUDA GPU; train.qlora_fp8=false trains in bf16" in result.stderr
    assert not (tmp_path / "f").exists()


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_deepspeed_without_deepspeed_is_a_clear_error(tiny_checkpoint, chats, tmp_path):
    cfg = load_config(None, [*overrides(tiny_checkpoint, chats, tmp_path / "ds"), "train.deepspeed=zero3_offload"])
    with pytest.raises(ConfigError, match="train.deepspeed: zero3_offload needs the deepspeed package"):
        train(cfg)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
                    reason="QLoRA needs CUDA and bitsandbytes")
def test_qlora_trains_and_merges_on_gpu(tiny_checkpoint, chats, tmp_path):
    from myassistant.trainer.merge import merge

    run = train(load_config(None, overrides(tiny_checkpoint, chats, tmp_path / "q", method="qlora",
                                            learning_rate=1e-3, gradient_checkpointing=True)))
    assert load_config(run / "run_config.yaml").quant.method == "qlora"
    assert all(v == v for v in losses(run).values())  # no NaN
    merged = merge(run, tmp_path / "merged", dtype="float32")
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(merged)
    assert all(torch.isfinite(p).all() for p in m.parameters())
