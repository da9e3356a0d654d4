"""app.py serving a multimodal (Llava) model: `respond` with pictures, and a real browser uploading one."""
from __future__ import annotations

import shutil

import pytest
from PIL import Image

from test_app import load_app  # noqa: F401 - the fixture
from test_app_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from test_app import running_app
from test_engine_vision import ask_about, draw

from myassistant.chat import ChatEngine

GREEDY = ("", 0.0, 0.8, 0, 1.0, 16)  # system prompt, temperature, top-p, top-k, repetition penalty, max new tokens


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    return draw(tmp_path_factory.mktemp("app-pictures") / "red_circle.png", "circle", "red")


@pytest.fixture(scope="module")
def expected(tiny_llava, picture) -> dict[str, str]:
    engine = ChatEngine.from_pretrained(tiny_llava)
    image = engine.generate(ask_about(picture), temperature=0, max_new_tokens=16)
    follow_up = [*ask_about(picture), {"role": "assistant", "content": image}, {"role": "user", "content": "Its colour?"}]
    return {"image": image, "follow_up": engine.generate(follow_up, temperature=0, max_new_tokens=16),
            "text": engine.generate([{"role": "user", "content": "Who are you?"}], temperature=0, max_new_tokens=16)}


def test_a_multimodal_model_gets_a_picture_box_and_answers_about_the_picture(load_app, tiny_llava, picture,
                                                                             expected, tiny_checkpoint):
    app = load_app(MODEL_REPO=str(tiny_llava))
    assert app.IMAGES and app.served.engine is None  # known from the folder, before any weights load
    replies = list(app.respond({"text": "What is in the picture?", "files": [str(picture)]}, [], *GREEDY))
    assert len(replies) > 1 and all(b.startswith(a) for a, b in zip(replies, replies[1:]))  # streamed
    assert replies[-1] == expected["image"]
    # text only, on the same model; then a follow-up whose history holds the picture as Gradio gives it back
    assert list(app.respond({"text": "Who are you?", "files": []}, [], *GREEDY))[-1] == expected["text"]
    history = [{"role": "user", "content": [{"type": "file", "file": {"path": str(picture)}},
                                            {"type": "text", "text": "What is in the picture?"}]},
               {"role": "assistant", "content": [{"type": "text", "text": replies[-1]}]}]
    assert list(app.respond({"text": "And its colour?", "files": []}, history, *GREEDY))[-1]
    broken = picture.with_name("broken.png")
    broken.write_text("no picture")
    (reply,) = app.respond({"text": "and this?", "files": [str(broken)]}, [], *GREEDY)
    assert reply.startswith(f"⚠️ image {broken}: not a readable image")
    # a text-only model keeps the plain text box
    app = load_app(MODEL_REPO=str(tiny_checkpoint))
    assert not app.IMAGES


@pytest.mark.browser
@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")
def test_upload_a_picture_in_the_browser_and_see_the_answer(tiny_llava, picture, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with running_app({"MODEL_REPO": str(tiny_llava)}, tmp_path / "app.log") as url, \
            sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            sync_api.expect(page.get_by_placeholder("Type a message, or add a picture…")).to_be_visible(timeout=120_000)
            box = page.locator("textarea").first  # Gradio blanks the placeholder once a message is sent
            page.locator("#settings").get_by_text("Settings").click()  # the settings start closed
            numbers = page.get_by_test_id("number-input")  # temperature, top-p, top-k, repetition, max tokens
            for index, value in ((0, "0"), (4, "16")):
                numbers.nth(index).fill(value)
                numbers.nth(index).press("Tab")
            page.locator("input[type=file]").first.set_input_files(str(picture))
            sync_api.expect(page.locator("img[src*='red_circle']").first).to_be_visible(timeout=120_000)
            box.fill("What is in the picture?")
            box.press("Enter")

            # The streamed answer, whole once the submit button is back. Its exact greedy text is checked through
            # app.respond above: in the browser a settings change can still be in flight under load (a loaded
            # fresh-clone run answered with sampled text once), and the point here is the page's round trip.
            answer = page.get_by_test_id("bot").last
            sync_api.expect(answer).not_to_be_empty(timeout=180_000)
            sync_api.expect(page.locator("button.submit-button")).to_be_visible(timeout=180_000)
            sync_api.expect(page.get_by_test_id("user").first.locator("img")).to_be_visible()  # the picture, sent
            box.fill("Its colour?")  # the follow-up reads the picture from the history Gradio sends back
            box.press("Enter")
            sync_api.expect(page.get_by_test_id("bot")).to_have_count(2, timeout=120_000)
            sync_api.expect(page.get_by_test_id("bot").last).not_to_be_empty(timeout=180_000)
            sync_api.expect(page.locator("button.submit-button")).to_be_visible(timeout=120_000)  # the reply is done
            page.screenshot(path=str(ARTIFACTS / "app_browser_image.png"), full_page=True)
        finally:
            browser.close()
    assert Image.open(ARTIFACTS / "app_browser_image.png").size[0] == 1280
