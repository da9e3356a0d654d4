"""app.py in a real headless Chromium: the page names the assistant, blank messages are not sent, the
answer streams in, Stop stops it; an unloadable model is a readable error. Screenshots: tests/_artifacts."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from test_app import lfs_model_repo, running_app

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "_artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture
def browser_page():
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900}), sync_api.expect
        finally:
            browser.close()


def until(condition, timeout_s: float = 60) -> bool:
    """Whether `condition()` holds within `timeout_s` (a loaded machine renders the page late)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def settled(answer) -> bool:
    """The answer's text is the same 2 s apart."""
    before = answer.inner_text()
    time.sleep(2.0)
    return answer.inner_text() == before


def test_page_names_the_assistant_streams_the_answer_and_stop_stops_it(tmp_path, browser_page):
    page, expect = browser_page
    # A model that never ends its reply and a context of 32k tokens: its greedy reply runs for minutes, so Stop is
    # pressed while it runs even when a loaded machine renders the page slowly.
    repo = lfs_model_repo(tmp_path, name="Tiny Tim", endless=True, hidden_size=512, num_hidden_layers=4,
                          intermediate_size=1024, num_attention_heads=8, num_key_value_heads=4,
                          max_position_embeddings=32768)
    with running_app({"MODEL_REPO": repo, "MODEL_CACHE": str(tmp_path / "models")}, tmp_path / "app.log") as url:
        page.goto(url)
        expect(page.locator("#app-title")).to_have_text("Tiny Tim", timeout=60_000)
        expect(page).to_have_title("Tiny Tim")
        expect(page.get_by_text("context 32,768 tokens")).to_be_visible()
        numbers = page.get_by_test_id("number-input")  # temperature, top-p, top-k, repetition, max tokens
        expect(numbers.first).to_be_hidden()  # the settings start closed
        box = page.get_by_placeholder("Type a message…")
        for blank in ("", "   "):
            box.fill(blank)
            box.press("Enter")
        expect(page.get_by_text("Type a message first.")).to_be_visible()
        time.sleep(1.0)
        expect(page.get_by_test_id("user")).to_have_count(0)  # nothing was sent
        page.screenshot(path=str(ARTIFACTS / "app_start.png"))

        page.locator("#settings").get_by_text("Settings").click()
        expect(numbers.first).to_have_value("0")  # the model's own defaults: greedy, up to 30,000 tokens
        expect(numbers.nth(4)).to_have_value("30000")
        page.locator("#settings").get_by_text("Settings").click()  # closed again
        box.fill("Who are you?")
        box.press("Enter")
        answer = page.get_by_test_id("bot").last
        expect(answer).not_to_have_text("", timeout=60_000)
        assert until(lambda: len(answer.inner_text()) > 20), "the answer did not grow: not streamed"
        page.locator("button.stop-button").click(timeout=90_000)
        expect(page.locator("button.submit-button")).to_be_visible(timeout=60_000)
        assert until(lambda: settled(answer)), "the answer kept growing after Stop"
        page.screenshot(path=str(ARTIFACTS / "app_browser.png"))
    assert (ARTIFACTS / "app_browser.png").stat().st_size > 10_000


def test_an_unloadable_model_is_a_readable_error_on_the_page(tmp_path, browser_page):
    page, expect = browser_page
    env = {"MODEL_REPO": str(tmp_path / "no-such-model"), "MODEL_CACHE": str(tmp_path / "models")}
    with running_app(env, tmp_path / "app.log") as url:
        page.goto(url)
        header = page.locator("#app-header")
        expect(header).to_contain_text("The model could not be loaded", timeout=60_000)
        expect(header.locator("strong")).to_have_text("The model could not be loaded")
        assert "**" not in header.inner_text()
        page.screenshot(path=str(ARTIFACTS / "app_error.png"))
