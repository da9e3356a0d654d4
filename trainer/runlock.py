"""One training per run folder: a lock file the training process itself takes, holding its pid.

A second training of the same folder (another terminal, the studio, a resumed run started twice) stops
before touching anything. A lock left by a process that died (killed, crashed) is taken over: the pid
it names is no longer running. The lock is released when the training returns.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"


def pid_alive(pid: int) -> bool:
    """The process runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc here
        return True


def holder(run_dir: Path) -> int | None:
    """The pid of the live process training in ``run_dir`` on this machine, or None."""
    try:
        info = json.loads((Path(run_dir) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host") != socket.gethostname():
        return None
    return pid if pid_alive(pid) else None


def acquire(run_dir: Path, error: type[Exception]) -> Path:
    """Take the lock of ``run_dir`` (an existing folder) or raise ``error`` naming the holder."""
    path = run_dir / LOCK_NAME
    body = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pid = holder(run_dir)
            if pid is not None and pid != os.getpid():
                raise error(f"train.output_dir: {run_dir} is being written by another training (pid {pid}); "
                            "wait for it, stop it, or choose another train.output_dir") from None
            path.unlink(missing_ok=True)  # left by a process that died (or by this one, after an error)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(body)
        return path
    raise error(f"train.output_dir: cannot take the lock {path}; another training started at the same moment")


def release(path: Path) -> None:
    path.unlink(missing_ok=True)
