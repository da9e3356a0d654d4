"""app.py in a real headless Chromium: ask, watch the answer stream in, press Stop."""
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


def test_answer_streams_in_the_browser_and_stop_stops_it(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    # Wide enough to decode ~100 tokens/s here: greedy decoding runs for seconds, time to press Stop.
    repo = lfs_model_repo(tmp_path, hidden_size=512, num_hidden_layers=4, intermediate_size=1024,
                          num_attention_heads=8, num_key_value_heads=4)
    ARTIFACTS.mkdir(exist_ok=True)
    with running_app({"MODEL_REPO": repo, "MODEL_CACHE": str(tmp_path / "models")}, tmp_path / "app.log") as url, \
            sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            sync_api.expect(page.get_by_text("tiny-assistant chat").first).to_be_visible(timeout=30_000)
            numbers = page.get_by_test_id("number-input")  # temperature, top-p, top-k, repetition, max tokens
            for index, value in ((0, "0"), (4, "2000")):
                numbers.nth(index).fill(value)
                numbers.nth(index).press("Tab")
            page.get_by_placeholder("Type a message...").fill("Who are you?")
            page.keyboard.press("Enter")

            answer = page.get_by_test_id("bot").last
            sync_api.expect(answer).not_to_have_text("", timeout=30_000)
            first = len(answer.inner_text())
            time.sleep(1.0)
            assert len(answer.inner_text()) > first, "the answer did not grow: not streamed"

            page.locator("button.stop-button").click()
            sync_api.expect(page.locator("button.submit-button")).to_be_visible(timeout=10_000)
            stopped = len(answer.inner_text())
            time.sleep(1.5)
            assert len(answer.inner_text()) == stopped, "the answer kept growing after Stop"
            page.screenshot(path=str(ARTIFACTS / "app_browser.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "app_browser.png").stat().st_size > 10_000
