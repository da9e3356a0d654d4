"""`assistant studio` in a real headless Chromium: the whole pipeline on a tiny model, and Stop / Resume.

The studio runs as a subprocess of its own (as a user starts it); every stage it starts is a real
`assistant` job; the push goes to local git-lfs bare repos. Screenshots land in tests/_artifacts.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "_artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "tok-Sup3rSecret-9f8e7d"  # typed into the password field; must never appear anywhere

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
    pytest.mark.skipif(subprocess.run(["git", "lfs", "version"], capture_output=True).returncode != 0,
                       reason="git-lfs is not installed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_TOKEN", "OPENXLAB_TOKEN", "HF_TOKEN")}
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(HOME=str(tmp_path / "home"), ASSISTANT_CACHE=str(tmp_path / "cache"), GIT_CONFIG_NOSYSTEM="1",
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    return env


def _kill_jobs(ws: Path) -> None:
    """Every job the studio started (its own process group), e.g. a training a failed test left running."""
    import json

    for job in ws.rglob("job.json"):
        try:
            os.killpg(json.loads(job.read_text())["pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


@contextmanager
def running_studio(tmp_path: Path):
    ws, port = tmp_path / "ws", _free_port()
    log = (tmp_path / "studio.log").open("wb")
    # with SIGINT ignored, as `studio &` in a script or a notebook's `!... &` starts it: Stop still stops a training
    proc = subprocess.Popen(["sh", "-c", 'trap "" INT; exec "$0" "$@"', sys.executable, "-m", "myassistant.scripts.cli",
                             "studio", "--workdir", str(ws), "--port", str(port)], cwd=tmp_path, env=_env(tmp_path),
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "studio.log").read_text()
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield url, ws
    except BaseException:
        print("studio.log (its end):\n" + (tmp_path / "studio.log").read_text(errors="replace")[-6000:])
        raise
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        _kill_jobs(ws)
        log.close()


@contextmanager
def browser_page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def fill(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")


def pick(page, elem_id: str, value: str) -> None:
    """Choose ``value`` in a dropdown (its list is filled when the tab opens)."""
    box = page.locator(f"#{elem_id} input").first
    box.click()
    page.get_by_role("option", name=value, exact=True).click()


def expect_text(page, text: str, timeout_s: float = 60) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_text(text).first).to_be_visible(timeout=timeout_s * 1000)


def live(page) -> str:
    return page.locator("#runs-live").inner_text()


def step_of(page) -> int:
    m = re.search(r"step (\d+)", live(page))
    return int(m[1]) if m else 0


def loss_path(page) -> str:
    """The drawn loss line (an SVG path); changes whenever a point is added."""
    line = page.locator("#runs-loss path.loss-line")
    return line.first.get_attribute("d") or "" if line.count() else ""


def wait_for(predicate, timeout_s: float, what: str, every_s: float = 0.5, shown=lambda: ""):
    """``predicate()``'s first truthy value; ``shown()`` says what the page showed instead."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; {shown()}")


def start_training(page, base: Path, data: Path | None, **knobs) -> None:
    page.get_by_role("tab", name="3 · Train").click()
    # the page's load fills the run name, the inputs of the newest run, then the command: typing waits for it
    wait_for(lambda: "assistant train" in page.locator("#train-command").inner_text(), 120, "the page to load")
    if data is not None:
        fill(page, "train-base", base)
        fill(page, "train-file", data)
    page.locator("text=Advanced >> visible=true").first.click()
    for key, value in knobs.items():
        fill(page, f"train-{key}", value)
    page.locator("#train-start").click()
    errors = lambda: [t for t in page.locator(".field-error").all_inner_texts() if t.strip()]
    wait_for(lambda: "Started" in page.locator("#train-started").inner_text(), 300, "the training to start",
             shown=lambda: f"the form's messages: {errors()}")


def _bare_repo(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    return path


@pytest.mark.slow  # ~4 min on a loaded 2-core machine: six `assistant` jobs, each importing torch
def test_the_whole_pipeline_in_the_browser(tmp_path):
    from myassistant.model import build_tiny_checkpoint

    base = build_tiny_checkpoint(tmp_path / "tiny")
    model_repo, app_repo = _bare_repo(tmp_path / "alice.git"), _bare_repo(tmp_path / "alice-app.git")
    ARTIFACTS.mkdir(exist_ok=True)
    with running_studio(tmp_path) as (url, ws), browser_page() as page:
        page.goto(url)
        # 1. base model: a folder; what was found
        fill(page, "base-source", tmp_path / "nowhere")
        page.locator("#base-load").click()
        expect_text(page, "no such folder")
        fill(page, "base-source", base)
        page.locator("#base-load").click()
        expect_text(page, "Base model ready")
        expect_text(page, "InternLM2")
        page.screenshot(path=str(ARTIFACTS / "studio_1_model.png"), full_page=True)

        # 2. data: a bad field says so next to it and writes nothing; then generate
        page.get_by_role("tab", name="2 · Data").click()
        page.locator("#data-generate").click()
        expect_text(page, "give the assistant a name")
        assert not any((ws / "data").iterdir())
        # a file of one's own: uploaded, checked, kept in the workspace and named in the path box; a path typed
        # after it is what the next Check reads, and its error stands alone
        chats = tmp_path / "my chats.jsonl"
        chats.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
        page.locator("#data-upload input[type=file]").set_input_files(str(chats))
        page.locator("#data-check").click()
        expect_text(page, "is valid: 1 record.")
        wait_for(lambda: page.locator("#data-path input, #data-path textarea").first.input_value()
                 == "data/my chats.jsonl", 60, "the kept copy named in the path box")
        fill(page, "data-path", tmp_path / "nothing.jsonl")
        page.locator("#data-check").click()
        expect_text(page, "nothing.jsonl: no such data file")
        assert page.get_by_text("is valid").count() == 0
        fill(page, "data-name", "Alice")
        fill(page, "data-author", "Bob")
        fill(page, "data-count", 40)
        page.locator("text=Advanced >> visible=true").first.click()
        fill(page, "data-eval-identity", 6)
        fill(page, "data-eval-general", 4)
        page.locator("#data-generate").click()
        expect_text(page, "training conversations")
        expect_text(page, "no duplicate records")
        assert "Alice" in page.locator("#data-samples").inner_text()
        page.screenshot(path=str(ARTIFACTS / "studio_2_data.png"), full_page=True)
        # a name of symbols only once wrote into data/ itself (and removed every file there); a folder of other
        # files of the same name is not Generate's to rewrite
        (ws / "data" / "mine.jsonl").write_text("{}\n")
        (ws / "data" / "bob").mkdir()
        (ws / "data" / "bob" / "notes.txt").write_text("keep")
        fill(page, "data-name", "Bob")
        page.locator("#data-generate").click()
        expect_text(page, "data/bob holds other files; give the assistant another name")
        fill(page, "data-name", "???")
        page.locator("#data-generate").click()
        expect_text(page, "Wrote data/identity")
        assert (ws / "data" / "mine.jsonl").is_file() and (ws / "data" / "bob" / "notes.txt").is_file()
        fill(page, "data-name", "Alice")
        page.locator("#data-generate").click()
        expect_text(page, "Wrote again data/alice")

        # 3. train: a bad knob starts nothing; then a few steps, the loss plot drawn again as they come
        page.get_by_role("tab", name="3 · Train").click()
        fill(page, "train-lr", "fast")
        page.locator("#train-start").click()
        expect_text(page, "train.learning_rate: expected a number")
        assert not (ws / "runs" / "run-1").exists()
        fill(page, "train-lr", "0.002")
        wait_for(lambda: "learning_rate=fast" not in page.locator("#train-command").inner_text(), 60,
                 "the command to follow the form")
        shown = next(line for line in page.locator("#train-command").inner_text().splitlines() if line.startswith("cd "))
        assert shown.startswith(f"cd {ws} && assistant train --config presets/") and "model.base=" in shown
        # pasted into a terminal (before any Start), it runs: here its --check
        checked = subprocess.run(shown.replace("&& assistant ", f"&& {sys.executable} -m myassistant.scripts.cli ")
                                 + " --check", shell=True, capture_output=True, text=True, env=_env(tmp_path))
        assert checked.returncode == 0, checked.stderr
        start_training(page, base, None, max_steps=40, logging_steps=1, save_steps=20, eval_steps=20)
        wait_for(lambda: page.locator("#train-run textarea, #train-run input").first.input_value() == "run-2", 30,
                 "the run name to move on to a free one")
        drawn = set()

        def finished() -> bool:
            if "running" in live(page) and loss_path(page):
                drawn.add(loss_path(page))
            return "finished" in live(page)

        wait_for(finished, 300, "the training to finish", every_s=0.3)
        # A fast machine may finish 40 steps between two refreshes, so one drawing while running is
        # enough, as long as the finished plot was drawn again with more points.
        assert drawn, "the loss plot was never drawn while training"
        points = lambda path: path.count("L") + 1
        final = loss_path(page)
        assert points(final) > min(map(points, drawn)), (
            f"the loss plot was not redrawn as steps came: {sorted(map(points, drawn))} then {points(final)} points")
        assert "step 40" in live(page)
        assert page.locator("#runs-evals").inner_text().count("Who are you?") >= 1
        page.locator("#runs-live").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "studio_3_train.png"), full_page=True)

        # 4. report: table and bar chart, fine-tuned vs base
        page.get_by_role("tab", name="4 · Report").click()
        pick(page, "report-target", "runs/run-1")
        page.locator("#report-run").click()
        expect_text(page, "Report written", 240)
        assert "identity, held-out questions" in page.locator("#report-table").inner_text()
        bars = page.locator("#report-chart path[aria-roledescription='bar'], #report-chart .mark-rect path")
        wait_for(lambda: bars.count() >= 2, 180, "the bar chart")  # drawn by Vega after the table
        page.screenshot(path=str(ARTIFACTS / "studio_4_report.png"), full_page=True)

        # 5. chat: the run's adapter beside its base
        page.get_by_role("tab", name="5 · Chat").click()
        pick(page, "chat-target", "runs/run-1")
        page.locator("#chat-load").click()
        expect_text(page, "Loaded", 120)
        fill(page, "chat-message", "Who are you?")
        page.locator("#chat-send").click()
        wait_for(lambda: page.locator("#chat-tuned [data-testid='bot']").count()
                 and page.locator("#chat-base [data-testid='bot']").count(), 120, "both answers")
        page.screenshot(path=str(ARTIFACTS / "studio_5_chat.png"), full_page=True)

        # 6. merge, push the model and the app to local git-lfs remotes, with a typed token
        page.get_by_role("tab", name="6 · Merge & push").click()
        pick(page, "merge-run", "runs/run-1")
        page.get_by_label("float32").check()
        page.locator("#merge-run-btn").click()
        expect_text(page, "Merged into", 180)
        fill(page, "push-remote", model_repo.as_uri())
        fill(page, "push-token", TOKEN)
        page.locator("#push-model").click()
        expect_text(page, "Pushed merged/run-1 to", 180)
        fill(page, "push-app-remote", app_repo.as_uri())
        page.locator("#push-app").click()
        expect_text(page, "Pushed the app", 180)
        page.screenshot(path=str(ARTIFACTS / "studio_6_push.png"), full_page=True)
        assert TOKEN not in page.content()

    tree = subprocess.run(["git", "ls-tree", "-r", "--name-only", "main"], cwd=model_repo, capture_output=True,
                          text=True, check=True).stdout.split()
    assert {"model.safetensors", "config.json", "README.md", "report.md"} <= set(tree)
    assert "app.py" in subprocess.run(["git", "ls-tree", "--name-only", "main"], cwd=app_repo, capture_output=True,
                                      text=True, check=True).stdout.split()
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert not leaked, f"the token was written to {leaked}"


def test_stop_and_resume_a_training_from_the_ui(tmp_path):
    from myassistant.model import build_tiny_checkpoint
    from myassistant.trainer.identity import IdentitySpec, write_identity_dataset

    base = build_tiny_checkpoint(tmp_path / "tiny")
    data = write_identity_dataset(IdentitySpec(name="Alice", count=40, eval_identity=4, eval_general=4),
                                  tmp_path / "data") / "train.jsonl"
    ARTIFACTS.mkdir(exist_ok=True)
    with running_studio(tmp_path) as (url, ws), browser_page() as page:
        page.goto(url)
        start_training(page, base, data, max_steps=100_000, logging_steps=1, save_steps=5, eval_steps=0)
        wait_for(lambda: step_of(page) >= 6 and list(ws.glob("runs/run-1/checkpoint-*/trainer_state.json")),
                 240, "a checkpoint")

        # a second training of the same run folder is refused, by the page and by the training itself
        fill(page, "train-run", "run-1")
        page.locator("#train-start").click()
        expect_text(page, "is training right now")
        clash = subprocess.run([sys.executable, "-m", "myassistant.scripts.cli", "train", "--config",
                                str(ws / "runs/run-1/run_config.yaml"), "--resume"], cwd=ws, env=_env(tmp_path),
                               capture_output=True, text=True, timeout=300)
        assert clash.returncode == 1 and "being written by another training" in clash.stderr, clash.stderr

        pick(page, "runs-selected", "run-1")
        page.locator("#runs-stop").click()
        wait_for(lambda: "stopped" in live(page), 180, "the training to stop")
        expect_text(page, "resumable from checkpoint-")
        stopped_at = step_of(page)
        page.screenshot(path=str(ARTIFACTS / "studio_stopped.png"), full_page=True)

        page.locator("#runs-resume").click()
        expect_text(page, "Resumed")
        page.reload()  # the page reconnects to the training from its run folder
        page.get_by_role("tab", name="3 · Train").click()
        wait_for(lambda: "running" in live(page) and step_of(page) > stopped_at, 240, "the resumed training to step on")
        assert "Resuming from" in (ws / "runs/run-1/studio/train.log").read_text() or \
            "resuming from" in (ws / "runs/run-1/studio/train.log").read_text()
        page.screenshot(path=str(ARTIFACTS / "studio_resumed.png"), full_page=True)
        page.locator("#runs-stop").click()
        wait_for(lambda: "stopped" in live(page), 180, "the training to stop again")


def test_a_multimodal_model_is_asked_about_a_picture_in_the_chat_tab(tmp_path, tiny_llava):
    """The Chat tab had no way to give a loaded Llava model a picture (the hosted app had one)."""
    from PIL import Image

    picture = tmp_path / "red.png"
    Image.new("RGB", (48, 32), (220, 30, 30)).save(picture)
    with running_studio(tmp_path) as (url, _), browser_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="5 · Chat").click()
        box = page.locator("#chat-target input").first
        box.fill(str(tiny_llava))
        box.press("Enter")
        page.locator("#chat-load").click()
        expect_text(page, "It reads pictures: add one below", 120)
        page.locator("#chat-picture input[type='file']").set_input_files(str(picture))
        wait_for(lambda: page.locator("#chat-picture img").count(), 60, "the picture's preview")
        fill(page, "chat-message", "What is in the picture?")
        page.locator("#chat-send").click()
        wait_for(lambda: page.locator("#chat-tuned [data-testid='bot']").count(), 120, "the answer",
                 shown=lambda: page.locator("#chat-tuned").inner_text())
        # the next message typed while the reply streams stays in the box (each update of the reply emptied it)
        fill(page, "chat-message", "And its colour?")  # a second turn: the picture stays in the history it hands on
        seen = []
        wait_for(lambda: seen.append(page.locator("#chat-tuned").inner_text()) or seen[-3:] == [seen[-1]] * 3, 120,
                 "the answer to end", every_s=1)
        assert page.locator("#chat-message textarea").first.input_value() == "And its colour?"  # kept
        assert page.locator("#chat-tuned [data-testid='user'] img").count() == 1  # the picture in the column
        assert not page.locator("#chat-picture img").count()  # sent with that message, not the next one
        page.screenshot(path=str(ARTIFACTS / "studio_chat_picture.png"), full_page=True)
        # Send is ignored while a reply is pending (Gradio's trigger_mode "once"); on a busy machine the reply can
        # pause for longer than the wait above took for its end, so click until the message is taken
        users = page.locator("#chat-tuned [data-testid='user']")
        first = users.count()  # (the picture and the text: two)
        box = page.locator("#chat-message textarea").first  # emptied once the message is taken
        wait_for(lambda: (box.input_value() and page.locator("#chat-send").click()) or users.count() > first, 120,
                 "the second message to be sent", every_s=2)
        wait_for(lambda: page.locator("#chat-tuned [data-testid='bot']").count() == 2, 120, "the second answer",
                 shown=lambda: page.locator("#chat-tuned").inner_text())
        assert not [t for t in page.locator(".field-error").all_inner_texts() if t.strip()]
