"""assistant demo --name Alice: the whole pipeline offline on a tiny model, each stage timed.

data → tiny base → LoRA → report → merge (trainer.demo) → push to a git-lfs repo → Gradio app.
Every stage prints the command that re-runs it alone on the same files.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="assistant demo", description=__doc__)
    p.add_argument("--name", required=True, help="the assistant's new name")
    p.add_argument("--author", help="who made it (answers to 'who made you' name them)")
    p.add_argument("--workdir", default="demo_out", help="where every file goes (default ./demo_out)")
    p.add_argument("--remote", help="push here (git URL or hf:owner/name) instead of a local bare repo")
    p.add_argument("--fresh", action="store_true", help="delete the work folder first (else the trained base is reused)")
    p.add_argument("--no-app", dest="app", action="store_false", help="stop after the push; do not start the app")
    p.add_argument("--port", type=int, default=7860, help="the app's port (default 7860)")
    args = p.parse_args(argv)

    from myassistant.hub import push_folder
    from myassistant.trainer import demo
    from myassistant.trainer.identity.report import summary as report_summary

    cfg = demo.DemoConfig(name=args.name, author=args.author, workdir=Path(args.workdir))
    paths = cfg.paths
    if args.fresh:
        shutil.rmtree(paths.root, ignore_errors=True)
    paths.root.mkdir(parents=True, exist_ok=True)
    with demo.stage(1, "self-cognition data", demo.data_command(cfg)):
        demo.write_data(cfg)
    with demo.stage(2, "tiny base model, taught general chat and who it is", *demo.base_commands(cfg)):
        demo.build_base(cfg)
    method = demo.quant_method()
    with demo.stage(3, f"identity fine-tune ({method})", demo.finetune_data_command(cfg), demo.finetune_command(cfg, method)):
        demo.finetune(cfg, method)
    with demo.stage(4, "fine-tune report", demo.report_command(cfg)):
        print(report_summary(demo.report(cfg)), flush=True)
    with demo.stage(5, "merge", demo.merge_command(cfg)):
        demo.merge_adapter(cfg)
    remote = args.remote or paths.repo.as_uri()
    with demo.stage(6, f"push to {remote}", f"{demo.cli()} push {demo.shown(paths.merged)} --to {remote}"):
        if not args.remote and not paths.repo.exists():
            subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(paths.repo)], check=True)
        push_folder(paths.merged, remote, cache_dir=paths.cache)
    print(f"model: {paths.merged}\nrepo:  {remote}\nchat:  {demo.cli()} chat {demo.shown(paths.merged)}", flush=True)
    if not args.app:
        return 0
    env = {**os.environ, "MODEL_REPO": remote, "MODEL_CACHE": str(paths.cache / "models"),
           "GRADIO_SERVER_PORT": str(args.port)}
    with demo.stage(7, "Gradio app (Ctrl-C stops it)", f"MODEL_REPO={remote} {demo.shown(sys.executable)} app.py"):
        app = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env)
        try:
            url = f"http://127.0.0.1:{args.port}/"
            while app.poll() is None and not _answers(url):
                time.sleep(1)
            if app.poll() is None:
                print(f"app:   {url}  (running; Ctrl-C stops it)", flush=True)
            return app.wait()
        finally:
            if app.poll() is None:  # interrupted: take the app down with us
                app.terminate()
                app.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False
