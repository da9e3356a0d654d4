"""Trainer callbacks: metrics as JSON lines, a progress bar, and eval prompts answered during training."""
from __future__ import annotations

import json
import logging
import resource
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.integrations import is_deepspeed_zero3_enabled

log = logging.getLogger(__name__)


def append_jsonl(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_jsonl(path: Path, after_step: int) -> None:
    """Drop rows logged after ``after_step`` (a killed run logged them; the resumed run logs them again)."""
    rows = read_jsonl(path)
    keep = [r for r in rows if r.get("step", 0) <= after_step]
    if len(keep) != len(rows):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep), encoding="utf-8")
        tmp.replace(path)


def peak_memory_gib() -> dict[str, float]:
    """Peak memory of this process so far: CPU resident set and, on a GPU, allocated tensors."""
    out = {"cpu_peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}  # KiB on Linux
    if torch.cuda.is_available():
        out["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


class ScheduleOnResume(TrainerCallback):
    """A resumed run's first step at the learning rate its schedule gives now, from the run's config as it is now.
    The Trainer restores the optimizer's learning rate as the checkpoint left it, and the schedule sets it only after
    a step: a run trained on with a higher max_steps took its first step at the old schedule's last rate (0 after a
    linear or cosine decay). It restores the schedule's peak rate and the weight decay from the checkpoint too: a
    train.learning_rate changed for the resume was written to run_config.yaml and never used."""

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        lambdas = getattr(lr_scheduler, "lr_lambdas", None)
        if optimizer is None or not lambdas or state.global_step == 0:
            return
        lr_scheduler.base_lrs = [args.learning_rate] * len(optimizer.param_groups)  # one rate for every group
        for group, rate in zip(optimizer.param_groups, lambdas):
            group["initial_lr"] = args.learning_rate
            group["lr"] = args.learning_rate * rate(lr_scheduler.last_epoch)
            if any(p.ndim >= 2 for p in group["params"]):  # the Trainer's decayed group: weights, not biases / norms
                group["weight_decay"] = args.weight_decay
        # what the logs read (get_last_lr), set as the scheduler's step() sets it
        lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


class MetricsFile(TrainerCallback):
    """Adds tokens_per_s to every log and appends it to metrics.jsonl (before TensorBoard and the bar see it)."""

    def __init__(self, path: Path):
        self.path = path
        self._last: tuple[float, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), state.num_input_tokens_seen)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        if "loss" in logs and self._last is not None and now > self._last[0]:
            logs["tokens_per_s"] = round((tokens - self._last[1]) / (now - self._last[0]), 1)
            self._last = (now, tokens)
            logs.update(peak_memory_gib())
        if state.is_world_process_zero:
            append_jsonl(self.path, {"step": state.global_step, **logs, "time": round(time.time(), 3)})


class StopAtStepEnd(TrainerCallback):
    """Ctrl-C stops a training at the end of the step it lands in, with a checkpoint of that step (the Trainer
    saves it as it saves any, then leaves its loop); ``train`` then raises KeyboardInterrupt (``asked``), so the run
    is left to ``--resume``, not finished. Before, the steps since the last ``save_steps`` checkpoint were lost.

    Python drops an interrupt that lands while a finaliser runs ("Exception ignored in ..."), which a busy training
    often is in, so a raised-where-it-lands Ctrl-C was now and then lost; and a step cut midway keeps nothing.
    A second Ctrl-C interrupts at once. Where SIGINT is ignored (a background job) or handled by the caller, or
    off the main thread, it is left alone. ``restore()`` puts the caller's handler back."""

    def __init__(self):
        self.asked = False
        self.previous = None

    def _ctrl_c(self, signum, frame):
        self.asked = True
        self.restore()
        sys.stderr.write("\nCtrl-C: stopping at the end of this step, with a checkpoint of it (Ctrl-C again stops "
                         "at once, without one)\n")

    def on_train_begin(self, args, state, control, **kwargs):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.previous = signal.signal(signal.SIGINT, self._ctrl_c)

    def on_step_end(self, args, state, control, **kwargs):
        if self.asked:
            control.should_save = control.should_training_stop = True

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


class ProgressBar(TrainerCallback):
    """One tqdm bar over optimizer steps (tqdm gives the ETA) with loss, lr and tokens/s.

    When stderr is not a terminal (CI, a log file) a bar would write a carriage-return frame per step, so
    each logged step becomes one plain line with the same figures instead.
    """

    def __init__(self):
        self.bar = None
        self.lines = not sys.stderr.isatty()
        self.started = 0.0
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.started, self.first_step = time.time(), state.global_step
        if not self.lines:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (logs and "loss" in logs and state.is_world_process_zero):
            return
        figures = dict(loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}",
                       tok_s=f"{logs.get('tokens_per_s', 0):.0f}")
        if self.bar is not None:
            self.bar.set_postfix(**figures)
        elif self.lines:
            done = state.global_step - self.first_step
            eta = (time.time() - self.started) / max(done, 1) * (state.max_steps - state.global_step)
            log.info("step %d/%d | %s | eta %.0f s", state.global_step, state.max_steps,
                     " | ".join(f"{k} {v}" for k, v in figures.items()), eta)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EvalPrompts(TrainerCallback):
    """Answer fixed prompts greedily every ``every`` steps and at the end (XTuner's evaluation_inputs)."""

    def __init__(self, tokenizer, prompts: list[str], every: int, path: Path, *, max_new_tokens: int,
                 chat: bool, stop_ids: list[int]):
        self.tokenizer, self.prompts, self.every, self.path = tokenizer, prompts, every, path
        self.max_new_tokens, self.chat, self.stop_ids = max_new_tokens, chat, stop_ids
        self._done_step = -1

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self.answer(model, state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._done_step != state.global_step:
            self.answer(model, state)

    def _encode(self, prompt: str) -> torch.Tensor:
        if self.chat:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:  # raw-text runs continue the prompt
            ids = self.tokenizer(prompt)["input_ids"]
        return torch.tensor([ids])

    @torch.no_grad()
    def answer(self, model, state) -> list[dict]:
        self._done_step = state.global_step
        if not self.prompts or model is None:
            return []
        was_training = model.training
        model.eval()
        rows = []
        for prompt in self.prompts:
            ids = self._encode(prompt).to(model.device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens,
                                 do_sample=False, use_cache=True, eos_token_id=self.stop_ids,
                                 pad_token_id=self.tokenizer.pad_token_id,
                                 synced_gpus=is_deepspeed_zero3_enabled())  # ZeRO-3 shards need every rank
            # cut at max_new_tokens inside a character (byte tokens): its bytes end as replacement characters
            answer = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).rstrip("\ufffd").strip()
            rows.append({"step": state.global_step, "prompt": prompt, "answer": answer})
            # a random or young model's answer may hold control characters: shown escaped, kept as is in the file
            shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in answer)
            log.info("eval step %d | %s -> %s", state.global_step, prompt, shown)
        if state.is_world_process_zero:
            for row in rows:
                append_jsonl(self.path, row)
        model.train(was_training)
        return rows
