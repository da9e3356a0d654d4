"""The one command line: ``assistant <command> [options]``.

Each command is a thin module in ``scripts/`` with ``main(argv) -> int`` that parses its own
arguments and calls one library function. Errors a user can fix (their classes carry
``user_error = True``) are printed as one line on stderr with exit code 1, as are the file system's refusals
of a path (read-only, no permission, disk full, a folder where a file goes ...); anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import errno
import importlib
import logging
import os
import signal
import sys
import threading
import warnings

# what the file system says of a path a user gave or whose place they chose: one line, not a traceback
PATH_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EISDIR, errno.ENOTDIR,
               errno.ENAMETOOLONG, errno.EEXIST}
# stop a command as Ctrl-C does (temporary files removed, a training stopped at a step's end): a closed terminal,
# `timeout`, `docker stop`, systemd and the cloud's shutdowns send these, whose default ends the process on the spot
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

LOG_FORMAT = "[%(where)s] %(message)s"  # `where`: the module without the package prefix (_short_names)

# command -> (module under scripts/, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "tiny": ("myassistant.scripts.tiny", "write a tiny InternLM2-format checkpoint (for tests and the offline demo)"),
    "data": ("myassistant.scripts.data", "generate self-cognition data / validate and inspect a data file"),
    "presets": ("myassistant.scripts.presets", "list the shipped training presets or copy one to edit"),
    "train": ("myassistant.scripts.train", "fine-tune (QLoRA / LoRA / full) from a YAML config"),
    "report": ("myassistant.scripts.report", "measure identity accuracy and leak of a fine-tuned model"),
    "merge": ("myassistant.scripts.merge", "merge a LoRA adapter into standalone safetensors weights"),
    "export": ("myassistant.scripts.export", "export a model folder to GGUF (llama.cpp, Ollama, LM Studio)"),
    "push": ("myassistant.scripts.push", "push a model folder to a git-lfs remote or the Hugging Face Hub"),
    "push-app": ("myassistant.scripts.push_app", "write and push the Gradio app repo for a model repo"),
    "clone": ("myassistant.scripts.clone", "clone a model repo (git-lfs or Hugging Face) and verify its weights"),
    "chat": ("myassistant.scripts.chat", "chat with a model in the terminal (streaming)"),
    "demo": ("myassistant.scripts.demo", "the whole pipeline offline on a tiny model"),
    "studio": ("myassistant.scripts.studio", "the whole pipeline in a local web UI, with live training"),
}


def _short_names(record: logging.LogRecord) -> bool:
    """Log lines name the module without the package prefix every module of ours shares."""
    record.where = record.name.removeprefix("myassistant.")
    return True


_main_pid = 0  # the command's process (set when its STOP_SIGNALS are routed)


def _as_ctrl_c(signum: int, frame) -> None:
    if os.getpid() != _main_pid:  # a forked worker (datasets, a DataLoader): ended as before, by its parent
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)  # the command's own Ctrl-C (training: stop at the end of this step)
    else:
        raise KeyboardInterrupt


def _stop_signals_as_ctrl_c() -> dict:
    """Route STOP_SIGNALS that still have their default action to ``_as_ctrl_c``; returns what to restore (an ignored
    SIGHUP, as under nohup, stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    global _main_pid
    _main_pid = os.getpid()
    saved = {s: signal.getsignal(s) for s in STOP_SIGNALS if signal.getsignal(s) == signal.SIG_DFL}
    for s in saved:
        signal.signal(s, _as_ctrl_c)
    return saved


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    return f"usage: assistant <command> [options]   (assistant --version)\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0
    if argv[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version

        try:
            sys.stdout.write(f"assistant (myassistant) {version('myassistant')}\n")
        except PackageNotFoundError:  # run from a checkout that was never installed
            sys.stdout.write("assistant (myassistant), not installed: run from a checkout\n")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"assistant: unknown command {name!r}\n\n{_usage()}")
        return 2
    # peft reads transformers' deprecated name on every LoRA model it makes: nothing a user can act on
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    if not sys.stderr.isatty():  # a log file or a pipe: the libraries' progress bars are noise there
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" reads it too
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_short_names)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request Gradio makes to its own server
    logging.getLogger("gguf").setLevel(logging.WARNING)  # the writer's temporary file name and byte order: export logs
    module = importlib.import_module(COMMANDS[name][0])
    restore = _stop_signals_as_ctrl_c()
    try:
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("assistant: interrupted\n")
        return 130
    except Exception as err:  # noqa: BLE001 - only user errors are shortened, the rest re-raised
        if _after_ctrl_c(err):  # e.g. datasets' worker pool, whose TimeoutError follows the KeyboardInterrupt
            sys.stderr.write("assistant: interrupted\n")
            return 130
        if getattr(type(err), "user_error", False):
            sys.stderr.write(f"assistant {name}: error: {err}\n")
            return 1
        if isinstance(err, OSError) and err.errno in PATH_ERRNOS and err.filename:
            where = f"{err.filename} -> {err.filename2}" if err.filename2 else err.filename
            sys.stderr.write(f"assistant {name}: error: {where}: {err.strerror}\n")
            return 1
        raise
    finally:
        for signum, handler in restore.items():
            signal.signal(signum, handler)


def _after_ctrl_c(err: BaseException) -> bool:
    """Whether `err` was raised while a KeyboardInterrupt was being handled (its cause or context, at any depth)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
