"""Draw the annotations over their images and write an HTML gallery to review them.

    python vlm_annotation/visualize.py --annotation_file annotations.json \
        --images_dir data/images --output_dir review/

Every image record (of ``annotations.json`` or of a split file: same schema) is drawn with its
fused boxes, each labelled ``id:label score [sources]`` in a colour per class, and saved as a
JPEG under ``review/images/``. ``review/index.html`` (plus ``page_2.html``... past ``--per_page``
entries) shows beside each image its caption, the object table (id, label, score, sources, box,
description) and the Q&A pairs. Links are relative, so the folder can be moved or zipped. An
image that cannot be opened is listed in the page and the summary, with the reason, not drawn;
the files the annotator skipped are listed with their reasons too.

Any size: the annotation file is read twice a record at a time (the class colours need every
label first) and each page is written when it is full, so memory holds one page. Each page
links to the pages near it, the first and the last, and ``pages.html`` lists every page, so the
HTML grows linearly with the number of images.

Text is drawn with Pillow's built-in font (``ImageFont.load_default``): nothing is fetched.
"""
from __future__ import annotations

import argparse
import html
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from vlm_core.images import ImageLoadError, load_image
from vlm_core.io_utils import InputError, atomic_output, write_text_atomic
from vlm_core.runtime import report_input_errors, require_output_dir, require_path
from vlm_core.schema import AnnotationReader

IMAGES_SUBDIR = "images"
INDEX_NAME = "index.html"
PAGES_NAME = "pages.html"
NAV_WINDOW = 5  # a page links to the pages this far before and after it
# 20 colours chosen to be told apart (Sasha Trubetskoy's list); classes get them in sorted
# order, so a gallery never shows two classes in the same colour until it has more than 20.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Draw annotated boxes over the images and write an HTML review gallery.")
    p.add_argument("--annotation_file", required=True,
                   help="annotations.json or a split file (train/val/test.json)")
    p.add_argument("--images_dir", required=True,
                   help="folder the 'image' paths of the annotation file are relative to")
    p.add_argument("--output_dir", default="review",
                   help="where index.html and the drawn images go (default: review)")
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


def text_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (ITU-R BT.601 luma)."""
    r, g, b = rgb
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def downscale_factor(width: int, height: int, max_side: int) -> float:
    if max_side <= 0 or max(width, height) <= max_side:
        return 1.0
    return max_side / max(width, height)


def upscale_factor(width: int, height: int, min_side: int) -> float:
    """A whole factor that brings a small image's longer side to ``min_side`` or more (1 for larger ones)."""
    longer = max(width, height)
    if min_side <= 0 or longer >= min_side:
        return 1.0
    return float(-(-min_side // longer))


def auto_line_width(width: int, height: int) -> int:
    return max(2, round(max(width, height) / 320))


def _font(image_w: int, image_h: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = min(32, max(11, round(max(image_w, image_h) / 55)))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the fixed-size bitmap font
        return ImageFont.load_default()


def object_caption(obj: dict) -> str:
    """The text drawn next to a box: ``3:glass 0.91 [yolo+rtdetr]``."""
    sources = "+".join(obj.get("sources") or [])
    text = f"{obj['id']}:{obj['label']} {obj['score']:.2f}"
    return f"{text} [{sources}]" if sources else text


def draw_objects(image: Image.Image, objects: list[dict], scale_x: float, scale_y: float,
                 colours: dict, line_width: int = 0) -> Image.Image:
    """Return a copy of ``image`` with every object's box and caption drawn on it.

    ``scale_x``/``scale_y`` map the annotation's pixel frame onto ``image``.
    """
    out = image.copy()
    w, h = out.size
    lw = line_width or auto_line_width(w, h)
    draw = ImageDraw.Draw(out)
    font = _font(w, h)
    placed = []
    for obj in objects:
        x1, y1, x2, y2 = obj["bbox"]
        box = [max(0.0, x1 * scale_x), max(0.0, y1 * scale_y),
               min(w - 1.0, x2 * scale_x), min(h - 1.0, y2 * scale_y)]
        box[2], box[3] = max(box[2], box[0] + 1), max(box[3], box[1] + 1)
        draw.rectangle(box, outline=colours[obj["label"]], width=lw)
        placed.append((obj, box))
    # Captions after all outlines, so no outline crosses a caption.
    pad = max(1, lw // 2 + 1)
    for obj, (x1, y1, x2, y2) in placed:
        colour = colours[obj["label"]]
        text = object_caption(obj)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        tx = min(max(0.0, x1), max(0.0, w - tw))
        ty = y1 - th if y1 - th >= 0 else min(y1 + lw, max(0.0, h - th))
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=colour)
        draw.text((tx + pad - left, ty + pad - top), text, fill=text_colour(colour), font=font)
    return out


# ----------------------------------------------------------------------------- files

def drawn_name(index: int, image_path: str) -> str:
    """A flat, URL-safe file name for the drawn copy of ``images[index]``.

    The record index makes it unique (``a.jpg`` and ``a.png`` may both be listed); the rest
    of the name is only there for a human browsing the folder.
    """
    stem = os.path.splitext(image_path.replace("\\", "/"))[0]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__"))
    return f"{index:05d}_{safe[-100:]}.jpg"


def page_name(page: int) -> str:
    return INDEX_NAME if page == 1 else f"page_{page}.html"


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


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _url(rel_path: str) -> str:
    return _e(quote(rel_path))


def _fmt_box(bbox) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in bbox) + "]"


def _swatch(colour) -> str:
    return f'<span class="swatch" style="background:rgb{tuple(colour)}"></span>'


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.05em;margin:0 0 .3em;word-break:break-all}
.summary{margin:.2em 0 .8em} nav a,nav span{margin-right:.6em}
.legend span.item{display:inline-block;margin:0 1em .3em 0}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #555;vertical-align:middle;margin-right:.3em}
.entry{display:flex;flex-wrap:wrap;gap:1.2em;background:#fff;border:1px solid #ddd;border-radius:6px;padding:1em;margin:1em 0}
.picture{flex:0 1 auto;max-width:min(100%,720px)} .picture img{max-width:100%;height:auto;display:block}
.picture.missing{background:#fee;border:1px dashed #c00;padding:1em;color:#900;min-width:240px}
.details{flex:1 1 380px;min-width:300px} .meta,.note{color:#666;font-size:.9em} .note{color:#a60}
.caption{font-style:italic;margin:.4em 0 .8em}
table{border-collapse:collapse;margin:.3em 0 1em;font-size:.9em;width:100%}
th,td{border:1px solid #ddd;padding:.25em .45em;text-align:left;vertical-align:top}
th{background:#f0f0f0} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
#problems{background:#fff8e6;border:1px solid #e0c060;border-radius:6px;padding:.6em 1em}
#load-status{color:#666;font-size:.9em;margin-top:2em}
#load-status.failed{color:#c00;font-weight:bold}
"""

# Counts the images the browser really decoded, for a human (a warning when the folder lost its
# images/ subfolder) and for the headless-browser test, which reads the data attributes.
LOAD_SCRIPT = """
<script>
(function () {
  function report() {
    var imgs = Array.prototype.slice.call(document.images);
    var loaded = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
    var status = document.getElementById("load-status");
    status.setAttribute("data-images-loaded", String(loaded));
    status.setAttribute("data-images-total", String(imgs.length));
    status.textContent = loaded + " of " + imgs.length + " images loaded";
    if (loaded < imgs.length) { status.className = "failed"; }
  }
  if (document.readyState === "complete") { report(); } else { window.addEventListener("load", report); }
})();
</script>
"""


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
                 f' &middot; {len(objects)} object{"" if len(objects) == 1 else "s"}'
                 f' &middot; {len(qas)} Q&amp;A</p>')
    for note in entry.notes:
        parts.append(f'<p class="note">{_e(note)}</p>')
    caption = rec.get("caption", "")
    parts.append(f'<p class="caption">{_e(caption) if caption else "(no caption)"}</p>')
    if objects:
        parts.append('<table class="objects"><thead><tr><th>id</th><th>label</th><th>score</th>'
                     '<th>sources</th><th>box [x1, y1, x2, y2] px</th><th>description</th>'
                     '</tr></thead><tbody>')
        for obj in objects:
            parts.append(
                f'<tr><td class="num">{obj["id"]}</td>'
                f'<td>{_swatch(colours[obj["label"]])}{_e(obj["label"])}</td>'
                f'<td class="num">{obj["score"]:.3f}</td>'
                f'<td>{_e(", ".join(obj.get("sources") or []))}</td>'
                f'<td class="num">{_fmt_box(obj["bbox"])}</td>'
                f'<td>{_e(obj.get("description", ""))}</td></tr>')
        parts.append("</tbody></table>")
    else:
        parts.append('<p class="meta">no objects</p>')
    if qas:
        parts.append('<table class="qa"><thead><tr><th>type</th><th>question</th><th>answer</th>'
                     '<th>objects</th></tr></thead><tbody>')
        for qa in qas:
            ids = ", ".join(str(i) for i in qa.get("object_ids", []))
            parts.append(f'<tr><td>{_e(qa["type"])}</td><td>{_e(qa["question"])}</td>'
                         f'<td>{_e(qa["answer"])}</td><td class="num">{ids}</td></tr>')
        parts.append("</tbody></table>")
    else:
        parts.append('<p class="meta">no Q&amp;A pairs</p>')
    parts.append("</div></article>")
    return "\n".join(parts)


def render_problems(skipped: list[dict], missing: list[Entry], per_page: int) -> str:
    if not skipped and not missing:
        return ""
    rows = []
    for e in missing:
        where = page_name(e.index // per_page + 1)
        href = f"#entry-{e.index}" if where == INDEX_NAME else f"{_url(where)}#entry-{e.index}"
        rows.append(f'<tr><td><a href="{href}">{_e(e.record["image"])}</a></td>'
                    f'<td>cannot be opened now</td><td>{_e(e.problem)}</td></tr>')
    for s in skipped:
        rows.append(f'<tr><td>{_e(s["image"])}</td><td>skipped by the annotator</td>'
                    f'<td>{_e(s["reason"])}</td></tr>')
    return ('<section id="problems"><h2>Files not shown</h2><table><thead><tr><th>file</th>'
            '<th>what</th><th>reason</th></tr></thead><tbody>\n' + "\n".join(rows)
            + "\n</tbody></table></section>")


def page_numbers(page: int, n_pages: int, window: int = NAV_WINDOW) -> list[int | None]:
    """The pages a page links to: the first, ``window`` either side of it, the last; None for a gap."""
    shown = sorted({1, n_pages, *range(max(1, page - window), min(n_pages, page + window) + 1)})
    out: list[int | None] = []
    for p in shown:
        if out and p - out[-1] > 1:
            out.append(None)
        out.append(p)
    return out


def render_nav(page: int, n_pages: int) -> str:
    if n_pages <= 1:
        return ""
    links = [f"<span>page {page} of {n_pages}:</span>"]
    for p in page_numbers(page, n_pages):
        if p is None:
            links.append("<span>&hellip;</span>")
        else:
            links.append(f"<span><b>{p}</b></span>" if p == page else f'<a href="{_url(page_name(p))}">{p}</a>')
    links.append(f'<a href="{PAGES_NAME}">all pages</a>')
    return "<nav>" + "".join(links) + "</nav>"


def render_pages_index(title: str, n_pages: int, n_entries: int, per_page: int) -> str:
    rows = "\n".join(f'<li><a href="{_url(page_name(p))}">page {p}</a>: images[{(p - 1) * per_page}] to '
                     f'images[{min(n_entries, p * per_page) - 1}]</li>' for p in range(1, n_pages + 1))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{_e(title)}: all pages</title>
<style>{CSS}</style>
</head>
<body>
<h1>{_e(title)}: all {n_pages} pages</h1>
<ol>
{rows}
</ol>
</body>
</html>
"""


def render_page(*, title: str, summary: str, page: int, n_pages: int, entries: list[Entry],
                colours: dict, problems_html: str) -> str:
    nav = render_nav(page, n_pages)
    legend = " ".join(f'<span class="item">{_swatch(c)}{_e(label)}</span>'
                      for label, c in colours.items())
    if page == 1:
        problems = problems_html
    elif problems_html:
        problems = f'<p><a href="{INDEX_NAME}#problems">Files not shown</a> are listed on page 1.</p>'
    else:
        problems = ""
    body = "\n".join(render_entry(e, colours) for e in entries) or "<p>No image records.</p>"
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
    """Open, draw and save one image; on an unreadable file set ``entry.problem`` instead."""
    rec = entry.record
    try:
        image = load_image(images_dir / rec["image"])
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
    drawn = draw_objects(image, rec.get("objects", []), sx, sy, colours, line_width)
    rel = f"{IMAGES_SUBDIR}/{drawn_name(entry.index, rec['image'])}"
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


def survey(annotation_file: Path, max_images: int | None) -> _Survey:
    """Validate every record once and gather the class labels and counts (one record in memory)."""
    reader = AnnotationReader(annotation_file)
    labels: set = set()
    n_objects = n_qa = 0
    for i, rec in enumerate(reader):
        labels.update(o["label"] for o in rec["objects"])
        if max_images is None or i < max_images:
            n_objects += len(rec["objects"])
            n_qa += len(rec.get("qa", []))
    n_shown = reader.count if max_images is None else min(reader.count, max_images)
    return _Survey(labels, reader.count, n_shown, n_objects, n_qa, reader.skipped)


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    annotation_file = require_path(args.annotation_file, "--annotation_file", "file")
    images_dir = require_path(args.images_dir, "--images_dir", "dir")
    check_args(args)
    info = survey(annotation_file, args.max_images)  # AnnotationError names file and field
    output_dir = Path(args.output_dir)
    colours = class_colours(info.labels)
    n_pages = max(1, math.ceil(info.n_shown / args.per_page))
    title = f"Annotation review: {annotation_file.name}"
    limited = f" (first {info.n_shown} of {info.n_records})" if info.n_shown < info.n_records else ""
    known = (f"{info.n_shown} image records{limited}, {info.n_objects} objects, {info.n_qa} Q&A pairs; "
             f"{len(info.skipped)} skipped by the annotator; drawn and missing: see {INDEX_NAME}")

    first_page: list[Entry] = []
    missing: list[Entry] = []  # only what the problems table shows, not the records
    page: list[Entry] = []
    n_drawn = 0
    progress = tqdm(total=info.n_shown, desc="drawing", unit="img")
    for index, rec in enumerate(AnnotationReader(annotation_file, validate=False)):
        if index >= info.n_shown:
            break
        entry = Entry(index, rec)
        draw_entry(entry, images_dir, output_dir, colours, args.max_side, args.line_width, args.jpeg_quality,
                   args.min_side)
        progress.update()
        if entry.problem:
            tqdm.write(f"warning: {rec['image']}: {entry.problem}", file=sys.stderr)
            missing.append(Entry(index, {"image": rec["image"]}, problem=entry.problem))
        else:
            n_drawn += 1
        page.append(entry)
        if len(page) == args.per_page or index == info.n_shown - 1:
            number = index // args.per_page + 1
            if number == 1:
                first_page = page  # written last, with the final summary and the problems
            else:
                write_text_atomic(output_dir / page_name(number), render_page(
                    title=title, summary=known, page=number, n_pages=n_pages, entries=page,
                    colours=colours, problems_html="(page 1)" if missing or info.skipped else ""))
            page = []
    progress.close()

    summary = (f"{n_drawn} images drawn{limited}, {info.n_objects} objects, {info.n_qa} Q&A pairs; "
               f"{len(missing)} missing or unreadable; {len(info.skipped)} skipped by the annotator")
    if n_pages > 1:
        write_text_atomic(output_dir / PAGES_NAME, render_pages_index(title, n_pages, info.n_shown, args.per_page))
    # index.html last: until it is replaced, the previous gallery's first page stays whole.
    write_text_atomic(output_dir / INDEX_NAME, render_page(
        title=title, summary=summary, page=1, n_pages=n_pages, entries=first_page,
        colours=colours, problems_html=render_problems(info.skipped, missing, args.per_page)))
    index = output_dir / INDEX_NAME
    print(f"visualize: {summary}; gallery: {index}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
