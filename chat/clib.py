"""Our small C kernels (``int8_blocks.c``, ``attention_cpu.c``), compiled with the system's C compiler at first use.

A wheel ships their sources, not binaries: each machine builds them once for its own CPU and keeps the
library in ``$XDG_CACHE_HOME/myassistant`` under a name hashed from the source and the flags (an edited
source or other flags build anew). Where the CPU lacks an instruction set a kernel needs, or there is no
compiler, `build` raises RuntimeError saying why and the caller keeps torch's own kernels.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """Where the built libraries are kept."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "myassistant"
    try:
        base.mkdir(parents=True, exist_ok=True)
        return base
    except OSError:  # a read-only home (some hosts): the temporary folder
        return Path(tempfile.gettempdir())


def missing_cpu_flags(needed: tuple[str, ...]) -> list[str]:
    """The flags of `needed` (as /proc/cpuinfo names them) this CPU lacks; all of them where it cannot tell."""
    info = Path("/proc/cpuinfo")
    flags = set(info.read_text().split()) if info.exists() else set()
    return [f for f in needed if f not in flags]


def build(source: Path, cflags: list[str], cpu_flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """`source` compiled with `cflags` (as a shared library: add -shared -fPIC) and loaded; built once per
    source and flags. RuntimeError saying why where this CPU lacks one of `cpu_flags` or it does not build."""
    if missing := missing_cpu_flags(cpu_flags):
        raise RuntimeError(f"this CPU lacks {', '.join(missing)}")
    code = source.read_bytes()
    tag = hashlib.sha256(code + " ".join(cflags).encode()).hexdigest()[:16]
    lib_path = cache_dir() / f"{source.stem}-{tag}.so"
    if not lib_path.exists():
        compiler = os.environ.get("CC", "cc")
        tmp = lib_path.with_name(f"{lib_path.name}.{os.getpid()}.tmp")
        try:
            done = subprocess.run([compiler, *cflags, str(source), "-o", str(tmp)], capture_output=True, text=True)
        except OSError as err:
            raise RuntimeError(f"no C compiler ({compiler}: {err.strerror})") from None
        if done.returncode:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"{compiler} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        os.replace(tmp, lib_path)  # whole or not at all: another process may be loading it
    return ctypes.CDLL(str(lib_path))
