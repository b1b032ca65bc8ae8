"""visualize_predictions.py: each answer judged as evaluate.py scores it, wrong ones first, the boxes drawn in
the model's frame, the type filter in a real browser, re-render safety and one-line errors."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.subprocesses import finish, wait_for
from vlm_core import families
from vlm_core.frame_check import frame_fields
from vlm_inference import visualize_predictions as vp

ROOT = Path(__file__).resolve().parents[1]
INJECT = ROOT / "tests" / "fault_inject.py"
SCRIPT = "vlm_inference/visualize_predictions.py"
GREY = (128, 128, 128)
NASTY = '<b>& "quoted"'  # must reach the page as text, never as markup
FRAME = families.frame_for_family("llava")  # LLaVA-1.5: 0..1 of the image padded to a square
# a.jpg is 200 x 150: its square is 200 wide, 25 pixels of padding above. These boxes are exact in 2 decimals.
TRUTH, ANSWER, ASKED = [20, 35, 90, 115], [24, 39, 86, 111], [120, 45, 180, 95]


def pred(i, image, qtype, question, answer, reference, **extra):
    return {"id": f"{image}#{i}", "image": image, "turn": 0, "question": question, "answer": answer,
            "reference": reference, "type": qtype, "model": "/m", **extra}


def _lines(tmp_path: Path) -> list[dict]:
    ground = frame_fields(FRAME, 200, 150)
    far = FRAME.render_box([80, 100, 110, 150], 120, 160)
    return [
        pred(0, "a.jpg", "count", "How many objects are there?", "There are 3 objects.", "There are 2 objects."),
        pred(1, "a.jpg", "exists", f"Is there a glass {NASTY}?", "yes", "Yes."),
        pred(2, "a.jpg", "grounding", "Where is the glass?", FRAME.render_box(ANSWER, 200, 150),
             FRAME.render_box(TRUTH, 200, 150), **ground),
        pred(3, "sub/b.png", "grounding", "Where is the paper?", far, FRAME.render_box([5, 5, 40, 60], 120, 160),
             **frame_fields(FRAME, 120, 160)),
        pred(4, "a.jpg", "region_description", f"Describe the region {FRAME.render_box(ASKED, 200, 150)}.",
             "a glass", "a tall glass on the table"),
        pred(5, "sub/b.png", "count_class", "How many papers are there?", "one", "1"),
        pred(6, "gone.jpg", "exists", "Is there a can?", "no", "yes"),
    ]


@pytest.fixture()
def case(tmp_path):
    images = tmp_path / "imgs"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (200, 150), GREY).save(images / "a.jpg", quality=95)
    Image.new("RGB", (120, 160), GREY).save(images / "sub" / "b.png")
    lines = _lines(tmp_path)
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return {"images": images, "file": path, "lines": lines, "out": tmp_path / "review"}


def _run(case, *extra) -> int:
    return vp.main(["--predictions", str(case["file"]), "--image_dir", str(case["images"]),
                    "--output_dir", str(case["out"]), "--jpeg_quality", "95", *extra])


def _entries(page: str) -> list[tuple[int, str, str]]:
    return [(int(i), t, s) for i, t, s in
            re.findall(r'<article class="entry \w+" id="entry-(\d+)" data-type="([^"]+)" data-status="(\w+)"', page)]


# ----------------------------------------------------------------------------- pure logic

@pytest.mark.parametrize("qtype, answer, reference, expected", [
    ("exists", "Yes.", "yes", ("right", "the same answer")),
    ("exists", "no", "yes", ("wrong", "a different answer")),
    ("location", "the top left", "top left", ("right", "the same answer")),        # VQA drops the article
    ("count", "There are two objects.", "There are 2 objects.", ("right", "2 against 2")),
    ("count_class", "3", "There are 4 cans.", ("wrong", "3 against 4")),
    ("count", "many", "2", ("wrong", "no number in the answer")),
    ("grounding", "[0.10, 0.10, 0.50, 0.50]", "[0.10, 0.10, 0.50, 0.50]", ("right", "IoU 1.00")),
    ("grounding", "[0.00, 0.00, 0.50, 0.25]", "[0.00, 0.00, 0.50, 0.50]", ("right", "IoU 0.50")),  # exactly 0.5
    ("grounding", "[0.00, 0.00, 0.50, 0.24]", "[0.00, 0.00, 0.50, 0.50]", ("wrong", "IoU 0.48")),
    ("grounding", "on the left", "[0.10, 0.10, 0.50, 0.50]", ("wrong", "no box in the answer")),
    ("region_description", "a red can", "a red can", ("description", "ROUGE-L 1.00")),
    (None, "x", "y", ("wrong", "a different answer")),
])
def test_each_answer_is_judged_by_evaluates_rule(qtype, answer, reference, expected):
    status, detail, _ = vp.judge({"answer": answer, "reference": reference, "type": qtype})
    assert (status, detail) == expected


def test_order_is_wrong_first_then_descriptions_by_rouge_then_right():
    def item(i, status, rank=0.0):
        return vp.Item(i, {}, status, "", rank)
    items = [item(0, "right"), item(1, "description", 0.9), item(2, "wrong"), item(3, "description", 0.1),
             item(4, "right"), item(5, "wrong")]
    assert [it.index for it in vp.gallery_order(items)] == [2, 5, 3, 1, 0, 4]
    assert [it.index for it in vp.gallery_order(items, wrong_only=True)] == [2, 5]


def test_boxes_come_back_in_pixels_of_the_models_frame():
    rec = pred(2, "a.jpg", "grounding", "Where?", FRAME.render_box(ANSWER, 200, 150), FRAME.render_box(TRUTH, 200, 150))
    assert rec["reference"] == "[0.10, 0.30, 0.45, 0.70]"  # the padded square's numbers, not the image's
    assert vp.item_boxes(rec, FRAME, 200, 150) == [("truth", TRUTH), ("answer", ANSWER)]
    region = pred(4, "a.jpg", "region_description", f"Describe {FRAME.render_box(ASKED, 200, 150)}", "a", "b")
    assert vp.item_boxes(region, FRAME, 200, 150) == [("asked", ASKED)]
    assert vp.item_boxes(pred(0, "a.jpg", "count", "How many?", "2", "2"), FRAME, 200, 150) == []


# ----------------------------------------------------------------------------- the gallery

def test_gallery_lists_wrong_first_draws_both_boxes_and_offers_a_type_filter(case, capsys):
    assert _run(case) == 0
    out = capsys.readouterr().out
    assert ("visualize_predictions: 7 answers: 3 wrong, 3 right (50.0% right), 1 description; 7 shown, 6 drawn, "
            "1 without their image") in out
    page = (case["out"] / "index.html").read_text(encoding="utf-8")
    assert _entries(page) == [(0, "count", "wrong"), (3, "grounding", "wrong"), (6, "exists", "wrong"),
                              (4, "region_description", "description"), (1, "exists", "right"),
                              (2, "grounding", "right"), (5, "count_class", "right")]
    options = re.findall(r'<option value="([^"]*)">([^<]+)</option>', page)
    assert options == [("", "all"), ("count", "count (1)"), ("count_class", "count_class (1)"), ("exists", "exists (2)"),
                       ("grounding", "grounding (2)"), ("region_description", "region_description (1)")]
    assert "wrong: 3 against 2" in page and "wrong: IoU 0.00" in page and "right: IoU 0.80" in page
    assert "description: ROUGE-L" in page and "image not available" in page
    assert "Is there a glass &lt;b&gt;&amp; &quot;quoted&quot;?" in page and NASTY not in page
    # The grounding drawing: 200 x 150 shown twice as large (--min_side 384), the truth green, the answer blue.
    (src,) = re.findall(r'id="entry-2".*?<img src="([^"]+)"', page, re.S)
    with Image.open(case["out"] / src) as im:
        assert im.size == (400, 300)
        rgb = im.convert("RGB")
        left_truth, left_answer, inside = rgb.getpixel((40, 150)), rgb.getpixel((48, 150)), rgb.getpixel((100, 150))
    assert left_truth[1] > 150 and left_truth[0] < 110 and left_truth[2] < 110       # green
    assert left_answer[2] > 170 and left_answer[0] < 60                              # blue
    assert all(abs(c - 128) < 12 for c in inside)                                     # the image itself
    # The region question: its asked box in orange, where ASKED lies (x 240..360, y 90..190 at twice the size).
    (src,) = re.findall(r'id="entry-4".*?<img src="([^"]+)"', page, re.S)
    with Image.open(case["out"] / src) as im:
        r, g, b = im.convert("RGB").getpixel((240, 150))  # its left edge
    assert r > 200 and 100 < g < 170 and b < 100


def test_pages_wrong_only_and_a_rerender_reuses_drawings_and_removes_what_it_no_longer_shows(case):
    assert _run(case, "--per_page", "3") == 0
    out = case["out"]
    names = sorted(p.name for p in out.glob("*.html"))
    assert len(names) == 4 and "index.html" in names  # index, page 2, page 3, the list of pages
    drawings = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert len(drawings) == 5  # a.jpg plain (count and exists share it), a.jpg truth+answer, a.jpg asked, b.png x2

    assert _run(case) == 0  # one page now: the other pages go, every drawing is reused as it is
    assert sorted(p.name for p in out.glob("*.html")) == ["index.html"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == drawings

    assert _run(case, "--wrong_only") == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert [e[0] for e in _entries(page)] == [0, 3, 6]
    kept = {p.name for p in (out / "images").iterdir()}
    linked = {Path(s).name for s in re.findall(r'<img src="images/([^"]+)"', page)}
    assert kept == linked and len(kept) == 2  # a.jpg plain, b.png's grounding


def _start(argv: list[str], **faults) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **{k: str(v) for k, v in faults.items()})
    return subprocess.Popen([sys.executable, str(INJECT), SCRIPT, *argv], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="backslashreplace", start_new_session=True)


def test_killed_while_re_rendering_the_old_gallery_stays_whole(case, tmp_path):
    argv = ["--predictions", str(case["file"]), "--image_dir", str(case["images"]), "--output_dir", str(case["out"]),
            "--per_page", "3"]
    assert vp.main(argv) == 0
    before = (case["out"] / "index.html").read_text(encoding="utf-8")
    lines = case["lines"]
    lines[0]["answer"] = "There are 2 objects."  # now right: the second render differs
    case["file"].write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    proc = _start(argv, FAULT_PAUSE_BEFORE_TEMP=r"\.index\.html\.\w{8}\.tmp", FAULT_READY_FILE=tmp_path / "ready")
    wait_for(tmp_path / "ready", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    assert (case["out"] / "index.html").read_text(encoding="utf-8") == before
    for link in re.findall(r'(?:src|href)="([^"#]+)"', before):  # every page and drawing it links is still there
        assert (case["out"] / link).is_file(), link
    assert vp.main(argv) == 0
    page = (case["out"] / "index.html").read_text(encoding="utf-8")
    assert [e[0] for e in _entries(page)] == [3, 6, 4]
    on_disk = {p.relative_to(case["out"]).as_posix() for p in case["out"].rglob("*") if p.is_file()}
    pages = [page] + [(case["out"] / n).read_text(encoding="utf-8") for n in re.findall(r'href="(page_\d+\.\w+\.html)"', page)]
    used = {link for t in pages for link in re.findall(r'(?:src|href)="([^"#]+)"', t)} | {"index.html"}
    assert on_disk == used  # no page or drawing of the killed render, no temp file, no lock


# ----------------------------------------------------------------------------- bad input

def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    def refused(*argv_extra, files=None) -> str:
        argv = ["--predictions", str(files or case["file"]), "--image_dir", str(case["images"]),
                "--output_dir", str(case["out"]), *argv_extra]
        assert vp.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert not case["out"].exists()
        return err

    wrong = tmp_path / "elsewhere"
    wrong.mkdir()
    err = refused("--image_dir", str(wrong))
    assert f"--image_dir: {wrong}: none of the 3 images of {case['file']} is there (3 not found, e.g. a.jpg)" in err
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(case["lines"][0]) + "\n", encoding="utf-8")
    err = refused("--image_dir", str(wrong), files=one)
    assert f"--image_dir: {wrong}: the one image of {one}, a.jpg, is not there; give the folder" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(case["lines"][0]) + "\n" + json.dumps({"answer": "x"}) + "\n", encoding="utf-8")
    assert f"{bad}: line 2: reference: missing" in refused(files=bad)
    bad.write_text(json.dumps({**case["lines"][0], "image": 3}) + "\n", encoding="utf-8")
    assert f"{bad}: line 1: image: expected" in refused(files=bad)
    bad.write_text(json.dumps({**case["lines"][2], "image_size": [0, 5]}) + "\n", encoding="utf-8")
    assert f"{bad}: line 1: image_size" in refused(files=bad)
    llava = tmp_path / "test_llava.json"
    llava.write_text(json.dumps([{"id": "a", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nHow many?"}, {"from": "gpt", "value": "2"}]}]), encoding="utf-8")
    assert "is a LLaVA conversation file" in refused(files=llava)
    assert "--per_page must be at least 1" in refused("--per_page", "0")
    assert "--output_dir" in refused("--output_dir", str(case["images"] / "review"))


def test_runs_as_a_script(case):
    res = subprocess.run([sys.executable, str(ROOT / SCRIPT), "--predictions", str(case["file"]), "--image_dir",
                          str(case["images"]), "--output_dir", str(case["out"])],
                         capture_output=True, text=True, timeout=120, cwd=case["out"].parent)
    assert res.returncode == 0, res.stderr
    assert "visualize_predictions: 7 answers" in res.stdout and (case["out"] / "index.html").is_file()


# ----------------------------------------------------------------------------- real browser

def _chromium() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _dump_dom(browser: str, uri: str, profile: Path) -> str:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           "--virtual-time-budget=5000", "--dump-dom", uri]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, HOME=str(profile)))
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def _visible(dom: str) -> list[int]:
    """The entries the filter left shown (it hides the others with display: none)."""
    tags = re.findall(r'<article class="entry \w+" id="entry-(\d+)"[^>]*>', dom)
    return [int(i) for i, tag in zip(tags, re.findall(r'<article class="entry [^>]*>', dom))
            if "display: none" not in tag]


def test_gallery_and_its_filter_in_headless_chromium(case, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed: run `make browser`")
    assert _run(case, "--per_page", "4") == 0
    moved = tmp_path / "elsewhere" / "gallery"  # only relative links: the folder can be moved
    shutil.copytree(case["out"], moved)
    shutil.rmtree(case["out"])
    index = (moved / "index.html").resolve().as_uri()
    dom = _dump_dom(browser, index, tmp_path / "profile")
    status = re.search(r'<footer id="load-status"([^>]*)>([^<]*)</footer>', dom)
    assert status and status.group(2) == "3 of 3 images loaded", dom[-3000:]  # page 1: 0, 3, 6 (gone), 4
    assert _visible(dom) == [0, 3, 6, 4]
    dom = _dump_dom(browser, index + "#type=grounding", tmp_path / "profile")
    assert _visible(dom) == [3]
    assert re.search(r'id="filter-count" data-shown="1">1 of 4 entries on this page shown', dom)
    # The choice rides on to the other pages: their links carry it.
    (link,) = set(re.findall(r'href="(page_2\.\w+\.html[^"]*)"', dom))
    assert link.endswith("#type=grounding")
    page2 = _dump_dom(browser, (moved / link.split("#")[0]).resolve().as_uri() + "#type=grounding&wrong",
                      tmp_path / "profile")
    assert _visible(page2) == []  # page 2 holds 1, 2 (grounding, right) and 5: none wrong
    assert _visible(_dump_dom(browser, (moved / link.split("#")[0]).resolve().as_uri() + "#type=grounding",
                              tmp_path / "profile")) == [2]


# ----------------------------------------------------------------------------- with predict.py's own output

def test_the_gallery_of_a_real_predict_run_on_the_tiny_llava(tiny_models, tmp_path, capsys):
    """predict.py's lines as written (the tiny model's answers are noise): every one shown, judged, drawn."""
    from vlm_core.io_utils import write_json_atomic
    from vlm_inference import predict

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(images / "a.jpg")
    Image.new("RGB", (30, 50), (30, 200, 30)).save(images / "b.png")

    def record(rid, image, turns, types):
        conv = []
        for k, (q, a) in enumerate(turns):
            conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + q}, {"from": "gpt", "value": a}]
        return {"id": rid, "image": image, "width": 0, "height": 0, "conversations": conv, "qa_types": types}

    data = tmp_path / "test_llava.json"
    write_json_atomic(data, [
        record("a.jpg#0", "a.jpg", [("How many cans are there?", "There are 2 cans in this image."),
                                    ("Where is the can? Answer with a box.", "[0.10, 0.30, 0.45, 0.70]")],
               ["count", "grounding"]),
        record("b.png#0", "b.png", [("What is the object in this region: [0.10, 0.20, 0.50, 0.60]? "
                                     "Answer with one word.", "can")], ["region_label"])])
    predictions = tmp_path / "predictions.jsonl"
    assert predict.main(["--model_path", str(tiny_models["llava"]), "--data", str(data), "--image_dir", str(images),
                         "--output_file", str(predictions), "--max_new_tokens", "6"]) == 0
    lines = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    assert [r["type"] for r in lines] == ["count", "grounding", "region_label"]
    out = tmp_path / "review"
    capsys.readouterr()
    assert vp.main(["--predictions", str(predictions), "--image_dir", str(images), "--output_dir", str(out)]) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    judged = {(i, vp.judge(r)[0]) for i, r in enumerate(lines)}
    assert {(i, s) for i, _, s in _entries(page)} == judged
    assert [s for _, _, s in _entries(page)] == sorted((s for _, s in judged), key=vp.STATUS_ORDER.get)
    assert len(re.findall(r"<img src=", page)) == 3 and "image not available" not in page
    assert "3 shown, 3 drawn, 0 without their image" in capsys.readouterr().out
