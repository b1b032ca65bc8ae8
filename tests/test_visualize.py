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


def _drawn(out: Path, stem: str) -> Path:
    """The drawing of a record: ``00000_a`` -> ``images/00000_a.<digest of what it shows>.jpg``."""
    (path,) = (out / "images").glob(f"{stem}.*.jpg")
    return path


def _pages(out: Path) -> dict[int, Path]:
    """The gallery's pages by number, found through the links of index.html (page 2 on: named by the render)."""
    index = (out / "index.html").read_text(encoding="utf-8")
    found = {1: out / "index.html"}
    for name in set(re.findall(r'href="(page_(\d+)\.[0-9a-f]{8}\.html)"', index)):
        found[int(name[1])] = out / name[0]
    return found


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
    assert "visualize: 2 images drawn, 3 objects, 4 Q&A pairs; " in stdout, stdout
    assert "1 skipped by the annotator" in stdout and str(out / "index.html") in stdout

    drawn_a = _drawn(out, "00000_a")
    drawn_b = _drawn(out, "00001_sub__b")
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
    assert f"images/{drawn_a.name}" in links and f"images/{drawn_b.name}" in links
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
    assert "2 images drawn (first 2 of 3), 2 objects, 1 Q&A pair; " in capsys.readouterr().out
    pages = _pages(out)
    assert sorted(pages) == [1, 2] and pages[2].is_file()
    assert sorted(p.name for p in out.glob("page_*.html")) == [pages[2].name]
    assert not list((out / "images").glob("00002_*"))
    big = np.asarray(Image.open(_drawn(out, "00000_big")).convert("RGB"), dtype=int)
    assert big.shape == (200, 400, 3)
    # Box [400, 200, 800, 600] lands at [100, 50, 200, 150] after the 1/4 downscale.
    assert np.abs(big[100, 101] - GREY).max() > 60 and np.abs(big[100, 120] - GREY).max() < 12
    index = (out / "index.html").read_text(encoding="utf-8")
    page2 = pages[2].read_text(encoding="utf-8")
    assert 'data-image="big.jpg"' in index and 'data-image="sub/b.png"' not in index
    assert 'data-image="sub/b.png"' in page2 and f'href="{pages[2].name}"' in index
    assert 'href="index.html"' in page2 and "no Q&amp;A pairs" in index


def test_size_mismatch_is_noted_and_boxes_scaled(dataset, tmp_path):
    """A file replaced by a resized copy since annotation: boxes follow, and the page says so."""
    images = dataset["images"]
    Image.new("RGB", (100, 75), GREY).save(images / "a.jpg", quality=95)  # half of 200x150
    out = tmp_path / "review"
    assert _run(dataset, out, "--line_width", "2", "--min_side", "0") == 0
    a = np.asarray(Image.open(_drawn(out, "00000_a")).convert("RGB"), dtype=int)
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
    (token,) = {m for m in re.findall(r'href="page_\d+\.([0-9a-f]{8})\.html"',
                                      (out / "index.html").read_text(encoding="utf-8"))}
    pages = {p: (out / visualize.page_name(p, token)).read_text(encoding="utf-8") for p in range(1, 15)}
    linked = {p: sorted({int(m) for m in re.findall(rf'href="page_(\d+)\.{token}\.html"', html)}
                        | ({1} if 'href="index.html"' in html else set())) for p, html in pages.items()}
    assert linked[1] == [2, 3, 4, 5, 6, 14]
    assert linked[8] == [1, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14]
    assert all(f'href="pages.{token}.html"' in html for html in pages.values())
    index = (out / f"pages.{token}.html").read_text(encoding="utf-8")
    assert [int(m) for m in re.findall(rf'href="page_(\d+)\.{token}\.html"', index)] == list(range(2, 15))
    assert 'href="index.html">page 1</a>: entries 1 to 1' in index
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


def test_a_wrong_images_folder_is_one_line_exit_2_before_anything_is_written(dataset, tmp_path, capsys):
    """Before: an empty gallery of 'image not available' entries, exit 0. Now: refused, nothing written."""
    wrong = tmp_path / "other_images"
    wrong.mkdir()
    Image.new("RGB", (10, 10)).save(wrong / "unrelated.jpg")
    out = tmp_path / "review"
    assert main(["--annotation_file", str(dataset["file"]), "--images_dir", str(wrong),
                 "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"--images_dir: {wrong}: none of the 3 images of {dataset['file']} is there (3 not found" in err
    assert not out.exists()
    # With --max_images only the shown records are looked for, and counted.
    assert main(["--annotation_file", str(dataset["file"]), "--images_dir", str(wrong),
                 "--output_dir", str(out), "--max_images", "2"]) == 2
    assert "none of the 2 images" in capsys.readouterr().err and not out.exists()
    assert main(["--annotation_file", str(dataset["file"]), "--images_dir", str(wrong),
                 "--output_dir", str(out), "--max_images", "1"]) == 2
    err = capsys.readouterr().err
    assert f"--images_dir: {wrong}: the one image of {dataset['file']}, " in err and " is not there; " in err
    assert "1 images" not in err and not out.exists()
    # One file of three present (the right folder, a file lost): the gallery is drawn and lists the others.
    assert _run(dataset, out) == 0 and (out / "index.html").is_file()


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


# ----------------------------------------------------------------------------- truth, disagreement, labels

def _truth_dataset(tmp_path: Path) -> dict:
    """Three images whose errors are known: a.jpg 3 (a false positive, a wrong label, a miss), b.png 0, c.jpg 1."""
    images = tmp_path / "imgs"
    (images / "sub").mkdir(parents=True)
    for name, size in (("a.jpg", (200, 150)), ("sub/b.png", (120, 160)), ("c.jpg", (100, 100))):
        Image.new("RGB", size, GREY).save(images / name)

    def obj(i, label, bbox, score, sources=("yolo", "rtdetr")):
        return {"id": i, "label": label, "bbox": bbox, "score": score, "sources": list(sources), "description": ""}

    data = {"images": [
        {"image": "a.jpg", "width": 200, "height": 150, "caption": "", "qa": [],
         "objects": [obj(0, "glass", [20, 30, 90, 120], 0.9), obj(1, "can", [110, 40, 190, 140], 0.5),
                     obj(2, "paper", [5, 5, 15, 15], 0.4)]},
        {"image": "c.jpg", "width": 100, "height": 100, "caption": "", "qa": [],
         "objects": [obj(0, "glass", [10, 10, 40, 40], 0.8)]},
        {"image": "sub/b.png", "width": 120, "height": 160, "caption": "", "qa": [],
         "objects": [obj(0, "paper", [10, 10, 60, 80], 0.7)]},
    ], "meta": {}}
    coco = {"categories": [{"id": 1, "name": "glass"}, {"id": 2, "name": "bottle"}, {"id": 3, "name": "paper"}],
            "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 150},
                       {"id": 2, "file_name": "sub/b.png", "width": 120, "height": 160},
                       {"id": 3, "file_name": "c.jpg", "width": 100, "height": 100}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [22, 32, 66, 86]},    # glass: found
                {"id": 2, "image_id": 1, "category_id": 2, "bbox": [112, 42, 76, 96]},   # bottle, called a can
                {"id": 3, "image_id": 1, "category_id": 3, "bbox": [150, 5, 45, 25]},    # paper: missed
                {"id": 4, "image_id": 2, "category_id": 3, "bbox": [10, 10, 50, 70]}]}   # paper: found
    return {"images": images, "file": _write_json(tmp_path / "ann.json", data),
            "coco": _write_json(tmp_path / "coco.json", coco)}


def test_ground_truth_beside_the_annotation_errors_only_worst_first(tmp_path, capsys):
    """Unknown flag --ground_truth (before); now the truth is drawn beside, errors marked and ordered."""
    ds = _truth_dataset(tmp_path)
    out = tmp_path / "review"
    argv = ["--annotations", str(ds["file"]), "--image_dir", str(ds["images"]), "--output_dir", str(out),
            "--ground_truth", str(ds["coco"]), "--min_side", "0"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "against the truth (3 of 3 images listed in it): 2 false positives, 1 wrong labels, 1 misses" in stdout
    page = (out / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'data-image="([^"]+)"', page) == ["a.jpg", "c.jpg", "sub/b.png"]  # the file's order
    assert "3 errors: 1 false positives, 1 wrong labels, 1 misses" in page
    assert "wrong label: the truth says bottle" in page and "false positive" in page
    assert "missed: paper [150.0, 5.0, 195.0, 30.0]" in page and "no errors against the 1 true object<" in page
    # The annotation (left) beside the truth (right), at the image's size each.
    assert Image.open(_drawn(out, "00000_a")).size[0] == 200 + visualize.PANEL_GAP + 200

    assert main(argv + ["--errors_only", "--worst_first"]) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'data-image="([^"]+)"', page) == ["a.jpg", "c.jpg"]  # 3 errors, then 1; b.png has none
    assert "2 with errors, most errors first" in capsys.readouterr().out
    # The re-render removed what only the previous gallery used.
    assert sorted(p.name.split(".")[0] for p in (out / "images").iterdir()) == ["00000_a", "00001_c"]


def test_compare_to_truth_matches_one_to_one_class_first():
    truth = [{"label": "can", "bbox": [0, 0, 10, 10]}, {"label": "glass", "bbox": [0, 0, 10, 10]}]
    objects = [{"id": 0, "label": "glass", "bbox": [0, 0, 10, 10], "score": 0.5},
               {"id": 1, "label": "glass", "bbox": [0, 0, 10, 9], "score": 0.9},
               {"id": 2, "label": "glass", "bbox": [0, 0, 10, 10], "score": 0.1}]
    verdict = visualize.compare_to_truth(objects, truth)
    # The surest glass takes the true glass; the next glass overlaps the can (wrong label); the last is extra.
    assert verdict.status == {1: "ok", 0: "wrong label", 2: "false positive"} and verdict.truth_label == {0: "can"}
    assert verdict.missed == [] and verdict.errors == 2


def test_without_truth_disagreement_orders_and_filters(tmp_path):
    ds = _truth_dataset(tmp_path)
    data = json.loads(ds["file"].read_text())
    a, c, b = data["images"]
    a["objects"][1]["sources"] = ["rtdetr"]                       # 1: one detector only
    c["objects"][0]["label_candidates"] = [{"label": "can", "score": 0.3}]
    c["objects"].append({"id": 1, "label": "paper", "bbox": [50, 50, 90, 90], "score": 0.6, "sources": ["yolo"],
                         "description": ""})                     # 2: a dispute and one detector only
    _write_json(ds["file"], data)
    out = tmp_path / "review"
    assert main(["--annotation_file", str(ds["file"]), "--images_dir", str(ds["images"]), "--output_dir", str(out),
                 "--errors_only", "--worst_first"]) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'data-image="([^"]+)"', page) == ["c.jpg", "a.jpg"]  # b.png: both detectors agree
    assert "the detectors disagree on 2 objects" in page and "<th>other labels</th>" in page and "can 0.30" in page


def test_box_placeholders_are_shown_as_the_objects_box(dataset, tmp_path):
    """<box:0> reached the page as the raw token (before); now as the object and its pixel box."""
    dataset["data"]["images"][0]["qa"].append(
        {"question": "Please provide a short description for this region: <box:1>", "answer": "a can <box:1>",
         "type": "region_description", "object_ids": [1]})
    _write_json(dataset["file"], dataset["data"])
    out = tmp_path / "review"
    assert _run(dataset, out) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "box:1" not in page
    assert page.count("object 1 [110.0, 40.0, 190.0, 140.0]") == 2


def test_labels_never_overlap_on_a_crowded_image(monkeypatch):
    """Labels were drawn over each other on crowded images (before); now every label has its own place."""
    from PIL import ImageDraw
    fills = []
    real = ImageDraw.ImageDraw.rectangle

    def spy(self, xy, fill=None, outline=None, width=1):
        if fill is not None:  # a label's background (box outlines have no fill)
            fills.append([float(v) for v in (xy[0], xy[1], xy[2], xy[3])] if len(xy) == 4 else
                         [float(xy[0][0]), float(xy[0][1]), float(xy[1][0]), float(xy[1][1])])
        return real(self, xy, fill, outline, width)

    monkeypatch.setattr(ImageDraw.ImageDraw, "rectangle", spy)
    rng = np.random.default_rng(0)
    objects = []
    for i in range(24):  # a pile of boxes around the centre of a small image
        x, y = rng.uniform(40, 120), rng.uniform(30, 80)
        objects.append({"id": i, "label": ["glass", "can", "paper"][i % 3], "bbox": [x, y, x + 40, y + 30],
                        "score": float(rng.uniform(0.3, 1.0)), "sources": ["yolo", "rtdetr"]})
    image = Image.new("RGB", (200, 150), GREY)
    drawn = visualize.draw_objects(image, objects, 1.0, 1.0, class_colours(["glass", "can", "paper"]))
    assert len(fills) == len(objects)
    for r in fills:  # inside the picture (which may have grown a strip for the labels)
        assert r[0] >= 0 and r[1] >= 0 and r[2] < drawn.width and r[3] < drawn.height
    for i, p in enumerate(fills):  # pixel rectangles (inclusive ends) never share a pixel
        for q in fills[i + 1:]:
            assert not (p[0] < q[2] + 1 and q[0] < p[2] + 1 and p[1] < q[3] + 1 and q[1] < p[3] + 1), (p, q)


def test_place_labels_uses_the_image_before_the_strip():
    rects, strip = visualize.place_labels([[10, 40, 50, 80], [12, 42, 52, 82]], [(30, 10), (30, 10)], 200, 150)
    assert strip == 0 and rects[0] == (10, 30, 40, 40)   # above its box
    assert rects[1] == (12, 42, 42, 52)                   # inside the top of its box: above is taken
    many, strip = visualize.place_labels([[0, 0, 10, 10]] * 5, [(100, 50)] * 5, 100, 100)
    assert strip == 150 and [r[1] for r in many] == [0, 50, 100, 150, 200]  # two on the image, three below
