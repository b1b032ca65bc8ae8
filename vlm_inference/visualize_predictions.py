"""Draw a model's answers over their images and write an HTML gallery to review them, wrong answers first.

    python vlm_inference/visualize_predictions.py --predictions predictions.jsonl \\
        --image_dir data/images --output_dir prediction_review/

Reads the ``predictions.jsonl`` that ``predict.py`` writes (``vlm_core/predictions.py``: one line per
question with its ``image``, ``question``, ``answer``, ``reference`` and ``type``) and the images it names
(relative to ``--image_dir``, as for predict.py). Each answer is judged by the rule ``evaluate.py`` scores
its type with: short answers right when they equal the reference after the VQA normalisation, counts when
their first number is the reference's (``count_exact``), grounding when the answer's box overlaps the
reference's at IoU >= 0.5 (``acc@0.5``); region descriptions are free text, shown with their ROUGE-L and
neither right nor wrong. The gallery lists the wrong answers first, then the descriptions (lowest ROUGE-L
first), then the right ones, each in the file's order.

Each entry shows the image with its boxes drawn: for a grounding question the reference box (green,
``truth``) and the answer's box (blue, ``answer``), and for a question that names a region by its box
(region_description, region_label) that box (orange, ``asked``); the question, the answer beside the
reference, and right / wrong. A menu filters the entries by question type and a box shows only the wrong
ones (plain JavaScript; the choice rides in the address, ``index.html#type=grounding&wrong``, so the page
links keep it). Boxes are read in the frame the model answered in: the ``box_frame`` that predict.py
records on grounding lines (any line's, for the region questions), else ``--family``'s.

Re-render safe, as ``vlm_annotation/visualize.py``: drawings are named by what they show (a re-render
draws only what changed), the pages by a token of the render, ``index.html`` replaced last, then what
the new gallery does not use is removed. One run at a time per folder (``index.html.lock``). A wrong
``--image_dir`` (none of the images there) stops with one line before anything is written; a single
missing or unreadable image is shown as such in its entries. Memory holds the shown answers (their lines and
a verdict each), not the images.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import secrets
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a file: its folder's vlm_inference.py would shadow the vlm_inference package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from PIL import Image, ImageDraw

from vlm_core import families
from vlm_core.boxes import first_box, iou
from vlm_core.flags import IMAGES_DIR, flag_names
from vlm_core.frame_check import FRAME_FIELD, displayed_size, read_frame_fields
from vlm_core.gallery import (
    CSS,
    INDEX_NAME,
    LOAD_SCRIPT,
    auto_line_width,
    downscale_factor,
    esc,
    font_for,
    page_name,
    pages_index_name,
    render_nav,
    render_pages_index,
    text_colour,
    upscale_factor,
    url,
)
from vlm_core.images import ImageLoadError, load_image
from vlm_core.io_utils import InputError, atomic_output, iter_jsonl, write_text_atomic
from vlm_core.llava_format import is_llava_file
from vlm_core.predictions import check_prediction
from vlm_core.runtime import plural, report_input_errors, require_output_dir, require_path, single_writer
from vlm_core.schema import COUNT_TYPES, DESCRIPTION_TYPES, GROUNDING_TYPES, REGION_QUESTION_TYPES
from vlm_core.scoring import IOU_THRESHOLD, _first_number_of, caption_tokens, normalize_answer, rouge_l

IMAGES_SUBDIR = "images"
DRAWING_VERSION = "1"  # bumped when drawings change for the same inputs
WRONG, DESCRIPTION, RIGHT = "wrong", "description", "right"
STATUS_ORDER = {WRONG: 0, DESCRIPTION: 1, RIGHT: 2}
# Box colours: the truth green, the answer blue, the asked region orange (Sasha Trubetskoy's list).
COLOURS = {"truth": (60, 180, 75), "answer": (0, 130, 200), "asked": (245, 130, 48)}
UNTYPED = "untyped"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True, help="predictions.jsonl written by predict.py")
    p.add_argument(*flag_names("--image_dir", IMAGES_DIR), required=True,
                   help="folder the predictions' 'image' paths are relative to (predict.py's --image_dir)")
    p.add_argument("--output_dir", default="prediction_review",
                   help="where index.html and the drawn images go (default: prediction_review)")
    p.add_argument("--family", choices=sorted(families.FAMILIES), default=None,
                   help="the box frame of the answers when no line records one (predict.py records it on grounding "
                        "lines): the model's family (default: llava)")
    p.add_argument("--wrong_only", action="store_true", help="list only the wrong answers")
    p.add_argument("--max_items", type=int, default=None, help="show only the first N answers of the file (default: all)")
    p.add_argument("--per_page", type=int, default=100,
                   help="entries per HTML page, so a large set stays quick to open (default: 100)")
    p.add_argument("--max_side", type=int, default=768,
                   help="downscale drawn images so their longer side is at most this many pixels; 0 keeps the "
                        "original size (default: 768)")
    p.add_argument("--min_side", type=int, default=384,
                   help="upscale drawn images whose longer side is shorter than this, so small images stay "
                        "readable; 0 keeps the original size (default: 384)")
    p.add_argument("--jpeg_quality", type=int, default=90, help="JPEG quality of the drawn images, 1-95 (default: 90)")
    args = p.parse_args(argv)
    if args.max_items is not None and args.max_items < 1:
        raise InputError(f"--max_items must be at least 1, got {args.max_items}")
    if args.per_page < 1:
        raise InputError(f"--per_page must be at least 1, got {args.per_page}")
    if args.max_side < 0:
        raise InputError(f"--max_side must be 0 (keep size) or positive, got {args.max_side}")
    if args.min_side < 0 or (args.max_side and args.min_side > args.max_side):
        raise InputError(f"--min_side must be 0 (keep size) or between 1 and --max_side, got {args.min_side}")
    if not 1 <= args.jpeg_quality <= 95:
        raise InputError(f"--jpeg_quality must be in 1..95, got {args.jpeg_quality}")
    return args


# ----------------------------------------------------------------------------- judging

@dataclass
class Item:
    """One answered question as the gallery shows it."""
    index: int                      # its line among the shown predictions (0-based)
    record: dict
    status: str                     # WRONG | DESCRIPTION | RIGHT
    detail: str                     # why: "IoU 0.31", "3 against 4", "ROUGE-L 0.42"
    rank: float = 0.0               # within its status, lower first (a description's ROUGE-L)
    drawn: str | None = None        # the drawing, relative to the output folder
    size: tuple[int, int] | None = None
    problem: str | None = None      # why the image is not shown
    notes: list[str] = field(default_factory=list)


def question_type(rec: dict) -> str:
    return rec.get("type") or UNTYPED


def judge(rec: dict) -> tuple[str, str, float]:
    """``(status, detail, rank)`` of one prediction, by the rule evaluate.py scores its type with."""
    qtype, answer, reference = question_type(rec), rec["answer"], rec["reference"]
    if qtype in GROUNDING_TYPES:
        box, ref = first_box(answer), first_box(reference)
        if box is None:
            return WRONG, "no box in the answer", 0.0
        value = iou(box, ref)
        return (RIGHT if value >= IOU_THRESHOLD else WRONG), f"IoU {value:.2f}", 0.0
    if qtype in DESCRIPTION_TYPES:
        value = rouge_l(caption_tokens(answer), [caption_tokens(reference)])
        return DESCRIPTION, f"ROUGE-L {value:.2f}", value
    a, r = normalize_answer(answer), normalize_answer(reference)
    if qtype in COUNT_TYPES:
        na, nr = _first_number_of(a), _first_number_of(r)
        if na is None:
            return WRONG, "no number in the answer", 0.0
        return (RIGHT if na == nr else WRONG), f"{na:g} against {nr:g}" if nr is not None else f"{na:g}", 0.0
    return (RIGHT, "the same answer", 0.0) if a == r else (WRONG, "a different answer", 0.0)


def gallery_order(items: list[Item], wrong_only: bool = False) -> list[Item]:
    """Wrong answers first, then descriptions (lowest ROUGE-L first), then right ones; file order within."""
    shown = [it for it in items if not wrong_only or it.status == WRONG]
    return sorted(shown, key=lambda it: (STATUS_ORDER[it.status], it.rank, it.index))


def read_predictions(path: Path, max_items: int | None) -> list[Item]:
    """The shown predictions, checked (errors name the file, line and field), each judged."""
    items = []
    for line, rec in iter_jsonl(path):
        where = f"{path}: line {line}"
        check_prediction(rec, where)
        if not isinstance(rec.get("image"), str) or not rec["image"]:
            raise InputError(f"{where}: image: expected the image path predict.py writes (relative to --image_dir)")
        if not isinstance(rec.get("question", ""), str):
            raise InputError(f"{where}: question: expected a string")
        try:
            read_frame_fields(rec, where)
        except (ValueError, families.FamilyError) as e:
            raise InputError(str(e)) from None
        status, detail, rank = judge(rec)
        items.append(Item(len(items), rec, status, detail, rank))
        if max_items is not None and len(items) >= max_items:
            break
    return items


def answer_frame(items: list[Item], family: str | None) -> families.BoxFrame:
    """The frame the model answered in: the first that a line records, else ``family``'s (llava)."""
    for it in items:
        if FRAME_FIELD in it.record:
            frame, _, _ = read_frame_fields(it.record, "")
            if frame is not None:
                return frame
    return families.frame_for_family(family or "llava")


def item_boxes(rec: dict, frame: families.BoxFrame, width: int, height: int) -> list[tuple[str, list[float]]]:
    """``(role, pixel box)`` to draw for one prediction: the truth and the answer (grounding), the asked box
    (a region question); ``width`` x ``height``: the image as predict.py saw it."""
    out = []
    qtype = question_type(rec)
    if qtype in GROUNDING_TYPES:
        for role, text in (("truth", rec["reference"]), ("answer", rec["answer"])):
            box = frame.parse_box(text, width, height)
            if box is not None:
                out.append((role, box))
    elif qtype in REGION_QUESTION_TYPES:
        box = frame.parse_box(rec.get("question", ""), width, height)
        if box is not None:
            out.append(("asked", box))
    return out


# ----------------------------------------------------------------------------- drawing

_DRAWN = re.compile(r".*\.(?P<digest>[0-9a-f]{16})\.jpg")
_PAGE = re.compile(r"(?:page_\d+|pages)(?:\.[0-9a-f]{8})?\.html")
_TEMP = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")  # io_utils.atomic_output's temp files


def drawing_name(image: str, digest: str) -> str:
    """A flat, URL-safe name: the image's path for a human browsing the folder, the digest for uniqueness."""
    stem = os.path.splitext(image.replace("\\", "/"))[0]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__"))
    return f"{safe[-80:]}.{digest}.jpg"


def drawing_digest(image_path: Path, boxes: list, settings: tuple) -> str:
    try:
        st = image_path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = None
    text = repr((DRAWING_VERSION, str(image_path), boxes, settings, stamp))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def draw_boxes(image: Image.Image, boxes: list[tuple[str, list[float]]], scale_x: float, scale_y: float) -> Image.Image:
    """A copy of ``image`` with each box outlined in its role's colour and captioned with the role."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    lw = auto_line_width(w, h)
    font = font_for(w, h)
    for role, (x1, y1, x2, y2) in boxes:
        box = [x1 * scale_x, y1 * scale_y, max(x1 * scale_x + 1, x2 * scale_x), max(y1 * scale_y + 1, y2 * scale_y)]
        draw.rectangle(box, outline=COLOURS[role], width=lw)
    for k, (role, (x1, y1, _, y2)) in enumerate(boxes):
        left, top, right, bottom = draw.textbbox((0, 0), role, font=font)
        tw, th = right - left + 4, bottom - top + 4
        # Above the box where there is room, else inside its top; the answer's caption goes under the truth's.
        x = min(max(0.0, x1 * scale_x), w - tw)
        y = y1 * scale_y - th if y1 * scale_y >= th and k == 0 else min(y1 * scale_y + k * th, h - th)
        draw.rectangle([x, y, x + tw - 1, y + th - 1], fill=COLOURS[role])
        draw.text((x + 2 - left, y + 2 - top), role, fill=text_colour(COLOURS[role]), font=font)
    return out


def draw_item(item: Item, image_dir: Path, output_dir: Path, frame: families.BoxFrame, settings: tuple,
              cache: dict) -> None:
    """Draw (or find already drawn) one item's picture; on an unreadable image set ``item.problem``."""
    rec = item.record
    path = image_dir / rec["image"]
    max_side, min_side, quality = settings
    try:
        w, h = _displayed_size(path, cache)
        _, w0, h0 = read_frame_fields(rec, "")
        if w0 is None:  # lines other than grounding do not record the size: the file's is the one asked
            w0, h0 = w, h
        elif (w, h) != (w0, h0):
            item.notes.append(f"the file is {w}x{h} now but was {w0}x{h0} when asked; boxes are scaled to fit")
        boxes = item_boxes(rec, frame, w0, h0)
        digest = drawing_digest(path, boxes, settings)
        rel = f"{IMAGES_SUBDIR}/{drawing_name(rec['image'], digest)}"
        target = output_dir / rel
        if target.is_file():  # drawn by an earlier render (or an earlier item): the name says what it shows
            with Image.open(target) as done:
                item.drawn, item.size = rel, done.size
            return
        image = load_image(path)
    except ImageLoadError as e:
        item.problem = str(e)
        return
    w, h = image.size
    scale = downscale_factor(w, h, max_side)
    if scale < 1.0:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    up = upscale_factor(w, h, min_side)
    if up > 1.0:  # whole factor, nearest pixels: the reviewer sees the image's own pixels, bigger
        image = image.resize((w * int(up), h * int(up)), Image.Resampling.NEAREST)
    drawn = draw_boxes(image, boxes, image.width / w0, image.height / h0)
    with atomic_output(target) as tmp:
        drawn.save(tmp, format="JPEG", quality=quality)
    item.drawn, item.size = rel, drawn.size


def _displayed_size(path: Path, cache: dict) -> tuple[int, int]:
    """The image's size as displayed (EXIF rotation applied), from its header, once per file; a file that
    cannot be read raises load_image's ImageLoadError (the reason the page shows)."""
    if path not in cache:
        try:
            cache[path] = displayed_size(path)
        except Exception:  # noqa: BLE001 (any failure: load_image says why, in its words)
            load_image(path)
            raise ImageLoadError("unreadable image") from None
    return cache[path]


def check_images_found(items: list[Item], image_dir: Path, predictions: Path) -> None:
    """Refuse a gallery none of whose images is in ``image_dir`` (a wrong folder), before anything is written."""
    names = list(dict.fromkeys(it.record["image"] for it in items))
    if not names or any((image_dir / name).is_file() for name in names):
        return
    hint = "give the folder predict.py read them from"
    if len(names) == 1:
        raise InputError(f"--image_dir: {image_dir}: the one image of {predictions}, {names[0]}, is not there; {hint}")
    raise InputError(f"--image_dir: {image_dir}: none of the {len(names)} images of {predictions} is there "
                     f"({len(names)} not found, e.g. {names[0]}); {hint}")


def remove_stale(output_dir: Path, keep_pages: set[str], keep_drawings: set[str]) -> None:
    """Remove pages of other renders, drawings the gallery no longer shows and temp files of killed runs."""
    for folder, is_page in ((output_dir, True), (output_dir / IMAGES_SUBDIR, False)):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if not entry.is_file(follow_symlinks=False):
                continue
            # Temp files of lock files are the lock's own business (vlm_core.runtime cleans those).
            stale = bool(_TEMP.fullmatch(name)) and not re.search(r"\.lock\.[0-9a-f]{8}\.tmp$", name)
            if is_page and _PAGE.fullmatch(name):
                stale = name not in keep_pages
            elif not is_page and _DRAWN.fullmatch(name):
                stale = name not in keep_drawings
            if stale:
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass


# ----------------------------------------------------------------------------- pages

PAGE_CSS = """
.entry.wrong{border-left:6px solid #c00} .entry.right{border-left:6px solid #070}
.entry.description{border-left:6px solid #a60}
.verdict{font-weight:bold} .verdict.wrong{color:#b00} .verdict.right{color:#070} .verdict.description{color:#a60}
.filters{margin:.4em 0 .8em} .filters label{margin-right:1.2em}
"""

# Shows the entries of the chosen type (and only the wrong ones when asked); the choice lives in the
# address (#type=count&wrong) so that it survives a reload and is passed on by the page links.
FILTER_SCRIPT = """
<script>
(function () {
  var select = document.getElementById("type-filter");
  var wrong = document.getElementById("wrong-filter");
  function fromHash() {
    var parts = location.hash.replace(/^#/, "").split("&");
    var type = "";
    var onlyWrong = false;
    parts.forEach(function (p) {
      if (p.indexOf("type=") === 0) { type = decodeURIComponent(p.slice(5)); }
      if (p === "wrong") { onlyWrong = true; }
    });
    if (type && !Array.prototype.some.call(select.options, function (o) { return o.value === type; })) { type = ""; }
    select.value = type;
    wrong.checked = onlyWrong;
  }
  function state() {
    var parts = [];
    if (select.value) { parts.push("type=" + encodeURIComponent(select.value)); }
    if (wrong.checked) { parts.push("wrong"); }
    return parts.join("&");
  }
  function apply() {
    var entries = document.querySelectorAll("article.entry");
    var shown = 0;
    Array.prototype.forEach.call(entries, function (e) {
      var ok = (!select.value || e.getAttribute("data-type") === select.value) &&
               (!wrong.checked || e.getAttribute("data-status") === "wrong");
      e.style.display = ok ? "" : "none";
      if (ok) { shown += 1; }
    });
    var count = document.getElementById("filter-count");
    count.textContent = shown + " of " + entries.length + " entries on this page shown";
    count.setAttribute("data-shown", String(shown));
    var hash = state();
    Array.prototype.forEach.call(document.querySelectorAll("nav a"), function (a) {
      a.setAttribute("href", a.getAttribute("href").split("#")[0] + (hash ? "#" + hash : ""));
    });
  }
  function changed() {
    var hash = state();
    history.replaceState(null, "", location.pathname + location.search + (hash ? "#" + hash : ""));
    apply();
  }
  select.addEventListener("change", changed);
  wrong.addEventListener("change", changed);
  window.addEventListener("hashchange", function () { fromHash(); apply(); });
  fromHash();
  apply();
})();
</script>
"""


def render_item(item: Item) -> str:
    rec = item.record
    qtype = question_type(rec)
    parts = [f'<article class="entry {item.status}" id="entry-{item.index}" data-type="{esc(qtype)}" '
             f'data-status="{item.status}" data-image="{esc(rec["image"])}">']
    if item.drawn:
        w, h = item.size
        parts.append(f'<div class="picture"><a href="{url(item.drawn)}"><img src="{url(item.drawn)}" width="{w}" '
                     f'height="{h}" alt="{esc(rec["image"])} with its boxes"></a></div>')
    else:
        parts.append(f'<div class="picture missing"><strong>image not available</strong><br>{esc(item.problem)}</div>')
    verdict = {WRONG: "wrong", RIGHT: "right", DESCRIPTION: "description"}[item.status]
    parts.append('<div class="details">')
    parts.append(f"<h2>{esc(rec['image'])}</h2>")
    parts.append(f'<p class="meta">line {item.index + 1} &middot; {esc(qtype)}'
                 + (f" &middot; turn {esc(rec['turn'])}" if "turn" in rec else "") + "</p>")
    parts.append(f'<p class="verdict {item.status}">{verdict}: {esc(item.detail)}</p>')
    for note in item.notes:
        parts.append(f'<p class="note">{esc(note)}</p>')
    parts.append('<table class="qa"><tbody>'
                 f'<tr><th>question</th><td>{esc(rec.get("question", ""))}</td></tr>'
                 f'<tr><th>answer</th><td class="{"error" if item.status == WRONG else ""}">{esc(rec["answer"])}</td></tr>'
                 f'<tr><th>reference</th><td>{esc(rec["reference"])}</td></tr></tbody></table>')
    parts.append("</div></article>")
    return "\n".join(parts)


def render_filters(type_counts: Counter) -> str:
    options = "".join(f'<option value="{esc(t)}">{esc(t)} ({n})</option>' for t, n in sorted(type_counts.items()))
    return ('<div class="filters"><label>question type <select id="type-filter"><option value="">all</option>'
            f'{options}</select></label><label><input type="checkbox" id="wrong-filter"> wrong only</label>'
            '<span id="filter-count"></span></div>')


def render_page(*, title: str, summary: str, page: int, n_pages: int, body: str, filters: str, token: str,
                problems: str = "") -> str:
    nav = render_nav(page, n_pages, token)
    legend = " ".join(f'<span class="item"><span class="swatch" style="background:rgb{c}"></span>{role}</span>'
                      for role, c in COLOURS.items())
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}{f" (page {page} of {n_pages})" if n_pages > 1 else ""}</title>
<style>{CSS}{PAGE_CSS}</style>
</head>
<body>
<header>
<h1>{esc(title)}</h1>
<p class="summary">{esc(summary)}</p>
{nav}
<div class="legend">{legend}</div>
{filters}
</header>
{problems}
<main>
{body or "<p>No predictions.</p>"}
</main>
{nav}
<footer id="load-status">images not counted (scripts are off)</footer>
{LOAD_SCRIPT}
{FILTER_SCRIPT}
</body>
</html>
"""


def summary_line(items: list[Item], shown: list[Item], n_drawn: int, n_missing: int) -> str:
    counts = Counter(it.status for it in items)
    scored = counts[WRONG] + counts[RIGHT]
    share = f" ({counts[RIGHT] / scored:.1%} right)" if scored else ""
    return (f"{plural(len(items), 'answer')}: {counts[WRONG]} wrong, {counts[RIGHT]} right{share}, "
            f"{plural(counts[DESCRIPTION], 'description')}; {len(shown)} shown, {n_drawn} drawn, "
            f"{n_missing} without their image")


# ----------------------------------------------------------------------------- main

@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    predictions = require_path(args.predictions, "--predictions", "file")
    image_dir = require_path(args.image_dir, "--image_dir", "dir")
    if is_llava_file(predictions):
        raise InputError(f"--predictions: {predictions} is a LLaVA conversation file (the questions), not "
                         "predictions; predict.py writes them: python vlm_inference/predict.py --model_path MODEL "
                         f"--data {predictions} --image_dir IMAGES --output_file predictions.jsonl")
    # Drawn copies inside the images folder would be taken for images next time.
    output_dir = require_output_dir(args.output_dir, "--output_dir", {"--image_dir": args.image_dir})
    items = read_predictions(predictions, args.max_items)
    check_images_found(items, image_dir, predictions)
    frame = answer_frame(items, args.family)
    shown = gallery_order(items, args.wrong_only)
    n_pages = max(1, math.ceil(len(shown) / args.per_page))
    title = f"Prediction review: {predictions.name}"
    token = secrets.token_hex(4)
    settings = (args.max_side, args.min_side, args.jpeg_quality)
    output_dir.mkdir(parents=True, exist_ok=True)
    with single_writer(output_dir / INDEX_NAME, "--output_dir"):
        cache: dict = {}
        for it in shown:
            draw_item(it, image_dir, output_dir, frame, settings, cache)
            if it.problem:
                print(f"warning: {it.record['image']}: {it.problem}", file=sys.stderr)
        n_drawn = sum(1 for it in shown if it.drawn)
        summary = summary_line(items, shown, n_drawn, len(shown) - n_drawn)
        filters = render_filters(Counter(question_type(it.record) for it in shown))
        pages = {}
        for number in range(1, n_pages + 1):
            body = "\n".join(render_item(it) for it in shown[(number - 1) * args.per_page:number * args.per_page])
            pages[page_name(number, token)] = render_page(title=title, summary=summary, page=number, n_pages=n_pages,
                                                          body=body, filters=filters, token=token)
        for name, text in pages.items():
            if name != INDEX_NAME:
                write_text_atomic(output_dir / name, text)
        if n_pages > 1:
            write_text_atomic(output_dir / pages_index_name(token),
                              render_pages_index(title, n_pages, len(shown), args.per_page, token))
        # index.html last: until it is replaced the previous gallery stays whole; after it, what only the
        # previous gallery used is removed.
        write_text_atomic(output_dir / INDEX_NAME, pages[INDEX_NAME])
        keep = set(pages) | ({pages_index_name(token)} if n_pages > 1 else set())
        remove_stale(output_dir, keep, {Path(it.drawn).name for it in shown if it.drawn})
    print(f"visualize_predictions: {summary}; gallery: {output_dir / INDEX_NAME}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
