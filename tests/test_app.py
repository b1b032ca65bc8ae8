"""The web demo (vlm_inference/app.py) on the tiny LLaVA: the page in a real browser (Debian's chromium driven by
Playwright), its API through gradio_client, both answering what VLMInference answers; the box helpers; the flags."""
from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from vlm_inference import app
from vlm_inference.vlm_inference import VLMInference
from world.make_world import draw_scene

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
CHROMIUM = "/usr/bin/chromium"
GEN = {"max_new_tokens": 8}
QUESTION = "How many objects are there?"
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A world scene with three or more objects, saved as PNG (lossless: the page and the API see the same pixels)."""
    for index in range(50):
        image, _, objects = draw_scene(0, "heldout", index)
        if len(objects) >= 3:
            break
    path = tmp_path_factory.mktemp("app_scene") / "scene.png"
    # Four times the world's size, as large as a photo shows on the page: a click there lands on one pixel.
    image.resize((image.width * 4, image.height * 4), Image.NEAREST).save(path)
    return path


@pytest.fixture(scope="module")
def vlm(tiny_models) -> VLMInference:
    return VLMInference(tiny_models["llava"])


@pytest.fixture(scope="module")
def served(vlm):
    """The page of the tiny LLaVA served on a free port in this process (the model loaded once, above)."""
    demo = app.build_app(vlm, max_new_tokens=GEN["max_new_tokens"])
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()


# ---------------------------------------------------------------------- the box helpers
@pytest.mark.parametrize("text, box", [
    ("10 20 30 40", [10.0, 20.0, 30.0, 40.0]),
    ("10, 20, 30.5, 40", [10.0, 20.0, 30.5, 40.0]),
    ("[10.0, 20.0, 30.0, 40.0]", [10.0, 20.0, 30.0, 40.0]),
    ("  ", None),
    (None, None),
])
def test_parse_box_text(text, box):
    assert app.parse_box_text(text) == box


@pytest.mark.parametrize("text", ["10 20 30", "10 20 30 40 50", "a b c d"])
def test_parse_box_text_refuses_what_is_not_four_numbers(text):
    with pytest.raises(app.AppInputError, match="box: expected four numbers x1 y1 x2 y2"):
        app.parse_box_text(text)


def test_box_from_corners_takes_either_order_and_includes_the_second_pixel():
    assert app.box_from_corners((30, 40), (10, 5)) == [10.0, 5.0, 31.0, 41.0]
    assert app.box_from_corners((10, 5), (30, 40)) == [10.0, 5.0, 31.0, 41.0]


def test_format_box_reads_back_as_the_same_box():
    assert app.format_box([1, 2.25, 3, 4]) == "[1.0, 2.2, 3.0, 4.0]"
    assert app.format_box(None) == "none"
    assert app.parse_box_text(app.format_box([12, 34, 56, 78])) == [12.0, 34.0, 56.0, 78.0]


def test_checked_box_clips_to_the_image_and_refuses_what_the_api_refuses():
    image = Image.new("RGB", (100, 80))
    assert app.checked_box("10 10 150 90", image, required=False) == [10.0, 10.0, 100.0, 80.0]
    assert app.checked_box("", image, required=False) is None
    with pytest.raises(app.AppInputError, match="set a box first"):
        app.checked_box("", image, required=True)
    with pytest.raises(ValueError, match="x2"):
        app.checked_box("50 10 20 30", image, required=False)


def test_draw_view_draws_the_set_box_red_and_the_located_box_green():
    image = Image.new("RGB", (100, 100), (0, 0, 0))
    view = app.draw_view(image, [10, 10, 50, 50], located=[60, 60, 90, 90])
    assert view.getpixel((10, 30)) == (255, 0, 0)
    assert view.getpixel((60, 75)) == (0, 255, 0)
    assert view.getpixel((30, 30)) == (0, 0, 0)  # the inside is left as it is
    assert image.getpixel((10, 30)) == (0, 0, 0)  # the upload itself is not drawn on
    dot = app.draw_view(image, None, corner=(40, 40))
    assert dot.getpixel((40, 40)) == (255, 0, 0) and dot.getpixel((10, 10)) == (0, 0, 0)
    assert app.draw_view(None) is None


def test_question_with_box_names_the_box_as_the_model_reads_boxes(vlm):
    image = Image.new("RGB", (100, 80))
    box = [10.0, 20.0, 50.0, 60.0]
    assert app.question_with_box(vlm, QUESTION, box, image) == (QUESTION, None)
    text, drawn = app.question_with_box(vlm, "What colour is <box>?", box, image)
    assert vlm.prompt_format.box_prompt == "text"  # the tiny base model: the box is written, nothing drawn
    assert text == f"What colour is {vlm.frame.render_box(box, 100, 80)}?" and drawn is None
    assert "<box>" not in text and re.search(r"\d", text)
    with pytest.raises(app.AppInputError, match="no box is set"):
        app.question_with_box(vlm, "What is <box>?", None, image)


# ---------------------------------------------------------------------- the page in a real browser
def _browser(playwright):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run make browser (it installs Debian's chromium) before the tests")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])


def _click_image_pixel(page, selector: str, x: int, y: int) -> None:
    """Click pixel (x, y) of the image shown in ``selector``, scaled and centred as Gradio shows it."""
    img = page.locator(selector)
    natural = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    b = img.bounding_box()
    scale = min(b["width"] / natural[0], b["height"] / natural[1], 1)
    left = b["x"] + (b["width"] - natural[0] * scale) / 2
    top = b["y"] + (b["height"] - natural[1] * scale) / 2
    page.mouse.click(left + (x + 0.5) * scale, top + (y + 0.5) * scale)


def test_the_page_in_a_browser_answers_what_the_api_answers(served, vlm, scene, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    expected = vlm.answer_question(scene, QUESTION, **GEN)
    assert expected.strip(), "the tiny model answered nothing: the comparison below would prove little"
    width, height = Image.open(scene).size
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(served)
            page.locator("#image input[type=file]").set_input_files(str(scene))
            view = page.locator("#view img")
            expect(view).to_be_visible(timeout=60_000)

            # Two clicks on the image set the box (pixels of the image, whatever size the page shows it at).
            _click_image_pixel(page, "#view img", 20, 30)
            expect(page.locator("#box textarea")).to_have_value("", timeout=5_000)  # one corner: no box yet
            page.wait_for_timeout(500)
            _click_image_pixel(page, "#view img", width - 30, height - 20)
            box_field = page.locator("#box textarea")
            expect(box_field).not_to_have_value("", timeout=30_000)
            box = app.parse_box_text(box_field.input_value())
            assert box == pytest.approx([20, 30, width - 29, height - 19], abs=2)

            page.locator("#question textarea").fill(QUESTION)
            page.locator("#ask").click()
            answer = page.locator("#answer textarea")
            expect(answer).to_have_value(expected, timeout=120_000)

            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    shot_width, shot_height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert shot_width == 1280 and shot_height >= 400
    assert len(data) > 20_000  # a page with an image on it, not a blank one
    if os.environ.get("APP_SCREENSHOT"):  # regenerate the screenshot docs/app.md shows
        Path(os.environ["APP_SCREENSHOT"]).write_bytes(data)


# ---------------------------------------------------------------------- the API (gradio_client)
@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client
    return Client(served, verbose=False)


def _record(monkeypatch, vlm, method: str) -> list:
    """The arguments of each call of ``vlm.<method>`` (still answered by the real model)."""
    calls, real = [], getattr(vlm, method)

    def recording(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)
    monkeypatch.setattr(vlm, method, recording)
    return calls


def test_api_describe_ask_locate_answer_what_the_python_api_answers(client, vlm, scene, monkeypatch):
    from gradio_client import handle_file

    image = handle_file(str(scene))
    width, height = Image.open(scene).size
    box = [10.0, 12.0, 70.0, 80.0]
    box_text = " ".join(f"{v:g}" for v in box)
    # The tiny model's answers change little with the question, so what the page asked is recorded too.
    regions = _record(monkeypatch, vlm, "region_question")
    questions = _record(monkeypatch, vlm, "clean_question")
    assert client.predict(image, box_text, "bottle", api_name="/describe") == \
        vlm.describe_object(scene, box, label="bottle", **GEN)
    assert client.predict(image, box_text, "", api_name="/describe") == vlm.describe_object(scene, box, **GEN)
    assert regions == [(box, width, height, "bottle")] * 2 + [(box, width, height, None)] * 2

    assert client.predict(image, "", QUESTION, api_name="/ask") == vlm.answer_question(scene, QUESTION, **GEN)
    asked = f"What is in {vlm.frame.render_box(box, width, height)}?"
    assert client.predict(image, box_text, "What is in <box>?", api_name="/ask") == \
        vlm.answer_question(scene, asked, **GEN)
    assert [q[0] for q in questions] == [QUESTION, QUESTION, asked, asked]

    text, view = client.predict(image, box_text, "the bottle", api_name="/locate")
    assert text == app.format_box(vlm.locate(scene, "the bottle", **GEN))
    with Image.open(view) as shown:
        assert shown.size == (width, height)
        assert shown.convert("RGB").getpixel((int(box[0]), int(box[1] + box[3]) // 2)) == (255, 0, 0)


def test_an_upload_is_loaded_as_the_command_line_loads_an_image(client, vlm, scene, tmp_path):
    """A phone photo stored sideways with an EXIF rotation is turned upright, as vlm_inference.py turns it."""
    from gradio_client import handle_file

    sideways = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show
    with Image.open(scene) as img:
        img.save(sideways, exif=exif, quality=95)
        width, height = img.size
    upright = VLMInference.load_image(sideways)
    assert upright.size == (height, width)
    text, view = client.predict(handle_file(str(sideways)), "", "the bottle", api_name="/locate")
    assert text == app.format_box(vlm.locate(sideways, "the bottle", **GEN))
    with Image.open(view) as shown:
        assert shown.size == upright.size


@pytest.mark.parametrize("api_name, box_text, text, message", [
    ("/describe", "", "", "box: set a box first"),
    ("/describe", "1 2 3", "", "box: expected four numbers"),
    ("/ask", "", "What is <box>?", "no box is set"),
    ("/ask", "", "   ", "question: type a question"),
    ("/locate", "", "", "locate: type what to find"),
])
def test_api_bad_input_is_one_line_naming_the_field(client, scene, api_name, box_text, text, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=re.escape(message)):
        client.predict(handle_file(str(scene)), box_text, text, api_name=api_name)


# ---------------------------------------------------------------------- the command line
def test_bad_flags_are_one_line_and_exit_2(tiny_models, capsys):
    assert app.main(["--model_path", str(tiny_models["llava"]), "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --port must be in 1..65535, got 0"
    assert app.main(["--model_path", "/nonexistent/model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --model_path") and "\n" not in err


def test_a_port_in_use_is_refused_before_the_model_loads(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # A model path that does not exist would be named first: the port is checked after the cheap checks.
        assert app.main(["--model_path", str(ROOT / "fixtures"), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --port {port}: cannot serve on 127.0.0.1:{port}") and "\n" not in err


def test_the_command_serves_the_page(tiny_models):
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "vlm_inference" / "app.py"), "--model_path",
                             str(tiny_models["llava"]), "--port", str(port), "--max_new_tokens", "4"],
                            cwd=ROOT.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"app.py exited {proc.returncode}: {proc.communicate()[1][-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = response.read().decode("utf-8", "replace")
                break
            except OSError:
                assert time.monotonic() < deadline, "app.py never served its page"
                time.sleep(0.5)
        assert response.status == 200 and app.TITLE in page
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
