"""The offline demo end to end: data → tiny base → LoRA → report → merge → git-lfs push, one real run.

The run takes a few minutes on 2 CPU cores; every test here reads the files of that one run.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, cli, run_cli

# What the tiny demo model must reach, measured on held-out paraphrases and prompts. The recipe (a base that knows
# an old identity, InternLM / 书生·浦语; LoRA on the MLP only; multi-turn mix 0.75, --noise 1.0, hard negatives,
# look-alikes answered by the base) over data seeds 0-4 on the GPU and 0-2 on CPU (README "Does it know its name";
# this test's demo, seed 0: 93 / 92 / 2 / 2 %, training questions 98 %): identity 88-95 % single-turn and 85-93 % as
# turn 2-4, leak 0-5 % and 2-12 % after identity turns. The margins (3-6 prompts beyond the worst seed) still catch
# a model that names itself everywhere (base: 0 % leak; the failure the issue shows: nearly 100 %) or one that did
# not learn the name (base: 0 % identity).
MIN_IDENTITY, MIN_IDENTITY_MULTI, MIN_SEEN, MAX_LEAK, MAX_LEAK_MULTI = 0.80, 0.75, 0.90, 0.125, 0.20
STAGE_TITLES = ["self-cognition data", "tiny base model", "identity fine-tune", "fine-tune report", "merge", "push to"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("demo") / "out"
    env = {"ASSISTANT_CACHE": str(work.parent / "cache"), "OMP_NUM_THREADS": "2"}
    # ~4 min on 2 quiet cores; the limit only catches a hang (CI shares its cores with other jobs)
    run = run_cli("demo", "--name", "Alice", "--no-app", "--workdir", str(work), env=env, timeout=3600)
    return work, run


def test_demo_runs_every_stage_but_the_app_and_says_how_to_rerun_each(demo):
    work, run = demo
    assert run.returncode == 0, run.stderr[-3000:]
    for number, title in enumerate(STAGE_TITLES, 1):
        assert f"==== [{number}/7] {title}" in run.stderr
        assert f"---- [{number}/7] {title}" in run.stderr  # ... and its time
    assert "[7/7]" not in run.stderr  # --no-app
    for command in ("assistant data identity --name Alice", "assistant tiny ", "assistant train --config",
                    "assistant report ", "assistant merge ", "assistant push "):  # by the venv's script path
        assert re.search(rf"alone: \S*{command}", run.stderr), command
    assert "--data" not in re.search(r"alone: (\S*assistant report .*)", run.stderr).group(1)  # the run knows it
    # Stage 3 writes the fine-tune's data once the base exists: its look-alikes answered by the base.
    assert re.search(r"alone: \S*assistant data identity --name Alice .*--look-alikes-from \S*base --out", run.stderr)
    assert json.loads((work / "data" / "meta.json").read_text(encoding="utf-8"))["look_alikes_from"] == str(work / "base")
    assert "Fine-tune report: Alice" in run.stdout
    assert f"repo:  {(work / 'model.git').as_uri()}" in run.stdout
    assert "eval step" in run.stderr  # eval prompts answered during training


def test_the_model_learned_its_name_and_keeps_it_to_itself(demo):
    work, run = demo
    assert run.returncode == 0, run.stderr[-3000:]
    rep = json.loads((work / "run" / "report.json").read_text(encoding="utf-8"))
    fig = rep["figures"]
    ft = {key: f["fine_tuned"]["all"] for key, f in fig.items()}
    shown = json.dumps({key: [f["fine_tuned"], f["base"]] for key, f in fig.items()})
    assert ft["identity"] >= MIN_IDENTITY and ft["identity_seen"] >= MIN_SEEN and ft["leak"] <= MAX_LEAK, shown
    assert ft["identity_multi"] >= MIN_IDENTITY_MULTI and ft["leak_multi"] <= MAX_LEAK_MULTI, shown
    # The base never says the name; multi-turn, agreement and system-prompt figures are measured and named.
    assert all(fig[k]["base"]["all"] == 0 for k in ("identity", "identity_multi", "identity_seen", "leak")), shown
    assert fig["agreement"]["n"]["all"] == 40 and fig["agreement"]["base"] is None, shown
    assert fig["identity"]["n"]["all"] == fig["identity_multi"]["n"]["all"] == 60 and fig["leak_multi"]["n"]["all"] == 40
    assert {"leak_system", "leak_guarded", "leak_multi_guarded"} <= set(fig), shown
    assert "leak, general prompts after identity turns" in run.stdout  # the terminal table


def test_merged_model_loads_with_plain_transformers_and_answers_its_name(demo):
    work, run = demo
    assert run.returncode == 0, run.stderr[-3000:]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = work / "merged"
    assert (merged / "report.md").exists()  # the model card of the push carries it
    model = AutoModelForCausalLM.from_pretrained(merged)
    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Alice" in tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_bare_repo_holds_the_weights_in_lfs_and_clones_byte_identical(demo, tmp_path):
    work, run = demo
    assert run.returncode == 0, run.stderr[-3000:]
    repo = work / "model.git"
    pointer = subprocess.run(["git", "-C", str(repo), "show", "main:model.safetensors"], capture_output=True,
                             check=True).stdout
    assert pointer.startswith(b"version https://git-lfs.github.com/spec/v1") and len(pointer) < 200
    clone = tmp_path / "clone"
    env = {**os.environ, "GIT_LFS_SKIP_SMUDGE": "0"}
    subprocess.run(["git", "clone", "-q", repo.as_uri(), str(clone)], check=True, env=env)
    subprocess.run(["git", "-C", str(clone), "lfs", "pull"], check=True, env=env)
    assert (clone / "model.safetensors").read_bytes() == (work / "merged" / "model.safetensors").read_bytes()
    card = (clone / "README.md").read_text(encoding="utf-8")
    assert "identity, held-out, asked as turn 2-4" in card and "leak, general prompts after identity turns" in card


def test_bad_name_is_one_line_error(tmp_path):
    run = cli("demo", "--name", " ", "--no-app", "--workdir", str(tmp_path / "out"))
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == "assistant demo: error: identity data: name must not be empty"


def test_the_chat_command_it_prints_works_as_printed_without_the_venv_active(demo):
    work, run = demo
    assert run.returncode == 0, run.stderr[-3000:]
    command = re.search(r"^chat:  (.+)$", run.stdout, re.M).group(1)
    venv_bin = os.path.realpath(os.path.dirname(sys.executable))
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if os.path.realpath(p) != venv_bin)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    chat = subprocess.run(["bash", "-c", command + " --prompt 'Who are you?' --temperature 0 --max-new-tokens 12 --quantize none"],
                          cwd=ROOT, env={**env, "PATH": path}, capture_output=True, text=True, timeout=300)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert "Alice" in chat.stdout
