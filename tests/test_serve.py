"""The web demo: its event handlers on bad and good input, and the page itself driven in headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from llava_pl.chat_engine import ChatModel, Conversation, Sampling, open_image
from tests.conftest import CONF_DIR, free_port
from tests.demo_checkpoint import draw_shapes, seeded_checkpoints

DEMO_INSTALL = 'pip install -e ".[demo,test]"'
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium's own connections (updates, sync, ...) have nowhere to go on a closed network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def talking_checkpoint(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ChatModel]:
    """A random demo checkpoint that says something to the tests' question, and the chat model loaded from it:
    some random weights end the turn at once, and an empty answer would not show the streaming."""
    folder = tmp_path_factory.mktemp("talking_checkpoint")
    picture = draw_shapes(folder / "shapes.png")
    for path, chat in seeded_checkpoints(data_dir, folder, 8):
        if _expected_answer(chat, picture, "What color is the circle?", 6):
            return path, chat
    pytest.fail("none of 8 random demo checkpoints answers anything")


@pytest.fixture(scope="module")
def demo_checkpoint(talking_checkpoint: tuple[Path, ChatModel]) -> Path:
    return talking_checkpoint[0]


@pytest.fixture(scope="module")
def chat(talking_checkpoint: tuple[Path, ChatModel]) -> ChatModel:
    return talking_checkpoint[1]


@pytest.fixture
def handlers(chat: ChatModel):
    pytest.importorskip("gradio", reason=f"the web demo needs Gradio: {DEMO_INSTALL}")
    from llava_pl.serve import DemoHandlers

    return DemoHandlers(chat, max_image_pixels=10_000)


def _expected_answer(chat: ChatModel, picture: Path, question: str, max_new_tokens: int) -> str:
    conversation = Conversation(chat.image_tensor(open_image(picture)))
    return "".join(chat.answer(conversation, question, Sampling(0.0, 1.0, max_new_tokens))).strip()


def test_bad_uploads_and_prompts_get_a_message_and_change_nothing(handlers, tmp_path: Path) -> None:
    picture = draw_shapes(tmp_path / "shapes.png")
    conversation, preview, history, status, _ = handlers.load_image(str(picture), None)
    assert conversation.image is not None and preview.size == (64, 48) and history == []
    assert "shapes.png (64x48): a new conversation" in status

    (tmp_path / "notes.txt").write_text("not a picture")
    Image.new("RGB", (120, 100), "white").save(tmp_path / "huge.png")
    for name, reason in [("notes.txt", "not an image"), ("huge.png", "120x100 = 12,000 pixels, more than the 10,000")]:
        kept, _, _, status, upload = handlers.load_image(str(tmp_path / name), conversation)
        assert kept is conversation and upload is None  # the refused file is cleared, the image kept
        assert status.startswith("**Image refused:**") and reason in status

    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"}]
    for question, top_p, reason in [("  ", 0.7, "the question is empty"), ("Hi?", 0.0, "top_p must be in (0, 1]")]:
        (box, shown, kept, status), = handlers.respond(question, history, conversation, 0.0, top_p, 4)
        assert (box, shown, kept) == (question, history, conversation) and status.startswith(f"**Not sent:** {reason}")
    assert conversation.turns == []


def test_an_answer_streams_into_the_history(handlers, chat: ChatModel, tmp_path: Path) -> None:
    picture = draw_shapes(tmp_path / "shapes.png")
    conversation = handlers.load_image(str(picture), None)[0]
    updates = list(handlers.respond("What color is the circle?", [], conversation, 0.0, 1.0, 6))
    assert len(updates) > 2 and updates[0][3] == "Answering…" and updates[-1][3] == ""
    final = updates[-1][1]
    expected = _expected_answer(chat, picture, "What color is the circle?", 6)
    assert final == [{"role": "user", "content": "What color is the circle?"},
                     {"role": "assistant", "content": expected}]
    assert conversation.turns == [("What color is the circle?", expected)]
    assert handlers.reset(conversation)[:2] == (conversation, []) and conversation.turns == []


def _wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the demo server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the demo server did not answer at {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_a_person_uploads_an_image_and_asks_in_a_real_browser(chat: ChatModel, demo_checkpoint: Path,
                                                             tmp_path: Path) -> None:
    """Starts ``python -m llava_pl.serve`` on loopback and uses the page in headless Chromium: bad uploads and
    an empty question get messages, a drawn image and a question get the model's answer, streamed."""
    pytest.importorskip("gradio", reason=f"the web demo needs Gradio: {DEMO_INSTALL}")
    playwright_api = pytest.importorskip("playwright.sync_api",
                                         reason=f"the browser test needs Playwright: {DEMO_INSTALL}")
    if CHROMIUM is None:
        pytest.skip("the browser test needs Debian's Chromium: apt-get install -y chromium (or CHROMIUM=/path/to/it)")

    picture = draw_shapes(tmp_path / "shapes.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    Image.new("RGB", (120, 100), "white").save(tmp_path / "huge.png")  # few bytes, too many pixels
    Image.effect_noise((100, 100), 60).convert("RGB").save(tmp_path / "heavy.png")  # > 20 KB: too large a file
    assert (tmp_path / "heavy.png").stat().st_size > 20_000
    expected = _expected_answer(chat, picture, "What color is the circle?", 6)

    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_TEMP_DIR": str(tmp_path / "uploads")}
    with log.open("w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "llava_pl.serve", f"model={demo_checkpoint}", f"port={port}",
             "max_image_pixels=10000", "max_upload=20kb", "max_new_tokens=12", "temperature=0.2"],
            cwd=str(CONF_DIR.parents[1]), env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/", server, log)
        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(f"http://127.0.0.1:{port}/")

            def status_says(text: str) -> str:
                page.wait_for_function("text => document.querySelector('#status').innerText.includes(text)", arg=text)
                return page.inner_text("#status")

            upload = "#image-upload input[type=file]"
            page.set_input_files(upload, str(tmp_path / "notes.txt"))
            assert "notes.txt: not an image" in status_says("Image refused")
            page.set_input_files(upload, str(tmp_path / "huge.png"))
            assert "more than the 10,000 allowed" in status_says("120x100")
            page.set_input_files(upload, str(tmp_path / "heavy.png"))  # Gradio refuses it before it is stored
            page.get_by_text("exceed the maximum allowed size").wait_for()
            page.set_input_files(upload, str(picture))
            status_says("shapes.png (64x48): a new conversation")
            page.click("#send")
            status_says("Not sent: the question is empty")

            # greedy, at most 6 tokens: the page's settings, not the server's (temperature 0.2, 12 tokens)
            for slider, value in [("#temperature", "0"), ("#max-tokens", "6")]:
                page.fill(f"{slider} input[type=number]", value)
                page.press(f"{slider} input[type=number]", "Tab")
            page.fill("#question textarea", "What color is the circle?")
            page.press("#question textarea", "Enter")
            page.wait_for_selector("#chat .message.bot")
            page.wait_for_function("() => !document.querySelector('#status').innerText.includes('Answering')")
            shown = page.inner_text("#chat .message.bot")
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert " ".join(shown.split()) == " ".join(expected.split()) != ""
    with Image.open(tmp_path / "demo.png") as screenshot:
        assert screenshot.width == 1280 and screenshot.height >= 600
