"""What the studio knows about trainings, read from their run folders (never kept in the page).

A run folder is what ``trainer.train`` writes (run_config.yaml, metrics.jsonl, eval_samples.jsonl,
checkpoint-N/, run.json when finished, the ``.lock`` of the process writing it) plus ``studio/``: the
job file and the log of a training the studio started. A browser reload, or a second browser, reads the
same files, so it reconnects to a running training.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from myassistant.studio import jobs
from myassistant.trainer import runlock
from myassistant.trainer.callbacks import read_jsonl
from myassistant.trainer.run_folder import EVAL_SAMPLES_NAME, METRICS_NAME, RUN_CONFIG_NAME, RUN_INFO_NAME
from myassistant.trainer.resume import complete_checkpoints

STUDIO_DIR = "studio"  # inside a run folder (trainer.resume.LOG_NAMES lets a fresh start ignore it)
# ProgressBar's plain-line form: "step 12/40 | loss 3.1000 | lr 1.00e-03 | tok_s 850 | eta 31 s"
_PROGRESS = re.compile(r"step (\d+)/(\d+) \|.*\| eta (\d+) s")
STATUS_ICONS = {"running": "●", "starting": "◐", "finished": "✓", "stopped": "■", "failed": "✗", "empty": "○"}


def job_path(run_dir: Path) -> Path:
    return run_dir / STUDIO_DIR / jobs.JOB_NAME


def log_path(run_dir: Path) -> Path:
    return run_dir / STUDIO_DIR / "train.log"


def list_runs(root: Path) -> list[Path]:
    """Run folders under ``root``, newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and ((p / RUN_CONFIG_NAME).exists() or (p / STUDIO_DIR).is_dir()
                                                         or (p / RUN_INFO_NAME).exists())]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def status(run_dir: Path) -> str:
    """running | starting | finished | stopped | failed | empty."""
    job = jobs.read_job(job_path(run_dir))
    if runlock.holder(run_dir) is not None:
        return "running"
    if jobs.alive(job):
        return "starting"  # the process is up, loading before it takes the lock
    info = run_dir / RUN_INFO_NAME
    if info.exists() and info.stat().st_mtime >= job.get("started", 0):
        return "finished"
    if job.get("stopped"):
        return "stopped"
    if job.get("returncode") not in (None, 0):
        return "failed"
    return "stopped" if complete_checkpoints(run_dir) else ("failed" if job else "empty")


def resumable(run_dir: Path) -> bool:
    return (run_dir / RUN_CONFIG_NAME).exists() and bool(complete_checkpoints(run_dir))


@dataclass
class Progress:
    step: int = 0
    max_steps: int | None = None
    eta_s: int | None = None


def progress(run_dir: Path) -> Progress:
    """The newest step/total/ETA line of the training log."""
    found = Progress()
    for line in tail(log_path(run_dir), 200).splitlines():
        m = _PROGRESS.search(line)
        if m:
            found = Progress(int(m[1]), int(m[2]), int(m[3]))
    return found


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a text file (what fits in 64 KiB of its end)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def metrics(run_dir: Path) -> list[dict]:
    try:
        return [r for r in read_jsonl(run_dir / METRICS_NAME) if "loss" in r]
    except (OSError, ValueError):  # a line being written right now
        return []


def eval_samples(run_dir: Path) -> list[dict]:
    try:
        return read_jsonl(run_dir / EVAL_SAMPLES_NAME)
    except (OSError, ValueError):
        return []


def run_config(run_dir: Path) -> dict:
    try:
        return yaml.safe_load((run_dir / RUN_CONFIG_NAME).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def summary(run_dir: Path) -> dict:
    """One row of the run list."""
    rows, cfg, state = metrics(run_dir), run_config(run_dir), status(run_dir)
    last = rows[-1] if rows else {}
    started = jobs.read_job(job_path(run_dir)).get("started") or run_dir.stat().st_mtime
    return {"run": run_dir.name, "status": f"{STATUS_ICONS.get(state, '')} {state}",
            "step": last.get("step", 0), "loss": round(last["loss"], 4) if "loss" in last else None,
            "method": cfg.get("quant", {}).get("method", ""), "base": Path(cfg.get("model", {}).get("base", "")).name,
            "started": time.strftime("%m-%d %H:%M", time.localtime(started))}


def live_text(run_dir: Path) -> str:
    """The figures line under the loss plot: status, step/total, ETA, tokens/s, memory."""
    state, rows, prog = status(run_dir), metrics(run_dir), progress(run_dir)
    last = rows[-1] if rows else {}
    parts = [f"**{run_dir.name}**: {STATUS_ICONS.get(state, '')} {state}"]
    step = max(prog.step, last.get("step", 0))
    parts.append(f"step {step}/{prog.max_steps}" if prog.max_steps else f"step {step}")
    if "loss" in last:
        parts.append(f"loss {last['loss']:.4f}")
    if last.get("tokens_per_s"):
        parts.append(f"{last['tokens_per_s']:,.0f} tokens/s")
    if state == "running" and prog.eta_s is not None:
        parts.append(f"ETA {prog.eta_s} s")
    if "cpu_peak_gib" in last:
        parts.append(f"CPU peak {last['cpu_peak_gib']:.2f} GiB")
    if "gpu_peak_gib" in last:
        parts.append(f"GPU peak {last['gpu_peak_gib']:.2f} GiB")
    checkpoints = complete_checkpoints(run_dir)
    if checkpoints and state in ("stopped", "failed"):
        parts.append(f"resumable from {checkpoints[-1].name}")
    if state == "failed" and (why := failure(run_dir)):
        parts.append("\n\n⚠ `" + why.replace("`", "'") + "`")  # a code span: paths keep their _ and *
    return " · ".join(parts)


def failure(run_dir: Path) -> str | None:
    """Why the studio's training of ``run_dir`` failed: its log's error line (else its last line)."""
    try:
        with log_path(run_dir).open("rb") as log:
            log.seek(max(0, log.seek(0, 2) - 8192))
            return jobs.job_error(log.read().decode(errors="replace"))
    except OSError:
        return None


def read_report(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
