"""Web demo: a trained VLM in the browser (Gradio) - upload an image, set a box, describe / ask / locate.

    python vlm_inference/app.py --model_path vlm_model --base_model llava-hf/llava-1.5-7b-hf
    # then open http://127.0.0.1:7860 ; --host 0.0.0.0 serves the local network, --share a public gradio.live link

The model is named and loaded by the same flags as vlm_inference.py and predict.py (vlm_inference/model_args.py),
once, before the page is served; every button calls :class:`VLMInference`, so the page answers exactly what the
Python API answers. The box is pixels ``x1 y1 x2 y2`` of the uploaded image: typed, or set by clicking two
opposite corners on the image. Describe: :meth:`VLMInference.describe_object` (box, optional label). Ask:
:meth:`VLMInference.answer_question`; ``<box>`` in the question stands for the box, written the way the model
was taught to read boxes (and drawn on the image it sees, for a model trained with visual box prompts).
Locate: :meth:`VLMInference.locate`, the box drawn in green. The buttons are also an API (``describe``, ``ask``,
``locate``) for ``gradio_client``; see docs/app.md.
"""
from __future__ import annotations

import argparse
import functools
import re
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

if __package__ in (None, ""):  # run as a file: its folder's vlm_inference.py would shadow the vlm_inference package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from vlm_core import boxes, prompts
from vlm_core.images import BOX_PROMPT_SLOTS, box_prompt_line_width, draw_box_prompt
from vlm_core.io_utils import InputError
from vlm_core.runtime import report_input_errors
from vlm_inference.model_args import add_model_args, check_model_args
from vlm_inference.vlm_inference import VLMInference, load_model, validate_bbox

# What a question writes to mean the box set on the page (replaced by the model's own way of naming it).
BOX_PLACEHOLDER = "<box>"
USER_BOX_COLOUR = "red"  # the box set on the page; also the colour a visual box prompt names first
LOCATED_BOX_COLOUR = "green"
TITLE = "VLM demo"
IMAGE_HEIGHT = 420  # pixels of the page an image takes at most: a large photo is shown scaled down, whole


class AppInputError(ValueError):
    """Bad input on the page (no image, a box that is not four numbers): shown as one line, never a traceback."""


# ---------------------------------------------------------------------- pure helpers (unit-tested)
def parse_box_text(text: str | None) -> list[float] | None:
    """The box typed on the page: four numbers ``x1 y1 x2 y2`` split by spaces and/or commas (brackets allowed,
    as a box printed by the API is written); None when the text is blank."""
    if text is None or not text.strip():
        return None
    parts = [p for p in re.split(r"[\s,]+", text.strip().strip("[]()").strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise AppInputError(f"box: expected four numbers x1 y1 x2 y2 (pixels), got {text.strip()!r}") from None
    if len(values) != 4:
        raise AppInputError(f"box: expected four numbers x1 y1 x2 y2 (pixels), got {len(values)}: {text.strip()!r}")
    return values


def format_box(box: list[float] | None) -> str:
    """A box as the page shows it (and the box field reads back): ``[x1, y1, x2, y2]`` with one decimal; "none"."""
    if box is None:
        return "none"
    return "[" + ", ".join(f"{v:.1f}" for v in box) + "]"


def box_from_corners(first: tuple[float, float], second: tuple[float, float]) -> list[float]:
    """The box with two clicked pixels as opposite corners, whichever order they were clicked in; the second
    pixel is included (a click names a pixel, and the box's right/bottom edge is exclusive)."""
    (xa, ya), (xb, yb) = first, second
    return [float(min(xa, xb)), float(min(ya, yb)), float(max(xa, xb) + 1), float(max(ya, yb) + 1)]


def checked_box(text: str | None, image: Image.Image, required: bool) -> list[float] | None:
    """The typed box checked against the image as the API checks it (pixels, in order, some area inside;
    clipped to the image)."""
    box = parse_box_text(text)
    if box is None:
        if required:
            raise AppInputError("box: set a box first (type x1 y1 x2 y2, or click two corners on the image)")
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # clipping to the image is what a page user expects
        return validate_bbox(box, *image.size)


def draw_view(image: Image.Image | None, box: list[float] | None = None, located: list[float] | None = None,
              corner: tuple[float, float] | None = None) -> Image.Image | None:
    """The image as the page shows it: the box set (red), the box the model located (green), and a first
    clicked corner waiting for its second (a red dot)."""
    if image is None:
        return None
    drawn = [{"bbox": b, "colour": c} for b, c in ((box, USER_BOX_COLOUR), (located, LOCATED_BOX_COLOUR)) if b]
    view = draw_box_prompt(image.convert("RGB"), drawn)
    if corner is not None:
        r = 2 * box_prompt_line_width(*view.size)
        x, y = corner
        ImageDraw.Draw(view).ellipse((x - r, y - r, x + r, y + r), fill=USER_BOX_COLOUR)
    return view


def question_with_box(vlm: VLMInference, question: str, box: list[float] | None,
                      image: Image.Image) -> tuple[str, list[dict] | None]:
    """The question the model is asked and the boxes drawn for it: each ``<box>`` becomes the box as the model
    names boxes (its frame's text, or "the red box" with visual box prompts, drawn then on the image)."""
    if BOX_PLACEHOLDER not in question:
        return question, None
    if box is None:
        raise AppInputError(f"question: it names {BOX_PLACEHOLDER} but no box is set (type x1 y1 x2 y2, or click "
                            "two corners on the image)")
    named = prompts.box_reference(vlm.prompt_format.box_prompt, BOX_PROMPT_SLOTS[0],
                                  vlm.frame.render_box(box, *image.size))
    return question.replace(BOX_PLACEHOLDER, named), vlm.region_boxes(box) or None


# ---------------------------------------------------------------------- the page
def _as_image(value: Any) -> Image.Image:
    """The uploaded file loaded as vlm_inference.py loads an --image (EXIF rotation, transparency, a bad file
    refused): the page, its clicks and the model all see these pixels."""
    if value is None:
        raise AppInputError("image: upload an image first")
    return VLMInference.load_image(value)


def build_app(vlm: VLMInference, max_new_tokens: int | None = None):
    """The page (a ``gr.Blocks``) for a loaded model; nothing is served until its ``launch()``.

    Every action is also an API endpoint (``/describe``, ``/ask``, ``/locate``, ``/set_box``) taking the
    image, the box text, and the action's text, for ``gradio_client``."""
    import gradio as gr  # here, not at the top: --help and a bad flag answer without loading the web stack

    generate = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}

    def shown(fn):
        """Run a page action; bad input (the page's or the API's) becomes one line on the page (gr.Error)."""
        @functools.wraps(fn)  # keeps the signature: Gradio reads the parameters' names and hints from it
        def wrapped(*args):
            try:
                return fn(*args)
            except (AppInputError, InputError, ValueError) as e:
                raise gr.Error(str(e).splitlines()[0] if str(e) else type(e).__name__, print_exception=False)
        return wrapped

    def redraw(image, box_text):
        """The view after the image or the typed box changed (a box that does not parse yet draws nothing)."""
        if image is None:
            return None, None
        img = _as_image(image)
        try:
            box = checked_box(box_text, img, required=False)
        except ValueError:
            box = None
        return draw_view(img, box), None

    def click(image, box_text, corner, evt):
        """A click on the view: the first sets a corner, the second the box (the typed box is replaced)."""
        if image is None:
            return gr.update(), box_text, None
        img = _as_image(image)
        x, y = (float(v) for v in evt.index[:2])  # pixels of the image itself, whatever size the page shows it
        if corner is None:
            return draw_view(img, None, corner=(x, y)), box_text, (x, y)
        box = [float(v) for v in boxes.clip_box(box_from_corners(tuple(corner), (x, y)), *img.size)]
        return draw_view(img, box), " ".join(f"{v:g}" for v in box), None

    # Gradio passes the click's coordinates to the parameter hinted gr.SelectData; the hint is set here, as an
    # object, since gradio is imported in this function and a string hint ("gr.SelectData") would not resolve.
    click.__annotations__["evt"] = gr.SelectData

    def describe(image, box_text, label):
        img = _as_image(image)
        box = checked_box(box_text, img, required=True)
        return vlm.describe_object(img, box, label=(label or "").strip() or None, **generate)

    def ask(image, box_text, question):
        img = _as_image(image)
        if not (question or "").strip():
            raise AppInputError("question: type a question")
        box = checked_box(box_text, img, required=False)
        text, drawn = question_with_box(vlm, question, box, img)
        return vlm.answer_question(img, text, drawn_boxes=drawn, **generate)

    def locate(image, box_text, description):
        img = _as_image(image)
        if not (description or "").strip():
            raise AppInputError("locate: type what to find")
        located = vlm.locate(img, description, **generate)
        try:
            box = checked_box(box_text, img, required=False)
        except ValueError:
            box = None
        return format_box(located), draw_view(img, box, located)

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"## {TITLE}: `{vlm.model_path}`" + (f" on `{vlm.base_model}`" if vlm.base_model else ""))
        corner = gr.State(None)
        with gr.Row():
            with gr.Column():
                # The uploaded file itself (image_mode None: not re-encoded), loaded by _as_image.
                image = gr.Image(type="filepath", image_mode=None, label="Image (upload)",
                                 sources=["upload", "clipboard"],
                                 height=IMAGE_HEIGHT, elem_id="image")
                box_text = gr.Textbox(label="Box: x1 y1 x2 y2 (pixels), or click two corners on the right",
                                      elem_id="box")
                label = gr.Textbox(label="Label of the object in the box (optional, for Describe)",
                                   elem_id="label")
                question = gr.Textbox(label=f"Question (Ask); {BOX_PLACEHOLDER} stands for the box",
                                      value="How many objects are there?", elem_id="question")
                target = gr.Textbox(label="What to find (Locate)", elem_id="target")
                with gr.Row():
                    describe_btn = gr.Button("Describe", variant="primary", elem_id="describe")
                    ask_btn = gr.Button("Ask", variant="primary", elem_id="ask")
                    locate_btn = gr.Button("Locate", variant="primary", elem_id="locate")
            with gr.Column():
                view = gr.Image(type="pil", format="png", interactive=False, elem_id="view", height=IMAGE_HEIGHT,
                                label="The box on the image (click two corners to set it)")
                answer = gr.Textbox(label="Answer", lines=3, interactive=False, elem_id="answer")

        image.change(shown(redraw), [image, box_text], [view, corner], api_name=False)
        box_text.submit(shown(redraw), [image, box_text], [view, corner], api_name=False)
        box_text.blur(shown(redraw), [image, box_text], [view, corner], api_name=False)
        view.select(shown(click), [image, box_text, corner], [view, box_text, corner], api_name=False)
        describe_btn.click(shown(describe), [image, box_text, label], answer, api_name="describe")
        ask_btn.click(shown(ask), [image, box_text, question], answer, api_name="ask")
        question.submit(shown(ask), [image, box_text, question], answer, api_name=False)
        locate_btn.click(shown(locate), [image, box_text, target], [answer, view], api_name="locate")
    return demo


# ---------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--host", "--server_name", dest="host", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1, this machine only; 0.0.0.0: the network)")
    parser.add_argument("--port", "--server_port", dest="port", type=int, default=7860,
                        help="port to serve on (default 7860)")
    parser.add_argument("--share", action="store_true",
                        help="also serve through a public gradio.live link (needs the internet)")
    parser.add_argument("--inbrowser", action="store_true", help="open the page in this machine's browser")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    check_model_args(args)
    require_free_port(args.host, args.port)
    return args


def require_free_port(host: str, port: int) -> None:
    """Refuse a port another program serves on before the model loads (minutes, for a large one), not after."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as e:
        raise InputError(f"--port {port}: cannot serve on {host}:{port} ({e.strerror or e}); another program "
                         "(an earlier app.py?) uses it: stop it or pass another --port") from None


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import gradio  # noqa: F401  (the check only: build_app imports it)
    except ImportError:
        raise InputError("the web demo needs gradio: pip install -r requirements.txt") from None
    vlm = load_model(args)  # once: every request of every visitor asks this model
    demo = build_app(vlm, max_new_tokens=args.max_new_tokens)
    demo.queue(default_concurrency_limit=1)  # one generate at a time: the model is not shared between threads
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, inbrowser=args.inbrowser)
    return 0


if __name__ == "__main__":
    sys.exit(main())
