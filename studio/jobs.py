"""Studio jobs: ``assistant <command>`` run as a subprocess, its log and a small job file on disk.

Every stage that computes (clone, train, report, merge, push) runs the same CLI the tutorial shows, in
its own process group: a crash or a Stop never takes the studio down, and a training outlives a browser
reload (or the studio itself). Secrets reach a job only through its process environment; the job file
and the log hold the command without them.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from myassistant.hub.errors import redact
from myassistant.trainer.runlock import pid_alive

JOB_NAME = "job.json"
# `assistant` with Ctrl-C (SIGINT) at Python's default: a studio started in the background (`studio &` in a script,
# a notebook's `!... &`) ignores SIGINT, which its jobs would inherit: Stop then waited 20 s and killed the training,
# losing the steps since its last checkpoint
CLI = (sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
       "from myassistant.scripts.cli import main; sys.exit(main())")
STOP_GRACE_S = 20  # after SIGINT (KeyboardInterrupt in the job), SIGKILL if it is still running


def job_error(log: str) -> str:
    """The one-line error a failed ``assistant`` job printed (or its last line)."""
    for line in reversed(log.splitlines()):
        m = re.match(r"assistant [\w-]+: error: (.*)", line)
        if m:
            return m[1]
    lines = [ln for ln in log.splitlines() if ln.strip() and not ln.startswith("[exit")]
    return lines[-1] if lines else "the job failed"


def shown(args: list[str]) -> str:
    """The command a user would type for ``args``, without the credentials of a URL in it or a token's value: it is
    written to the job file and the log, and shown on the page."""
    return redact("assistant " + shlex.join(args))


def read_job(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_job(path: Path, job: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(job, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def _update_job(path: Path, **changes) -> None:
    _write_job(path, {**read_job(path), **changes})


def alive(job: dict) -> bool:
    """The job's process is running (and is still ours: pids are reused)."""
    pid = job.get("pid")
    if not isinstance(pid, int) or "returncode" in job or not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc here: trust the pid
    return b"myassistant.scripts.cli" in cmdline


def start(args: list[str], *, cwd: Path, job_file: Path, log_file: Path, secrets: dict[str, str] | None = None,
          ) -> subprocess.Popen:
    """Start ``assistant args...`` in ``cwd``; its output is appended to ``log_file``."""
    job_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(secrets or {})}
    with log_file.open("ab") as log:
        log.write(f"$ {shown(args)}\n".encode())
        log.flush()
        proc = subprocess.Popen([*CLI, *args], cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    _write_job(job_file, {"pid": proc.pid, "command": shown(args), "started": time.time()})

    def wait() -> None:
        code = proc.wait()
        _update_job(job_file, returncode=code, ended=time.time())

    threading.Thread(target=wait, daemon=True, name=f"job-{proc.pid}").start()
    return proc


def stop(job_file: Path) -> bool:
    """Interrupt the job's process group (Ctrl-C), then kill it if it does not end; False if not running."""
    job = read_job(job_file)
    if not alive(job):
        return False
    _update_job(job_file, stopped=True)
    pid = job["pid"]
    try:
        os.killpg(pid, signal.SIGINT)
    except ProcessLookupError:
        return False

    def kill_late() -> None:
        deadline = time.time() + STOP_GRACE_S
        while time.time() < deadline and alive(read_job(job_file)):
            time.sleep(0.5)
        if alive(read_job(job_file)):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    threading.Thread(target=kill_late, daemon=True).start()
    return True


def run_streaming(args: list[str], *, cwd: Path, folder: Path, secrets: dict[str, str] | None = None,
                  progress=None, every_s: float = 0.5) -> Iterator[tuple[bool, str]]:
    """Run a short job and yield ``(running, log tail)`` while it runs, then once more with the end.

    ``progress()`` (optional) adds a line to each yield, e.g. bytes downloaded so far. The final
    tuple's log ends with the exit status; ``folder`` keeps the job file and the log of the last run.
    """
    from myassistant.studio.runs import tail

    log_file, job_file = folder / "job.log", folder / JOB_NAME
    log_file.unlink(missing_ok=True)
    proc = start(args, cwd=cwd, job_file=job_file, log_file=log_file, secrets=secrets)
    while proc.poll() is None:
        extra = progress() if progress else ""
        yield True, tail(log_file, 30) + (f"\n{extra}" if extra else "")
        time.sleep(every_s)
    yield False, tail(log_file, 30) + f"\n[exit {proc.returncode}]"


def last_stdout_line(log: str) -> str:
    """The line a command printed last (its result: a path), before the exit marker."""
    lines = [ln for ln in log.splitlines() if ln.strip() and not ln.startswith("[exit ")]
    return lines[-1].strip() if lines else ""
