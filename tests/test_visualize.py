"""The review gallery: drawn images, the HTML page, bad input, and the page in a real browser."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from vlm_annotation import visualize
from vlm_annotation.visualize import (
    PALETTE,
    class_colours,
    downscale_factor,
    drawn_name,
    main,
    object_caption,
    text_colour,
    upscale_factor,
)

NASTY = '<b>& "quoted"'  # must reach the page as text, never as markup
GREY = (128, 128, 128)


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture()
def dataset(tmp_path):
    """Two real images (one in a subfolder, PNG), one record whose file is gone, one skipped file."""
    images = tmp_path / "imgs"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (200, 150), GREY).save(images / "a.jpg", quality=95)
    Image.new("RGB", (120, 160), (40, 90, 200)).save(images / "sub" / "b.png")
    data = {
        "images": [
            {"image": "a.jpg", "width": 200, "height": 150, "caption": f"caption {NASTY}",
             "objects": [
                 {"id": 0, "label": "glass", "bbox": [20, 30, 90, 120], "score": 0.91,
                  "sources": ["yolo", "rtdetr"], "description": f"a glass {NASTY}"},
                 {"id": 1, "label": "can", "bbox": [110, 40, 190, 140], "score": 0.5,
                  "sources": ["rtdetr"], "description": "a can on the right"}],
             "qa": [
                 {"question": "How many objects are there?", "answer": "2", "type": "count",
                  "object_ids": []},
                 {"question": f"What is here {NASTY}?", "answer": f"a glass {NASTY}",
                  "type": "region_label", "object_ids": [0]}]},
            {"image": "sub/b.png", "width": 120, "height": 160, "caption": "a blue picture",
             "objects": [{"id": 0, "label": "paper", "bbox": [10, 10, 60, 80], "score": 0.7,
                          "sources": ["yolo"], "description": ""}],
             "qa": [{"question": "Is there a paper?", "answer": "yes", "type": "exists",
                     "object_ids": [0]}]},
            {"image": "gone.jpg", "width": 64, "height": 64, "caption": "lost file",
             "objects": [], "qa": [{"question": "Is there a can?", "answer": "no",
                                    "type": "exists", "object_ids": []}]},
        ],
        "skipped": [{"image": "broken.jpg", "reason": "unreadable image: truncated <data>"}],
        "meta": {},
    }
    return {"images": images, "data": data, "file": _write_json(tmp_path / "ann.json", data)}


def _run(dataset, out: Path, *extra) -> int:
    return main(["--annotation_file", str(dataset["file"]), "--images_dir", str(dataset["images"]),
                 "--output_dir", str(out), *extra])


def _local_links(page: str) -> list[str]:
    return [unquote(unescape(u)) for u in re.findall(r'(?:src|href)="([^"#]+)', page)]


# ----------------------------------------------------------------------------- pure logic

def test_class_colours_are_sorted_and_distinct():
    colours = class_colours(["glass", "can", "glass", "paper"])
    assert colours == {"can": PALETTE[0], "glass": PALETTE[1], "paper": PALETTE[2]}
    many = class_colours(f"c{i:02d}" for i in range(21))
    assert len(set(many.values())) == 20 and many["c20"] == PALETTE[0]


def test_small_helpers():
    assert object_caption({"id": 3, "label": "can", "score": 0.912,
                           "sources": ["yolo", "rtdetr"]}) == "3:can 0.91 [yolo+rtdetr]"
    assert object_caption({"id": 0, "label": "can", "score": 1.0, "sources": []}) == "0:can 1.00"
    assert downscale_factor(2000, 1000, 1000) == 0.5
    assert downscale_factor(800, 600, 1000) == 1.0
    assert downscale_factor(4000, 3000, 0) == 1.0
    assert upscale_factor(128, 80, 384) == 3.0      # whole factors: 384 px
    assert upscale_factor(100, 40, 384) == 4.0      # 400 px, never below min_side
    assert upscale_factor(640, 480, 384) == 1.0
    assert upscale_factor(128, 80, 0) == 1.0
    assert drawn_name(7, "sub dir/x&y.png") == "00007_sub_dir__x_y.jpg"
    assert text_colour((255, 225, 25)) == (0, 0, 0) and text_colour((0, 0, 128)) == (255, 255, 255)


# ----------------------------------------------------------------------------- the gallery

def test_gallery_draws_images_and_lists_everything(dataset, tmp_path, capsys):
    out = tmp_path / "review"
    assert _run(dataset, out, "--min_side", "0") == 0  # drawn at the images' own size: pixels checked below
    stdout = capsys.readouterr().out
    assert "2 images drawn" in stdout and "1 missing or unreadable" in stdout
    assert "1 skipped by the annotator" in stdout and str(out / "index.html") in stdout

    drawn_a = out / "images" / "00000_a.jpg"
    drawn_b = out / "images" / "00001_sub__b.jpg"
    assert drawn_a.is_file() and drawn_b.is_file()
    assert sorted(p.name for p in (out / "images").iterdir()) == [drawn_a.name, drawn_b.name]

    # The outline of object 0 (glass) is drawn in its class colour; far from every box and
    # caption the picture is untouched (up to JPEG noise).
    a = np.asarray(Image.open(drawn_a).convert("RGB"), dtype=int)
    assert a.shape == (150, 200, 3)
    glass = np.array(class_colours(["glass", "can", "paper"])["glass"])
    assert np.abs(a[75, 20] - glass).max() < 30          # left edge of the glass box
    assert np.abs(a[75, 20] - GREY).max() > 30
    original = np.asarray(Image.open(dataset["images"] / "a.jpg").convert("RGB"), dtype=int)
    box_region = (slice(30, 121), slice(20, 91))
    assert np.abs(a[box_region] - original[box_region]).mean() > 3
    inside = a[60:110, 30:80]
    assert np.abs(inside - GREY).max() < 12               # box interior is not filled
    assert np.abs(a[145, 2] - GREY).max() < 12            # a corner outside every box
    b = np.asarray(Image.open(drawn_b).convert("RGB"), dtype=int)
    assert b.shape == (160, 120, 3) and np.abs(b[45, 10] - (40, 90, 200)).max() > 60

    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<b>&" not in page and NASTY not in page
    escaped = "&lt;b&gt;&amp; &quot;quoted&quot;"
    assert f"caption {escaped}" in page and f"a glass {escaped}" in page
    assert f"What is here {escaped}?" in page
    for i, image in enumerate(["a.jpg", "sub/b.png", "gone.jpg"]):
        assert f'id="entry-{i}" data-image="{image}"' in page
    for qa in [q for rec in dataset["data"]["images"] for q in rec["qa"]]:
        question = qa["question"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert question.replace('"', "&quot;") in page
    for column in ("id", "label", "score", "sources", "description", "type", "question", "answer"):
        assert f"<th>{column}</th>" in page
    assert "[20.0, 30.0, 90.0, 120.0]" in page and "yolo, rtdetr" in page
    # The missing file and the skipped file are both reported, with reasons.
    assert re.search(r'id="entry-2"[^>]*>\s*<div class="picture missing">', page)
    assert "not found:" in page and "gone.jpg" in page
    assert "broken.jpg" in page and "truncated &lt;data&gt;" in page
    # Every local link is relative and resolves inside the output folder.
    links = _local_links(page)
    assert "images/00000_a.jpg" in links and "images/00001_sub__b.jpg" in links
    for link in links:
        assert not link.startswith(("/", "file:", "http")) and (out / link).is_file()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # Readable as the umask allows, not private like a bare temp file.
    mask = os.umask(0)
    os.umask(mask)
    for path in (out / "index.html", drawn_a):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_split_file_pages_and_max_images(dataset, tmp_path, capsys):
    """A split file (a subset, no 'skipped') with --max_images, --per_page and a small --max_side."""
    images = dataset["images"]
    Image.new("RGB", (1600, 800), GREY).save(images / "big.jpg")
    split = {"images": [
        {"image": "big.jpg", "width": 1600, "height": 800, "caption": "big",
         "objects": [{"id": 0, "label": "bottle", "bbox": [400, 200, 800, 600], "score": 0.8,
                      "sources": ["yolo"]}], "qa": []},
        dataset["data"]["images"][1], dataset["data"]["images"][0]]}
    split_file = _write_json(tmp_path / "test.json", split)
    out = tmp_path / "review_split"
    assert main(["--annotation_file", str(split_file), "--images_dir", str(images),
                 "--output_dir", str(out), "--max_images", "2", "--per_page", "1",
                 "--max_side", "400", "--line_width", "3"]) == 0
    assert "2 images drawn (first 2 of 3)" in capsys.readouterr().out
    assert (out / "index.html").is_file() and (out / "page_2.html").is_file()
    assert not (out / "page_3.html").exists()
    assert not (out / "images" / "00002_a.jpg").exists()
    big = np.asarray(Image.open(out / "images" / "00000_big.jpg").convert("RGB"), dtype=int)
    assert big.shape == (200, 400, 3)
    # Box [400, 200, 800, 600] lands at [100, 50, 200, 150] after the 1/4 downscale.
    assert np.abs(big[100, 101] - GREY).max() > 60 and np.abs(big[100, 120] - GREY).max() < 12
    index = (out / "index.html").read_text(encoding="utf-8")
    page2 = (out / "page_2.html").read_text(encoding="utf-8")
    assert 'data-image="big.jpg"' in index and 'data-image="sub/b.png"' not in index
    assert 'data-image="sub/b.png"' in page2 and 'href="page_2.html"' in index
    assert 'href="index.html"' in page2 and "no Q&amp;A pairs" in index


def test_size_mismatch_is_noted_and_boxes_scaled(dataset, tmp_path):
    """A file replaced by a resized copy since annotation: boxes follow, and the page says so."""
    images = dataset["images"]
    Image.new("RGB", (100, 75), GREY).save(images / "a.jpg", quality=95)  # half of 200x150
    out = tmp_path / "review"
    assert _run(dataset, out, "--line_width", "2", "--min_side", "0") == 0
    a = np.asarray(Image.open(out / "images" / "00000_a.jpg").convert("RGB"), dtype=int)
    glass = np.array(class_colours(["glass", "can", "paper"])["glass"])
    assert np.abs(a[40, 10] - glass).max() < 30      # glass left edge x=20 -> 10
    assert "the file is 100x75 now but was annotated at 200x150" in (
        out / "index.html").read_text(encoding="utf-8")


def test_page_links_are_a_window_so_the_html_grows_linearly():
    assert visualize.page_numbers(1, 1) == [1]
    assert visualize.page_numbers(1, 20) == [1, 2, 3, 4, 5, 6, None, 20]
    assert visualize.page_numbers(10, 20) == [1, None, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, None, 20]
    assert visualize.page_numbers(19, 20) == [1, None, 14, 15, 16, 17, 18, 19, 20]
    assert visualize.page_numbers(3, 7) == [1, 2, 3, 4, 5, 6, 7]
    # Navigation bytes per page do not depend on the number of pages (up to the digits).
    sizes = [len(visualize.render_nav(500, n)) for n in (1000, 10_000, 100_000)]
    assert max(sizes) - min(sizes) <= 30 and sizes[0] < 1000


def test_gallery_of_many_pages_links_nearby_pages_and_an_index_of_all(dataset, tmp_path):
    images = dataset["images"]
    data = {"images": [dict(dataset["data"]["images"][1], image=f"p{i:02d}.png") for i in range(14)], "meta": {}}
    for i in range(14):
        shutil.copy(images / "sub" / "b.png", images / f"p{i:02d}.png")
    ann = _write_json(tmp_path / "many.json", data)
    out = tmp_path / "review"
    assert main(["--annotation_file", str(ann), "--images_dir", str(images), "--output_dir", str(out),
                 "--per_page", "1"]) == 0
    pages = {p: (out / visualize.page_name(p)).read_text(encoding="utf-8") for p in range(1, 15)}
    linked = {p: sorted({int(m) for m in re.findall(r'href="page_(\d+)\.html"', html)}
                        | ({1} if 'href="index.html"' in html else set())) for p, html in pages.items()}
    assert linked[1] == [2, 3, 4, 5, 6, 14]
    assert linked[8] == [1, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14]
    assert all('href="pages.html"' in html for html in pages.values())
    index = (out / "pages.html").read_text(encoding="utf-8")
    assert [int(m) for m in re.findall(r'href="page_(\d+)\.html"', index)] == list(range(2, 15))
    assert 'href="index.html">page 1</a>: images[0] to images[0]' in index
    assert "14 images drawn" in pages[1] and 'data-image="p07.png"' in pages[8]


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("breakage, where", [
    (lambda d: d["images"][0]["objects"][1].update(bbox=[110, 40, 260, 140]),
     "images[0].objects[1].bbox"),
    (lambda d: d["images"][1]["qa"][0].update(type="colour"), "images[1].qa[0].type"),
    (lambda d: d["images"][2].pop("width"), "images[2].width"),
])
def test_malformed_annotation_exits_2_and_writes_nothing(dataset, tmp_path, capsys, breakage, where):
    breakage(dataset["data"])
    _write_json(dataset["file"], dataset["data"])
    out = tmp_path / "review"
    assert _run(dataset, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(dataset["file"]) in err and where in err
    assert not out.exists()


@pytest.mark.parametrize("flags, needle", [
    (["--max_images", "0"], "--max_images"),
    (["--max_side", "-1"], "--max_side"),
    (["--per_page", "0"], "--per_page"),
])
def test_bad_flags_exit_2(dataset, tmp_path, capsys, flags, needle):
    out = tmp_path / "review"
    assert _run(dataset, out, *flags) == 2
    assert needle in capsys.readouterr().err and not out.exists()


def test_missing_inputs_exit_2(dataset, tmp_path, capsys):
    out = tmp_path / "review"
    assert main(["--annotation_file", str(tmp_path / "nope.json"), "--images_dir",
                 str(dataset["images"]), "--output_dir", str(out)]) == 2
    assert "--annotation_file" in capsys.readouterr().err
    assert main(["--annotation_file", str(dataset["file"]), "--images_dir",
                 str(tmp_path / "nodir"), "--output_dir", str(out)]) == 2
    assert "--images_dir" in capsys.readouterr().err
    (tmp_path / "ann_bad.json").write_text("{not json", encoding="utf-8")
    assert main(["--annotation_file", str(tmp_path / "ann_bad.json"), "--images_dir",
                 str(dataset["images"]), "--output_dir", str(out)]) == 2
    assert "ann_bad.json" in capsys.readouterr().err and not out.exists()


def test_runs_as_a_script(dataset, tmp_path):
    out = tmp_path / "review"
    script = Path(visualize.__file__)
    res = subprocess.run(
        [sys.executable, str(script), "--annotation_file", str(dataset["file"]),
         "--images_dir", str(dataset["images"]), "--output_dir", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "visualize: 2 images drawn" in res.stdout and (out / "index.html").is_file()


# ----------------------------------------------------------------------------- real browser

def _chromium() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _dump_dom(browser: str, page: Path, profile: Path) -> str:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()]
    env = dict(os.environ, HOME=str(profile))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_gallery_in_headless_chromium(dataset, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed: run `make browser`")
    out = tmp_path / "review"
    assert _run(dataset, out) == 0
    # The folder is moved before it is opened: the page must only use relative links.
    moved = tmp_path / "elsewhere" / "gallery"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    dom = _dump_dom(browser, moved / "index.html", tmp_path / "profile")
    status = re.search(r'<footer id="load-status"([^>]*)>([^<]*)</footer>', dom)
    assert status, dom[-3000:]
    attrs = dict(re.findall(r'(data-images-\w+)="(\d+)"', status.group(1)))
    assert attrs == {"data-images-loaded": "2", "data-images-total": "2"}, status.group(0)
    assert status.group(2) == "2 of 2 images loaded"
    for i, image in enumerate(["a.jpg", "sub/b.png", "gone.jpg"]):
        assert f'id="entry-{i}" data-image="{image}"' in dom
    # The browser parsed the nasty text as text: it is still escaped in the serialised DOM.
    assert "caption &lt;b&gt;&amp;" in dom and "<b>&amp;" not in dom
