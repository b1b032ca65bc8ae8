"""Draw the annotations over their images and write an HTML gallery to review them.

    python vlm_annotation/visualize.py --annotation_file annotations.json \
        --images_dir data/images --output_dir review/

    # against the truth: the true boxes beside the annotation, errors marked, the worst images only
    python vlm_annotation/visualize.py --annotation_file annotations.json --images_dir data/images \
        --ground_truth coco.json --errors_only --worst_first --output_dir review/

Every image record (of ``annotations.json`` or of a split file: same schema) is drawn with its
fused boxes, each labelled ``id:label score [sources]`` in a colour per class, and saved as a
JPEG under ``review/images/``. ``review/index.html`` (plus further pages past ``--per_page``
entries) shows beside each image its caption, the object table (id, label, score, sources, box,
other labels the detectors voted for, description) and the Q&A pairs, where a box placeholder
``<box:ID>`` is shown as the object and its pixel box. Links are relative, so the folder can be
moved or zipped. An image that cannot be opened is listed in the page and the summary, with the
reason, not drawn; the files the annotator skipped are listed with their reasons too. A wrong
``--images_dir`` (none of the shown records' images in it) stops with one line naming the folder and how
many images were not found, before anything is written.

Labels never hide each other: each label goes beside its box where no other label is (above, inside,
below, then the nearest free place), and when an image is too crowded for that, the rest are stacked
in a strip under the image, each joined to its box by a line.

With ``--ground_truth`` (COCO json, or an Ultralytics data.yaml) each picture is the annotation beside
the truth. An object matches the true object it overlaps most at IoU >= 0.5 (the label scoring's
IoU): of its class first, then of any class. An object matching none is a false positive (``FP``), one
matching a true object of another class has a wrong label (``WRONG``, the true class named), a true
object no object matches is a miss (``MISS``, drawn on the truth side). ``--errors_only`` shows only the
images with an error, ``--worst_first`` the images with the most errors first. Without a truth, the
same two flags use the detectors' disagreement instead: objects only one detector of several found,
or whose label the detectors disputed (``label_candidates``).

Any size: the annotation file is read twice a record at a time (the class colours and the order need
every record first) and each entry's HTML is parked in a temp file, so memory holds one record. Each
page links to the pages near it, the first and the last, and a page lists every page, so the HTML
grows linearly with the number of images.

A gallery is replaced whole: the drawings are named by what they show and the pages of a render by a
token of that render, all written before ``index.html``, which is replaced last. Until then the old
gallery stays whole (a run killed while re-rendering leaves it as it was); after it, the pages and
drawings the new gallery does not use, and temp files of killed runs, are removed. One run at a time
per folder (``index.html.lock``).

Text is drawn with Pillow's built-in font (``ImageFont.load_default``): nothing is fetched.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import secrets
import sys
import tempfile
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

# The verdicts are the label scoring's own matching, so the gallery and the confusion matrix agree.
from vlm_annotation.label_scoring import MATCH_IOU, Verdict, compare_to_truth  # noqa: F401 (MATCH_IOU re-exported)
from vlm_core.flags import ANNOTATION_FILE, IMAGES_DIR, flag_names
from vlm_core.gallery import (  # noqa: F401 (re-exported: the tests and older callers name them here)
    CSS,
    INDEX_NAME,
    LOAD_SCRIPT,
    NAV_WINDOW,
    auto_line_width,
    downscale_factor,
    page_name,
    page_numbers,
    pages_index_name,
    render_nav,
    render_pages_index,
    text_colour,
    upscale_factor,
)
from vlm_core.gallery import esc as _e
from vlm_core.gallery import font_for as _font
from vlm_core.gallery import url as _url
from vlm_core.images import ImageLoadError, load_image
from vlm_core.io_utils import InputError, atomic_output, write_text_atomic
from vlm_core.runtime import (
    plural,
    progress_bar,
    report_input_errors,
    require_output_dir,
    require_path,
    single_writer,
)
from vlm_core.schema import AnnotationReader

IMAGES_SUBDIR = "images"
# Bumped when drawings change for the same inputs, so a re-render never keeps a drawing of the old code.
DRAWING_VERSION = "2"
# 20 colours chosen to be told apart (Sasha Trubetskoy's list); classes get them in sorted
# order, so a gallery never shows two classes in the same colour until it has more than 20.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)
ERROR_COLOUR = (255, 0, 0)
PANEL_GAP = 8  # pixels between the annotation and the truth


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Draw annotated boxes over the images and write an HTML review gallery.")
    p.add_argument(*flag_names("--annotation_file", ANNOTATION_FILE), required=True,
                   help="annotations.json or a split file (train/val/test.json)")
    p.add_argument(*flag_names("--images_dir", IMAGES_DIR), required=True,
                   help="folder the 'image' paths of the annotation file are relative to")
    p.add_argument("--output_dir", default="review",
                   help="where index.html and the drawn images go (default: review)")
    p.add_argument("--ground_truth", default=None,
                   help="true boxes (COCO json, or an Ultralytics data.yaml): drawn beside the annotation, with "
                        "false positives, misses and wrong labels marked (match: IoU >= 0.5)")
    p.add_argument("--class_map", default=None,
                   help="JSON file mapping the ground truth's class names to the annotation's (as in "
                        "evaluate_annotations.py)")
    p.add_argument("--errors_only", action="store_true",
                   help="show only the images with an error (with --ground_truth), else those where the detectors "
                        "disagree (an object of one detector only, or with label_candidates)")
    p.add_argument("--worst_first", action="store_true",
                   help="order the images by their count of errors (or of disagreements), most first")
    p.add_argument("--max_images", type=int, default=None,
                   help="show only the first N image records (default: all)")
    p.add_argument("--max_side", type=int, default=1024,
                   help="downscale drawn images so their longer side is at most this many pixels; "
                        "0 keeps the original size (default: 1024)")
    p.add_argument("--min_side", type=int, default=384,
                   help="upscale drawn images whose longer side is shorter than this many pixels, so small "
                        "images stay readable under their labels; 0 keeps the original size (default: 384)")
    p.add_argument("--line_width", type=int, default=0,
                   help="box outline width in pixels of the drawn image; 0 picks one from the "
                        "image size (default: 0)")
    p.add_argument("--per_page", type=int, default=100,
                   help="image entries per HTML page, so a large set stays quick to open "
                        "(default: 100)")
    p.add_argument("--jpeg_quality", type=int, default=90,
                   help="JPEG quality of the drawn images, 1-95 (default: 90)")
    return p.parse_args(argv)


MAX_LINE_WIDTH = 50  # pixels; drawing time grows with the width


def check_args(args: argparse.Namespace) -> None:
    if args.max_images is not None and args.max_images < 1:
        raise InputError(f"--max_images must be at least 1, got {args.max_images}")
    if args.max_side < 0:
        raise InputError(f"--max_side must be 0 (keep size) or positive, got {args.max_side}")
    if args.min_side < 0 or (args.max_side and args.min_side > args.max_side):
        raise InputError(f"--min_side must be 0 (keep size) or between 1 and --max_side, got {args.min_side}")
    if not 0 <= args.line_width <= MAX_LINE_WIDTH:
        raise InputError(f"--line_width must be 0 (auto) or 1..{MAX_LINE_WIDTH}, got {args.line_width}")
    if args.per_page < 1:
        raise InputError(f"--per_page must be at least 1, got {args.per_page}")
    if not 1 <= args.jpeg_quality <= 95:
        raise InputError(f"--jpeg_quality must be in 1..95, got {args.jpeg_quality}")
    # Drawn copies inside the images folder would be annotated as new images next time.
    require_output_dir(args.output_dir, "--output_dir", {"--images_dir": args.images_dir})


# ----------------------------------------------------------------------------- drawing

def class_colours(labels) -> dict[str, tuple[int, int, int]]:
    """One colour per class label, assigned in sorted order (stable for a given label set)."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(sorted(set(labels)))}












def object_caption(obj: dict) -> str:
    """The text drawn next to a box: ``3:glass 0.91 [yolo+rtdetr]``."""
    sources = "+".join(obj.get("sources") or [])
    text = f"{obj['id']}:{obj['label']} {obj['score']:.2f}"
    return f"{text} [{sources}]" if sources else text


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(boxes: list, sizes: list[tuple[float, float]], width: float, height: float
                 ) -> tuple[list[tuple[float, float, float, float]], float]:
    """Where each label goes, so that no two overlap: ``[x1, y1, x2, y2]`` per label, and the height of
    the strip needed under the image (0 when every label found room on it).

    ``boxes[k]`` is the box (in the drawn image's pixels) ``sizes[k]`` (width, height) labels, in the
    order of importance: earlier labels get the better places. A label goes above its box, else inside its
    top, below it, inside its bottom (left-aligned, then right-aligned), else to the free place on the image
    nearest its box's top left; a label with no room at all goes to a strip under the image.
    """
    placed: list[tuple[float, float, float, float]] = []
    out: list = [None] * len(boxes)
    left_over = []

    def fits(r) -> bool:
        return r[0] >= 0 and r[1] >= 0 and r[2] <= width and r[3] <= height and \
            not any(_overlaps(r, q) for q in placed)

    for k, ((x1, y1, x2, y2), (tw, th)) in enumerate(zip(boxes, sizes)):
        if tw > width or th > height:
            left_over.append(k)
            continue
        lx = min(max(0.0, x1), width - tw)
        rx = min(max(0.0, x2 - tw), width - tw)
        spots = [(x, y) for x in (lx, rx) for y in (y1 - th, y1, y2, y2 - th)]
        rect = next((r for r in ((x, y, x + tw, y + th) for x, y in spots) if fits(r)), None)
        if rect is None:  # the nearest free place on a grid (half a label across, one down), nearest first
            xs = sorted({min(max(0.0, lx + i * tw / 2), width - tw) for i in range(-4, 5)} | {0.0, width - tw})
            ys = [min(j * th, height - th) for j in range(int((height - th) / th) + 2)] if th else [0.0]
            grid = sorted(((x, y) for x in xs for y in ys), key=lambda p: (p[0] - lx) ** 2 + (p[1] - y1) ** 2)
            rect = next((r for r in ((x, y, x + tw, y + th) for x, y in grid) if fits(r)), None)
        if rect is None:
            left_over.append(k)
            continue
        placed.append(rect)
        out[k] = rect
    # The strip: rows of labels left to right, under the image.
    x = y = row = 0.0
    for k in left_over:
        tw, th = sizes[k]
        if x > 0 and x + tw > width:
            x, y = 0.0, y + row
            row = 0.0
        out[k] = (x, height + y, x + tw, height + y + th)
        x, row = x + tw, max(row, th)
    return out, (y + row if left_over else 0.0)


def draw_objects(image: Image.Image, objects: list[dict], scale_x: float, scale_y: float,
                 colours: dict, line_width: int = 0, marks: dict | None = None,
                 errors: set | None = None) -> Image.Image:
    """Return a copy of ``image`` with every object's box and caption drawn on it.

    ``scale_x``/``scale_y`` map the annotation's pixel frame onto ``image``. ``marks``: text put before
    an object's caption, by id (``FP``, ``MISS``); ``errors``: ids whose caption is framed in red. The
    captions never overlap (:func:`place_labels`); the copy grows a strip at the bottom when the image
    has no room for them all.
    """
    marks, errors = marks or {}, errors or set()
    w, h = image.size
    lw = line_width or auto_line_width(w, h)
    font = _font(w, h)
    measure = ImageDraw.Draw(image)
    pad = max(1, lw // 2 + 1)
    boxes, texts, sizes = [], [], []
    for obj in objects:
        x1, y1, x2, y2 = obj["bbox"]
        box = [max(0.0, x1 * scale_x), max(0.0, y1 * scale_y),
               min(w - 1.0, x2 * scale_x), min(h - 1.0, y2 * scale_y)]
        box[2], box[3] = max(box[2], box[0] + 1), max(box[3], box[1] + 1)
        text = object_caption(obj) if "score" in obj else f"{obj['id']}:{obj['label']}"
        if obj["id"] in marks:
            text = f"{marks[obj['id']]} {text}"
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        boxes.append(box)
        texts.append((text, left, top))
        sizes.append((right - left + 2 * pad, bottom - top + 2 * pad))
    # Errors and the surer objects first: they get the places next to their boxes.
    order = sorted(range(len(objects)), key=lambda k: (objects[k]["id"] not in errors,
                                                      -objects[k].get("score", 1.0), k))
    spots, strip = place_labels([boxes[k] for k in order], [sizes[k] for k in order], w, h)
    rects = dict(zip(order, spots))
    out = Image.new("RGB", (w, h + math.ceil(strip)), (255, 255, 255)) if strip else image.copy()
    if strip:
        out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for obj, box in zip(objects, boxes):
        draw.rectangle(box, outline=colours[obj["label"]], width=lw)
    # Captions after all outlines, so no outline crosses a caption.
    for k, obj in enumerate(objects):
        colour = colours[obj["label"]]
        text, left, top = texts[k]
        x1, y1, x2, y2 = rects[k]
        if y1 >= h:  # in the strip: a line to its box
            draw.line([((x1 + x2) / 2, y1), ((boxes[k][0] + boxes[k][2]) / 2, boxes[k][3])], fill=colour, width=1)
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=colour,
                       outline=ERROR_COLOUR if obj["id"] in errors else None)
        draw.text((x1 + pad - left, y1 + pad - top), text, fill=text_colour(colour), font=font)
    return out


# ----------------------------------------------------------------------------- the truth

def disagreements(objects: list[dict], several_detectors: bool) -> int:
    """Objects the detectors disagree on: found by one detector of several, or with other labels voted for."""
    return sum(1 for o in objects
               if o.get("label_candidates") or (several_detectors and len(set(o.get("sources") or [])) == 1))


def truth_objects(rec: dict, entry: dict | None) -> list[dict] | None:
    """The true objects of a record, in its pixel frame (the truth may count another size), ids 0.."""
    if entry is None:
        return None
    sx, sy = rec["width"] / entry["width"], rec["height"] / entry["height"]
    return [{"id": k, "label": t["label"], "bbox": [t["bbox"][0] * sx, t["bbox"][1] * sy,
                                                    t["bbox"][2] * sx, t["bbox"][3] * sy]}
            for k, t in enumerate(entry["objects"])]


# ----------------------------------------------------------------------------- files

_DRAWN = re.compile(r"(?P<index>\d{5,})_.*\.(?P<digest>[0-9a-f]{16})\.jpg")
_PAGE = re.compile(r"(?:page_\d+|pages)(?:\.[0-9a-f]{8})?\.html")
_TEMP = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")  # io_utils.atomic_output's temp files


def drawn_name(index: int, image_path: str, digest: str = "") -> str:
    """A flat, URL-safe file name for the drawn copy of ``images[index]``.

    The record index makes it unique (``a.jpg`` and ``a.png`` may both be listed); the rest
    of the name is only there for a human browsing the folder. ``digest`` (16 hex digits) names what
    the drawing shows, so a re-render never overwrites a drawing the old gallery still shows.
    """
    stem = os.path.splitext(image_path.replace("\\", "/"))[0]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__"))
    return f"{index:05d}_{safe[-100:]}" + (f".{digest}" if digest else "") + ".jpg"






def drawing_digest(rec: dict, truth: list[dict] | None, colours: dict, image_path: Path, settings: tuple) -> str:
    """What a drawing shows: the record, its truth, their colours, the drawing flags and the image file."""
    try:
        st = image_path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = None
    labels = sorted({o["label"] for o in rec.get("objects", [])} | {t["label"] for t in truth or []})
    text = repr((DRAWING_VERSION, rec["image"], rec["width"], rec["height"], rec.get("objects", []), truth,
                 [(k, colours[k]) for k in labels], settings, stamp))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def remove_stale(output_dir: Path, keep_pages: set[str], keep_drawings: array) -> int:
    """Remove what the current gallery does not use: pages of other renders, drawings not shown (or of
    another file), temp files of killed runs. Run under the folder's lock, after ``index.html``.
    ``keep_drawings[i]``: the digest (as an int) of the drawing of ``images[i]`` shown now, 0 for none."""
    removed = 0
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
            elif not is_page:
                m = _DRAWN.fullmatch(name)
                if m:
                    i = int(m["index"])
                    stale = i >= len(keep_drawings) or keep_drawings[i] != int(m["digest"], 16)
                elif re.fullmatch(r"\d{5,}_.*\.jpg", name):  # an older version's name
                    stale = True
            if stale:
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


# ----------------------------------------------------------------------------- gallery

@dataclass
class Entry:
    """One image record as the gallery shows it."""
    index: int
    record: dict
    drawn: str | None = None          # path of the drawn JPEG, relative to output_dir
    size: tuple[int, int] | None = None  # size of the drawn JPEG
    problem: str | None = None        # why it could not be drawn
    notes: list[str] = field(default_factory=list)
    truth: list[dict] | None = None   # the true objects (in the record's pixels), when known
    verdict: Verdict | None = None    # how the objects compare with them
    disagreement: int = 0             # objects the detectors disagree on
    no_truth: bool = False            # a ground truth was given but does not list this image






def _fmt_box(bbox) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in bbox) + "]"


_ESCAPED_PLACEHOLDER = re.compile(r"&lt;box:(\d+)&gt;")


def qa_text(text: str, objects: dict[int, dict]) -> str:
    """Q&A text as HTML, each box placeholder ``<box:ID>`` shown as its object and pixel box."""
    def box(m: re.Match) -> str:
        oid = int(m.group(1))
        obj = objects.get(oid)
        where = f" {_fmt_box(obj['bbox'])}" if obj else ""
        return f'<span class="box" title="the box of object {oid}">object {oid}{where}</span>'
    return _ESCAPED_PLACEHOLDER.sub(box, _e(text))


def _swatch(colour) -> str:
    return f'<span class="swatch" style="background:rgb{tuple(colour)}"></span>'





def render_entry(entry: Entry, colours: dict) -> str:
    rec = entry.record
    image = rec["image"]
    parts = [f'<article class="entry" id="entry-{entry.index}" data-image="{_e(image)}">']
    if entry.drawn:
        w, h = entry.size
        parts.append(f'<div class="picture"><a href="{_url(entry.drawn)}">'
                     f'<img src="{_url(entry.drawn)}" width="{w}" height="{h}" '
                     f'alt="{_e(image)} with its boxes"></a></div>')
    else:
        parts.append(f'<div class="picture missing"><strong>image not available</strong><br>'
                     f'{_e(entry.problem)}</div>')
    objects, qas = rec.get("objects", []), rec.get("qa", [])
    parts.append('<div class="details">')
    parts.append(f"<h2>{_e(image)}</h2>")
    parts.append(f'<p class="meta">images[{entry.index}] &middot; {rec["width"]}&times;{rec["height"]} px'
                 f' &middot; {plural(len(objects), "object")}'
                 f' &middot; {len(qas)} Q&amp;A</p>')
    for note in entry.notes:
        parts.append(f'<p class="note">{_e(note)}</p>')
    if entry.verdict is not None:
        counts = entry.verdict.counts
        if entry.verdict.errors:
            parts.append(f'<p class="errors">{plural(entry.verdict.errors, "error")}: '
                         + ", ".join(f"{n} {k}" for k, n in counts.items()) + "</p>")
        else:
            parts.append(f'<p class="ok">no errors against the {plural(len(entry.truth), "true object")}</p>')
        parts.append('<p class="meta">left: the annotation; right: the truth</p>')
    elif entry.no_truth:
        parts.append('<p class="note">no ground truth for this image</p>')
    if entry.disagreement:
        parts.append(f'<p class="note">the detectors disagree on {plural(entry.disagreement, "object")}</p>')
    caption = rec.get("caption", "")
    parts.append(f'<p class="caption">{_e(caption) if caption else "(no caption)"}</p>')
    verdict = entry.verdict
    candidates = any(o.get("label_candidates") for o in objects)
    if objects:
        parts.append('<table class="objects"><thead><tr><th>id</th><th>label</th><th>score</th>'
                     '<th>sources</th><th>box [x1, y1, x2, y2] px</th>'
                     + ("<th>other labels</th>" if candidates else "")
                     + ("<th>truth</th>" if verdict else "") + '<th>description</th></tr></thead><tbody>')
        for obj in objects:
            row = (f'<tr><td class="num">{obj["id"]}</td>'
                   f'<td>{_swatch(colours[obj["label"]])}{_e(obj["label"])}</td>'
                   f'<td class="num">{obj["score"]:.3f}</td>'
                   f'<td>{_e(", ".join(obj.get("sources") or []))}</td>'
                   f'<td class="num">{_fmt_box(obj["bbox"])}</td>')
            if candidates:
                row += "<td>" + _e(", ".join(f"{c['label']} {c['score']:.2f}"
                                             for c in obj.get("label_candidates") or [])) + "</td>"
            if verdict:
                status = verdict.status[obj["id"]]
                if status == "wrong label":
                    status = f"wrong label: the truth says {verdict.truth_label[obj['id']]}"
                row += f'<td class="{"" if status == "ok" else "error"}">{_e(status)}</td>'
            parts.append(row + f'<td>{_e(obj.get("description", ""))}</td></tr>')
        parts.append("</tbody></table>")
    else:
        parts.append('<p class="meta">no objects</p>')
    if verdict and verdict.missed:
        parts.append('<p class="errors">missed: ' + "; ".join(
            f'{_e(entry.truth[k]["label"])} {_fmt_box(entry.truth[k]["bbox"])}' for k in verdict.missed) + "</p>")
    if qas:
        parts.append('<table class="qa"><thead><tr><th>type</th><th>question</th><th>answer</th>'
                     '<th>objects</th></tr></thead><tbody>')
        by_id = {o["id"]: o for o in objects}
        for qa in qas:
            ids = ", ".join(str(i) for i in qa.get("object_ids", []))
            parts.append(f'<tr><td>{_e(qa["type"])}</td><td>{qa_text(qa["question"], by_id)}</td>'
                         f'<td>{qa_text(qa["answer"], by_id)}</td><td class="num">{ids}</td></tr>')
        parts.append("</tbody></table>")
    else:
        parts.append('<p class="meta">no Q&amp;A pairs</p>')
    parts.append("</div></article>")
    return "\n".join(parts)


def render_problems(skipped: list[dict], missing: list[tuple[int, Entry]], per_page: int, token: str = "") -> str:
    """The files not shown; ``missing``: (position in the gallery, entry) of the records that cannot be opened."""
    if not skipped and not missing:
        return ""
    rows = []
    for position, e in missing:
        where = page_name(position // per_page + 1, token)
        href = f"#entry-{e.index}" if where == INDEX_NAME else f"{_url(where)}#entry-{e.index}"
        rows.append(f'<tr><td><a href="{href}">{_e(e.record["image"])}</a></td>'
                    f'<td>cannot be opened now</td><td>{_e(e.problem)}</td></tr>')
    for s in skipped:
        rows.append(f'<tr><td>{_e(s["image"])}</td><td>skipped by the annotator</td>'
                    f'<td>{_e(s["reason"])}</td></tr>')
    return ('<section id="problems"><h2>Files not shown</h2><table><thead><tr><th>file</th>'
            '<th>what</th><th>reason</th></tr></thead><tbody>\n' + "\n".join(rows)
            + "\n</tbody></table></section>")








def render_page(*, title: str, summary: str, page: int, n_pages: int, entries: list[Entry] | None = None,
                colours: dict, problems_html: str, token: str = "", body: str | None = None) -> str:
    """One page; ``body``: the entries' HTML already rendered (else rendered from ``entries``)."""
    nav = render_nav(page, n_pages, token)
    legend = " ".join(f'<span class="item">{_swatch(c)}{_e(label)}</span>'
                      for label, c in colours.items())
    if page == 1:
        problems = problems_html
    elif problems_html:
        problems = f'<p><a href="{INDEX_NAME}#problems">Files not shown</a> are listed on page 1.</p>'
    else:
        problems = ""
    if body is None:
        body = "\n".join(render_entry(e, colours) for e in entries or [])
    body = body or "<p>No image records.</p>"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}{f" (page {page} of {n_pages})" if n_pages > 1 else ""}</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>{_e(title)}</h1>
<p class="summary">{_e(summary)}</p>
{nav}
<div class="legend">{legend}</div>
</header>
{problems}
<main>
{body}
</main>
{nav}
<footer id="load-status">images not counted (scripts are off)</footer>
{LOAD_SCRIPT}
</body>
</html>
"""


# ----------------------------------------------------------------------------- main

def draw_entry(entry: Entry, images_dir: Path, output_dir: Path, colours: dict,
               max_side: int, line_width: int, jpeg_quality: int, min_side: int = 0) -> None:
    """Open, draw and save one image (beside its truth when ``entry.truth`` is known); on an unreadable
    file set ``entry.problem`` instead."""
    rec = entry.record
    path = images_dir / rec["image"]
    digest = drawing_digest(rec, entry.truth, colours, path, (max_side, min_side, line_width, jpeg_quality))
    try:
        image = load_image(path)
    except ImageLoadError as e:
        entry.problem = str(e)
        return
    w, h = image.size
    if (w, h) != (rec["width"], rec["height"]):
        entry.notes.append(f"the file is {w}x{h} now but was annotated at "
                           f"{rec['width']}x{rec['height']}; boxes are scaled to fit")
    scale = downscale_factor(w, h, max_side)
    if scale < 1.0:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                             Image.Resampling.LANCZOS)
    up = upscale_factor(w, h, min_side)
    if up > 1.0:  # whole factor, nearest pixels: the reviewer sees the image's own pixels, bigger
        image = image.resize((w * int(up), h * int(up)), Image.Resampling.NEAREST)
    sx, sy = image.width / rec["width"], image.height / rec["height"]
    objects = rec.get("objects", [])
    verdict = entry.verdict
    if verdict is None:
        drawn = draw_objects(image, objects, sx, sy, colours, line_width)
    else:
        marks = {i: "FP" if st == "false positive" else f"WRONG (truth: {verdict.truth_label[i]})"
                 for i, st in verdict.status.items() if st != "ok"}
        left = draw_objects(image, objects, sx, sy, colours, line_width, marks, set(marks))
        missed = set(verdict.missed)
        right = draw_objects(image, entry.truth, sx, sy, colours, line_width, {k: "MISS" for k in missed}, missed)
        drawn = Image.new("RGB", (left.width + PANEL_GAP + right.width, max(left.height, right.height)),
                          (255, 255, 255))
        drawn.paste(left, (0, 0))
        drawn.paste(right, (left.width + PANEL_GAP, 0))
    rel = f"{IMAGES_SUBDIR}/{drawn_name(entry.index, rec['image'], digest)}"
    with atomic_output(output_dir / rel) as tmp:
        drawn.save(tmp, format="JPEG", quality=jpeg_quality)
    entry.drawn, entry.size = rel, drawn.size


@dataclass
class _Survey:
    """What the pages need before the first one is written (pass 1 over the file)."""
    labels: set
    n_records: int
    n_shown: int
    n_objects: int
    n_qa: int
    skipped: list
    names: list[str]                               # the shown records' images, in file order
    score: array = field(default_factory=lambda: array("l"))  # errors (or disagreements) per shown record
    n_compared: int = 0                            # shown records the truth lists
    totals: dict = field(default_factory=dict)     # error counts over the shown records
    truth_names: dict = field(default_factory=dict)  # annotation image -> its name in the truth


def survey(annotation_file: Path, max_images: int | None, truth=None) -> _Survey:
    """Validate every record once and gather the class labels, counts and each shown record's errors
    against ``truth`` (a LabelSet), or its disagreements (one record in memory)."""
    reader = AnnotationReader(annotation_file)
    labels: set = set()
    sources: set = set()
    n_objects = n_qa = 0
    names: list[str] = []
    disputed, single = array("l"), array("l")  # per shown record: objects with label_candidates; + one detector
    for i, rec in enumerate(reader):
        labels.update(o["label"] for o in rec["objects"])
        if max_images is None or i < max_images:
            names.append(rec["image"])
            n_objects += len(rec["objects"])
            n_qa += len(rec.get("qa", []))
            sources.update(s for o in rec["objects"] for s in o.get("sources") or [])
            disputed.append(disagreements(rec["objects"], False))
            single.append(disagreements(rec["objects"], True))
    n_shown = reader.count if max_images is None else min(reader.count, max_images)
    info = _Survey(labels, reader.count, n_shown, n_objects, n_qa, reader.skipped, names)
    if truth is None:
        detectors = reader.meta.get("detectors")
        several = len(detectors) > 1 if isinstance(detectors, list) else len(sources) > 1
        info.score = single if several else disputed
        return info
    from vlm_annotation.label_scoring import match_images
    matched = match_images(names, sorted(truth.images))
    info.labels |= {o["label"] for name in matched.values() for o in truth.images[name]["objects"]}
    info.totals = {"false positives": 0, "wrong labels": 0, "misses": 0}
    for i, rec in enumerate(AnnotationReader(annotation_file, validate=False)):
        if i >= n_shown:
            break
        true = truth_objects(rec, truth.images.get(matched.get(rec["image"], "")))
        errors = 0
        if true is not None:
            verdict = compare_to_truth(rec["objects"], true)
            info.n_compared += 1
            for k, n in verdict.counts.items():
                info.totals[k] += n
            errors = verdict.errors
        info.score.append(errors)
    info.truth_names = matched
    return info


def check_images_found(names: list[str], images_dir: Path, annotation_file: Path) -> None:
    """Refuse a gallery none of whose images is in ``images_dir`` (a wrong folder), before anything is
    written: it would be a page of 'image not available' entries. Some files missing are listed in the
    gallery instead. Stops at the first file found, so a right folder costs one look-up."""
    if not names or any((images_dir / name).is_file() for name in names):
        return
    hint = "give the folder its 'image' paths are relative to"
    if len(names) == 1:
        raise InputError(f"--images_dir: {images_dir}: the one image of {annotation_file}, {names[0]}, is not there; "
                         + hint)
    raise InputError(f"--images_dir: {images_dir}: none of the {len(names)} images of {annotation_file} is there "
                     f"({len(names)} not found, e.g. {names[0]}); {hint}")


def gallery_order(score: array, errors_only: bool, worst_first: bool) -> list[int]:
    """The shown records' indices in the order of the gallery."""
    order = [i for i in range(len(score)) if not errors_only or score[i] > 0]
    if worst_first:
        order.sort(key=lambda i: -score[i])  # stable: equal counts keep the file's order
    return order


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    annotation_file = require_path(args.annotation_file, "--annotation_file", "file")
    images_dir = require_path(args.images_dir, "--images_dir", "dir")
    check_args(args)
    truth = None
    if args.ground_truth:
        from vlm_annotation.detectors import ClassMap
        from vlm_annotation.label_scoring import load_ground_truth
        require_path(args.ground_truth, "--ground_truth", "file")
        truth = load_ground_truth(args.ground_truth, images_dir, ClassMap.from_file(args.class_map))
    info = survey(annotation_file, args.max_images, truth)  # AnnotationError names file and field
    check_images_found(info.names, images_dir, annotation_file)
    output_dir = Path(args.output_dir)
    colours = class_colours(info.labels)
    order = gallery_order(info.score, args.errors_only, args.worst_first)
    position = array("l", [-1]) * info.n_shown
    for k, i in enumerate(order):
        position[i] = k
    n_entries = len(order)
    n_pages = max(1, math.ceil(n_entries / args.per_page))
    title = f"Annotation review: {annotation_file.name}"
    limited = f" (first {info.n_shown} of {info.n_records})" if info.n_shown < info.n_records else ""
    what = "errors" if truth is not None else "disagreements"
    chosen = (f"; {n_entries} with {what}" if args.errors_only else "") + \
        (f", most {what} first" if args.worst_first else "")
    against = ""
    if truth is not None:
        against = (f"; against the truth ({info.n_compared} of {plural(info.n_shown, 'image')} listed in it): "
                   + ", ".join(f"{n} {k}" for k, n in info.totals.items()))
    known = (f"{plural(info.n_shown, 'image record')}{limited}{chosen}, {plural(info.n_objects, 'object')}, "
             f"{plural(info.n_qa, 'Q&A pair')}"
             f"{against}; {len(info.skipped)} skipped by the annotator")

    token = secrets.token_hex(4)
    missing: list[tuple[int, Entry]] = []  # only what the problems table shows, not the records
    n_drawn = 0
    drawn_digest = array("Q", [0]) * info.n_shown  # the drawing each record shows now (remove_stale keeps those)
    matched = info.truth_names
    with single_writer(output_dir / INDEX_NAME, "--output_dir"), \
            tempfile.TemporaryFile(dir=output_dir, prefix=".entries.") as spool:
        starts, lengths = array("q", [0]) * n_entries, array("q", [0]) * n_entries  # each entry's HTML in spool
        progress = progress_bar(total=n_entries, desc="drawing", unit="img")
        for index, rec in enumerate(AnnotationReader(annotation_file, validate=False)):
            if index >= info.n_shown:
                break
            if position[index] < 0:
                continue
            entry = Entry(index, rec, disagreement=info.score[index] if truth is None else 0)
            if truth is not None:
                entry.truth = truth_objects(rec, truth.images.get(matched.get(rec["image"], "")))
                entry.no_truth = entry.truth is None
                if entry.truth is not None:
                    entry.verdict = compare_to_truth(rec["objects"], entry.truth)
            draw_entry(entry, images_dir, output_dir, colours, args.max_side, args.line_width, args.jpeg_quality,
                       args.min_side)
            progress.update()
            if entry.problem:
                progress.write(f"warning: {rec['image']}: {entry.problem}", file=sys.stderr)
                missing.append((position[index], Entry(index, {"image": rec["image"]}, problem=entry.problem)))
            else:
                n_drawn += 1
                drawn_digest[index] = int(_DRAWN.fullmatch(Path(entry.drawn).name)["digest"], 16)
            start = spool.tell()
            spool.write(render_entry(entry, colours).encode("utf-8", "surrogateescape") + b"\n")
            starts[position[index]], lengths[position[index]] = start, spool.tell() - start
        progress.close()
        missing.sort(key=lambda m: m[0])

        def page_body(page: int) -> str:
            parts = []
            for k in range((page - 1) * args.per_page, min(n_entries, page * args.per_page)):
                spool.seek(starts[k])
                parts.append(spool.read(lengths[k]).decode("utf-8", "surrogateescape"))
            return "".join(parts).rstrip("\n")

        problems = render_problems(info.skipped, missing, args.per_page, token)
        for number in range(2, n_pages + 1):
            write_text_atomic(output_dir / page_name(number, token), render_page(
                title=title, summary=known, page=number, n_pages=n_pages, colours=colours, token=token,
                problems_html="(page 1)" if problems else "", body=page_body(number)))
        summary = (f"{plural(n_drawn, 'image')} drawn{limited}{chosen}, {plural(info.n_objects, 'object')}, "
                   f"{plural(info.n_qa, 'Q&A pair')}"
                   f"{against}; {len(missing)} missing or unreadable; {len(info.skipped)} skipped by the annotator")
        if n_pages > 1:
            write_text_atomic(output_dir / pages_index_name(token),
                              render_pages_index(title, n_pages, n_entries, args.per_page, token))
        # index.html last: until it is replaced, the previous gallery stays whole (its pages and drawings
        # have other names); after it, what only the previous gallery used is removed.
        write_text_atomic(output_dir / INDEX_NAME, render_page(
            title=title, summary=summary, page=1, n_pages=n_pages, colours=colours, token=token,
            problems_html=problems, body=page_body(1)))
        keep = {INDEX_NAME, *(page_name(p, token) for p in range(2, n_pages + 1))}
        if n_pages > 1:
            keep.add(pages_index_name(token))
        remove_stale(output_dir, keep, drawn_digest)
    index = output_dir / INDEX_NAME
    print(f"visualize: {summary}; gallery: {index}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
