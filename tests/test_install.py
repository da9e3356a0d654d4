"""A normal (not editable) install works: the wheel of this checkout, in a fresh venv, run from elsewhere."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkout_copy(dest: Path) -> Path:
    """The files a fresh clone would have (tracked, plus new files not ignored), copied to `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def fresh_venv(where: Path) -> tuple[Path, Path]:
    """A new, empty venv: (its python, its site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    return python, Path(purelib)


def share_dependencies(site: Path) -> None:
    """Let the venv import this interpreter's packages (torch & co. are not downloaded again) through a path
    line in a .pth file: it adds the folder to sys.path without running the editable finder installed there.
    Written after the install, so that pip does not take our editable install for the wheel's."""
    (site / "shared-site-packages.pth").write_text(sysconfig.get_path("purelib") + "\n")


def test_the_wheel_installs_one_package_that_runs_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing may come from a checkout
    src = checkout_copy(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, env=env, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("myassistant-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # what push-app ships beside the packages, and the presets, are package data
    assert {"myassistant/app.py", "myassistant/requirements.txt", "myassistant/packages.txt"} <= names
    assert "myassistant/configs/demo_identity_lora.yaml" in names
    # the CPU kernels' sources, compiled at first use
    assert {"myassistant/chat/int8_blocks.c", "myassistant/chat/attention_cpu.c"} <= names
    assert any(n.startswith("myassistant/configs/deepspeed/") for n in names)

    python, site = fresh_venv(tmp_path / "venv")
    before = set(os.listdir(site))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, env=env, cwd=tmp_path)
    new_top_level = {n for n in set(os.listdir(site)) - before if not n.endswith(".dist-info")}
    assert new_top_level == {"myassistant"}  # no model/, chat/, scripts/ to collide with other projects
    share_dependencies(site)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assistant = str(python.parent / "assistant")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=outside, env=env, capture_output=True, text=True, timeout=600)

    where = run(str(python), "-c", "import myassistant; print(myassistant.__file__)")
    assert where.returncode == 0 and where.stdout.startswith(str(site)), where.stdout + where.stderr
    presets = run(assistant, "presets", "list")
    assert presets.returncode == 0 and "demo_identity_lora" in presets.stdout, presets.stderr
    tiny = run(assistant, "tiny", "tiny-model")
    assert tiny.returncode == 0, tiny.stderr
    assert {"config.json", "model.safetensors"} <= {p.name for p in (outside / "tiny-model").iterdir()}
    app = run(str(python), "-c", "from myassistant.hub.app_repo import write_app_folder; "
                                 "print(write_app_folder('owner/alice', 'app-repo'))")
    assert app.returncode == 0, app.stderr
    shipped = outside / "app-repo"
    assert (shipped / "assistant_app.py").is_file() and (shipped / "myassistant" / "chat" / "engine.py").is_file()
    assert (shipped / "requirements.txt").is_file() and (shipped / "packages.txt").is_file()
