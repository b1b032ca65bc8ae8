"""Stage 3: convert an annotation file to the LLaVA conversation format.

    python vlm_training/convert_to_llava_format.py --annotation_file train.json --output_file train_llava.json

Output: a JSON list of records, one per image (more with ``--max_turns``)::

    {"id": "scenes/a.jpg#0", "image": "scenes/a.jpg", "width": 640, "height": 480,
     "conversations": [{"from": "human", "value": "<image>\\nHow many objects are there?"},
                       {"from": "gpt", "value": "There are 3 objects in this image."}, ...],
     "qa_types": ["count", ...]}

``<image>`` appears once, at the start of the first human turn. The Q&A text names boxes by
placeholder (``<box:3>``, the object with id 3); each is rendered here, once, from the object's
pixel box in the box frame of ``--base_model``'s family (LLaVA-1.5's by default: the image padded
to a square, 0..1, 2 decimals), the frame training and inference use (vlm_training/conversion.py).
The original LLaVA training code and LLaMA-Factory's ShareGPT loader read this file as is;
``width``, ``height`` and ``qa_types`` are extra keys they ignore.

Images that other trainers would read differently (issue: EXIF rotation, transparency). The
toolkit opens an image the way a viewer shows it: turned upright by its EXIF orientation,
transparent pixels on white, 16-bit images scaled; its boxes are in that frame. Original LLaVA,
LLaMA-Factory and most trainers open the file with a plain ``Image.open(p).convert("RGB")``: no
rotation, transparent pixels in whatever colour they store. With ``--image_dir`` conversion
counts the images where the two differ and says so; with ``--upright_images_dir DIR`` it also
writes a folder those trainers can use instead of ``--image_dir``: an upright RGB copy of each
such image (same relative path and format; JPEGs re-encoded at quality 95) and a symlink to
every other image, so the records' paths stay as they are and every pixel matches its boxes.
The toolkit's own training reads either folder the same way.

    python vlm_training/convert_to_llava_format.py --annotation_file train.json \
        --output_file train_llava.json --image_dir images --upright_images_dir images_upright

Several splits in one run (one summary each; the note on the images once)::

    python vlm_training/convert_to_llava_format.py --annotation_file train.json val.json \
        --output_file train_llava.json val_llava.json

Other trainers (docs/interop.md): ``--llamafactory_dir DIR`` writes each output as a LLaMA-Factory dataset
(ShareGPT file + ``dataset_info.json``), ``--swift_dir DIR`` as an ms-swift one (its grounding format), and
``--square_images_dir DIR`` the images padded to a square as our training pads them, for trainers that resize
and centre-crop (vlm_training/trainer_export.py).

Any size: records are read, converted and written one at a time. A ``.jsonl`` input is read as
JSONL; a ``.jsonl`` output is written as JSONL (the toolkit's training reads both; LLaVA and
LLaMA-Factory want the default JSON list).

A mix of datasets whose images live in different folders (``--image_prefix``): LLaVA's own training mixes name
each image under one folder (``coco/train2017/...``, ``gqa/images/...``). Convert each dataset with the subfolder
its images will sit in under that folder, concatenate the JSONL outputs, and give train_vlm.py the folder as
``--image_dir`` (world/families.sh mixes the world's questions with a replay of its pretraining pool this way)::

    python vlm_training/convert_to_llava_format.py --annotation_file world.json --output_file world.jsonl \
        --image_prefix world
    python vlm_training/convert_to_llava_format.py --annotation_file pool.json --output_file pool.jsonl \
        --image_prefix pool --qa_types grounding
    cat world.jsonl pool.jsonl > mix.jsonl   # images/world -> world's images, images/pool -> pool's

Visual box prompts (``--box_prompt visual``, or ``both`` to keep the coordinates too): the region
questions name their boxes by colour ("Please provide a short description for the object in the red
box."), and each record carries the pixel boxes and colours that training and prediction draw on its
image (``box_prompt``); an image's pairs are grouped into records by the boxes they name. Train and ask
with the same ``--box_prompt``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections import Counter
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from vlm_core import families, prompts
from vlm_core.flags import ANNOTATION_FILE, IMAGES_DIR, flag_names
from vlm_core.images import ImageLoadError, load_image
from vlm_core.io_utils import InputError, atomic_output
from vlm_core.llava_format import LlavaWriter, resolve_image_path
from vlm_core.runtime import (
    is_within,
    report_input_errors,
    require_output_dir,
    require_output_file,
    require_path,
    single_writer,
)
from vlm_core.schema import QA_TYPES, AnnotationReader, check_not_pending
from vlm_training import trainer_export
from vlm_training.conversion import image_records


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(*flag_names("--annotation_file", ANNOTATION_FILE), required=True, nargs="+", metavar="FILE",
                   help="annotation file(s) to convert (e.g. train.json, or train.json val.json test.json: "
                        "one run, one summary and one note for all of them)")
    p.add_argument("--output_file", required=True, nargs="+", metavar="FILE",
                   help="where to write the LLaVA records (e.g. train_llava.json), one per --annotation_file, "
                        "in the same order")
    p.add_argument("--max_turns", type=int, default=0,
                   help="most Q&A pairs in one record; extra pairs of an image go to further records "
                        "of the same image (ids <image>#1, #2, ...). 0 = no cap")
    p.add_argument("--base_model", default=families.DEFAULT_BASE_MODEL,
                   help="the model the data is for, hub id or folder, the same value train_vlm.py gets: its "
                        "family and processor resize settings decide how boxes are written "
                        f"(default: {families.DEFAULT_BASE_MODEL})")
    p.add_argument("--qa_types", nargs="+", choices=QA_TYPES, default=None, metavar="TYPE",
                   help=f"convert only Q&A pairs of these types (default: all: {' '.join(QA_TYPES)}); an image "
                        "left with none gets no record, like an image without Q&A pairs")
    p.add_argument("--shuffle_turns", action="store_true",
                   help="shuffle each image's Q&A pairs (seeded by --seed and the image path), so that every question "
                        "type is sometimes the first turn: predict.py asks every question as a fresh first turn")
    p.add_argument("--seed", type=int, default=0, help="seed of --shuffle_turns (default 0)")
    p.add_argument("--box_prompt", choices=prompts.BOX_PROMPTS, default="text",
                   help=prompts.BOX_PROMPT_HELP + "; with visual or both each record also holds the boxes to draw, "
                        "and the pairs of an image go to one record per set of boxes their questions name "
                        "(default text; give train_vlm.py the same value)")
    p.add_argument(*flag_names("--image_dir", IMAGES_DIR), default=None,
                   help="folder the records' image paths are relative to; when given, images that a plain "
                        "Image.open().convert('RGB') reads differently (EXIF-rotated, transparent, 16-bit) "
                        "are counted and reported")
    p.add_argument("--image_prefix", default=None, metavar="FOLDER",
                   help="write each record's image path and id under this relative folder (FOLDER/<path>), to mix "
                        "datasets whose images live in different folders under one train_vlm.py --image_dir, as "
                        "LLaVA's own mixes do (coco/..., gqa/...); --image_dir here stays the annotation's own folder")
    p.add_argument("--upright_images_dir", default=None,
                   help="with --image_dir: write here an upright RGB copy of each such image and a symlink to "
                        "every other one (same relative paths), for trainers that ignore EXIF orientation "
                        "and transparency: give them this folder instead of --image_dir")
    p.add_argument("--square_images_dir", default=None,
                   help="with --image_dir (LLaVA-1.5 / ViP-LLaVA frame): write here each image upright and padded "
                        "to a square in the processor's mean colour, as this toolkit's training feeds it (same "
                        "relative paths), for trainers that resize and centre-crop (LLaMA-Factory, ms-swift): "
                        "their pixels then match the boxes. docs/interop.md")
    p.add_argument("--llamafactory_dir", default=None,
                   help="also write each output as a LLaMA-Factory dataset here: <output name>.json (ShareGPT "
                        "messages/images/system) and its entry in dataset_info.json (docs/interop.md)")
    p.add_argument("--swift_dir", default=None,
                   help="also write each output as an ms-swift dataset here: <output name>.jsonl, its grounding "
                        "format (messages, images, objects with pixel boxes, bbox_type real; docs/interop.md)")
    p.add_argument("--swift_boxes", choices=("objects", "text"), default="objects",
                   help="how --swift_dir records carry boxes: 'objects' (ms-swift's grounding format: <bbox> tags "
                        "and pixel boxes; ms-swift writes them in its template's notation, for llava1_5_hf "
                        "[(x1,y1),(x2,y2)] in 0..1000, not LLaVA-1.5's) or 'text' (the boxes as this toolkit "
                        "writes them, the same targets as our training; default objects)")
    p.add_argument("--system_prompt", default="auto",
                   help="system prompt of the --llamafactory_dir / --swift_dir records: 'auto' (what train_vlm.py "
                        "trains with by default: LLaVA-1.5's own for the llava family, none otherwise), 'none', "
                        "'llava_v1', or any other text")
    args = p.parse_args(argv)
    if len(args.annotation_file) != len(args.output_file):
        raise InputError(f"--output_file: {len(args.output_file)} file(s) for {len(args.annotation_file)} "
                         "--annotation_file(s); give one output per input, in the same order")
    # Every pair in the lists; the single names (the first pair) as every other stage has them.
    args.annotation_files, args.output_files = args.annotation_file, args.output_file
    args.annotation_file, args.output_file = args.annotation_files[0], args.output_files[0]
    if args.max_turns < 0:
        raise InputError(f"--max_turns must be >= 0, got {args.max_turns}")
    try:
        args.frame = families.frame_for(args.base_model)
    except families.FamilyError as e:
        raise InputError(f"--base_model: {e}") from None
    if args.upright_images_dir is not None and args.image_dir is None:
        raise InputError("--upright_images_dir needs --image_dir (the folder to read the images from)")
    if args.square_images_dir is not None:
        if args.image_dir is None:
            raise InputError("--square_images_dir needs --image_dir (the folder to read the images from)")
        if args.frame.kind != "padded_square":
            raise InputError(f"--square_images_dir: {args.base_model}'s boxes are in {args.frame.describe()}, not "
                             "in the padded square; its images need no padding")
    exporting = args.llamafactory_dir is not None or args.swift_dir is not None
    if exporting and args.box_prompt != "text":
        raise InputError(f"--box_prompt {args.box_prompt}: other trainers do not draw the boxes on the images; "
                         "export with --box_prompt text")
    try:
        fmt = prompts.PromptFormat() if args.frame.spec.uses_prompt_format else None
        args.system_text = (args.frame.spec.default_system_prompt if fmt is None and args.system_prompt == "auto"
                            else prompts.resolve_system_prompt(args.system_prompt, fmt))
    except ValueError as e:
        raise InputError(f"--system_prompt: {e}") from None
    if args.image_prefix is not None:
        args.image_prefix = check_image_prefix(args.image_prefix)
        others = [f for f, v in (("--upright_images_dir", args.upright_images_dir),
                                 ("--square_images_dir", args.square_images_dir),
                                 ("--llamafactory_dir", args.llamafactory_dir), ("--swift_dir", args.swift_dir))
                  if v is not None]
        if others:
            raise InputError(f"--image_prefix: {others[0]} names its images by its own folder; convert for it "
                             "without --image_prefix")
    names = [Path(o).name.removesuffix(".jsonl").removesuffix(".json") for o in args.output_files]
    if exporting and len(set(names)) != len(names):
        raise InputError("--output_file: two outputs have the same name; --llamafactory_dir and --swift_dir name "
                         "their files after them")
    args.dataset_names = names
    if args.image_dir is not None:
        image_dir = require_path(args.image_dir, "--image_dir", "dir")
        if args.square_images_dir is not None:
            square = require_output_dir(args.square_images_dir, "--square_images_dir", {"--image_dir": image_dir})
            if square.exists() and is_within(image_dir, square):
                raise InputError(f"--square_images_dir: {square} holds --image_dir ({image_dir}); "
                                 "write the images elsewhere")
        if args.upright_images_dir is not None:
            upright = require_output_dir(args.upright_images_dir, "--upright_images_dir", {"--image_dir": image_dir})
            if upright.exists() and is_within(image_dir, upright):
                raise InputError(f"--upright_images_dir: {upright} holds --image_dir ({image_dir}); "
                                 "write the copies elsewhere")
    return args


def check_image_prefix(prefix: str) -> str:
    """``--image_prefix`` as the folder records name (``a/b``): relative, within the image folder, not empty."""
    path = PurePosixPath(prefix.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts:  # "" and "." have no parts
        raise InputError(f"--image_prefix: a folder inside train_vlm.py's --image_dir (e.g. coco), not '{prefix}'")
    return str(path)


def under_folder(record: dict, folder: str) -> dict:
    """``record`` with its image path and id under ``folder`` (the id names the image, so a mix keeps them unique)."""
    return record | {"id": f"{folder}/{record['id']}", "image": f"{folder}/{record['image']}"}


# ----------------------------------------------------------------------------- images other trainers misread

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
ORIENTATION_TAG = 0x0112


def misread_reasons(path: Path) -> list[str]:
    """Why ``Image.open(path).convert("RGB")`` gives other pixels than the toolkit's loader:
    ``"rotated"`` (an EXIF orientation other than 1), ``"transparent"`` (an alpha channel with a
    pixel that is not opaque), ``"deep"`` (16-bit or float samples, which convert() clips).
    An unreadable file has none (the loader reports it where it is read)."""
    from PIL import Image
    reasons = []
    try:
        with Image.open(path) as img:
            if img.getexif().get(ORIENTATION_TAG, 1) not in (1, None):
                reasons.append("rotated")
            mode = img.mode
            if mode == "P" and "transparency" in img.info:
                mode = "PA"
            if mode in _ALPHA_MODES:
                alpha = img.convert("RGBA").getchannel("A")
                if alpha.getextrema()[0] < 255:
                    reasons.append("transparent")
            elif mode in _DEEP_MODES:
                reasons.append("deep")
    except (OSError, ValueError, SyntaxError):
        return []
    return reasons


class UprightImages:
    """Check each image once; with an output folder, write the upright copies and links."""

    def __init__(self, image_dir: Path, out_dir: Path | None):
        self.image_dir, self.out_dir = image_dir, out_dir
        self.last: str | None = None
        self.n_images = 0
        self.counts: Counter = Counter()
        self.examples: dict[str, str] = {}

    def add(self, rel: str, where: str) -> None:
        if rel == self.last:  # --max_turns: several records of one image, one after the other
            return
        self.last = rel
        self.n_images += 1
        try:
            src = resolve_image_path(self.image_dir, rel, where)
        except InputError:
            self.counts["missing"] += 1
            return
        reasons = misread_reasons(src)
        for r in reasons:
            self.counts[r] += 1
            self.examples.setdefault(r, rel)
        if reasons:
            self.counts["affected"] += 1
        if self.out_dir is not None:
            self._write(src, rel, bool(reasons))

    def _write(self, src: Path, rel: str, affected: bool) -> None:
        dst = self.out_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not affected:
            target = os.path.abspath(src)
            if dst.is_symlink() and os.readlink(dst) == target:
                return
            tmp = dst.with_name(f".{dst.name}.link.tmp")
            tmp.unlink(missing_ok=True)
            os.symlink(target, tmp)
            os.replace(tmp, dst)  # a file or link left by an earlier run is replaced in one step
            self.counts["linked"] += 1
            return
        try:
            image = load_image(src)
        except ImageLoadError:
            self.counts["missing"] += 1
            return
        from PIL import Image
        with Image.open(src) as original:
            fmt = original.format or "PNG"
        options = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
        with atomic_output(dst) as tmp:
            image.save(tmp, format=fmt, **options)
        self.counts["copied"] += 1

    def report(self) -> list[str]:
        c = self.counts
        lines = []
        if c["affected"]:
            what = {"rotated": "EXIF-rotated", "transparent": "with transparent pixels", "deep": "16-bit or float"}
            parts = ", ".join(f"{c[r]} {what[r]} (e.g. {self.examples[r]})" for r in what if c[r])
            lines.append(f"{c['affected']} of {self.n_images} images are read differently by a plain "
                         f"Image.open().convert('RGB') than by this toolkit: {parts}")
            if self.out_dir is None:
                lines.append("their boxes are right for this toolkit's training; for other trainers pass "
                             "--upright_images_dir DIR and give them DIR as the image folder")
        else:
            lines.append(f"all {self.n_images - c['missing']} images read the same with a plain "
                         "Image.open().convert('RGB'): no EXIF rotation or transparency")
        if c["missing"]:
            lines.append(f"{c['missing']} image(s) not found or unreadable under --image_dir")
        if self.out_dir is not None:
            lines.append(f"upright images: {c['copied']} copies written, {c['linked']} links -> {self.out_dir} "
                         "(use it as the image folder)")
        return lines


class Stats:
    """Counts for the summary, gathered a record at a time."""

    def __init__(self):
        self.images = self.records = self.empty = 0
        self.types: Counter = Counter()

    def add(self, records: list[dict]) -> None:
        if not records:
            self.empty += 1
            return
        self.images += 1
        self.records += len(records)
        for r in records:
            self.types.update(r["qa_types"])

    def as_dict(self) -> dict:
        return {"images": self.images, "records": self.records, "turns": sum(self.types.values()),
                "skipped_empty": self.empty, "types": dict(sorted(self.types.items()))}


class Exports:
    """The same records for other trainers (vlm_training/trainer_export.py): LLaMA-Factory, ms-swift, square
    images; each file written atomically, like the LLaVA file."""

    def __init__(self, args):
        self.args = args
        self.stack: contextlib.ExitStack | None = None   # the open output's: its files commit or abort with it
        self.squares = None if args.square_images_dir is None else trainer_export.SquareImages(
            Path(args.image_dir), Path(args.square_images_dir), args.frame,
            trainer_export.image_mean(args.base_model))
        # the folder the exported records' images are in: what ms-swift opens by path
        self.swift_images = next((Path(d) for d in (args.square_images_dir, args.upright_images_dir, args.image_dir)
                                  if d is not None), None)
        self.lf = self.swift = None
        self.written: list[str] = []

    def open(self, name: str) -> None:
        """Start the exports of one output file (named ``name``)."""
        self.name = name
        if self.args.llamafactory_dir is not None:
            path = Path(self.args.llamafactory_dir) / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.lf = self.stack.enter_context(LlavaWriter(path))
        if self.args.swift_dir is not None:
            path = Path(self.args.swift_dir) / f"{name}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.swift = self.stack.enter_context(LlavaWriter(path))

    def add(self, rec: dict, recs: list[dict], index: int, file: str) -> None:
        """Export one annotation record's LLaVA records ``recs``."""
        args = self.args
        if not recs:
            return
        if self.squares is not None:
            self.squares.add(recs[0]["image"], f"{file}: images[{index}]")
        if self.lf is not None:
            self.lf.write_many(trainer_export.llamafactory_record(r, args.system_text) for r in recs)
        if self.swift is not None and args.swift_boxes == "text":
            image = trainer_export.swift_image_path(recs[0]["image"], self.swift_images)
            self.swift.write_many(trainer_export.swift_record(r, {}, args.system_text, image, (0.0, 0.0))
                                  for r in recs)
        elif self.swift is not None:
            marked = image_records(rec, index, file, args.max_turns, None if args.qa_types is None
                                   else set(args.qa_types), None, args.frame,
                                   args.seed if args.shuffle_turns else None, args.box_prompt, mark_boxes=True)
            objects = {o["id"]: o for o in rec["objects"]}
            offset = trainer_export.swift_offset(rec, self.squares is not None)
            image = trainer_export.swift_image_path(recs[0]["image"], self.swift_images)
            self.swift.write_many(trainer_export.swift_record(m, objects, args.system_text, image, offset)
                                  for m in marked)

    def close(self) -> None:
        """Commit the files of the current output; register the LLaMA-Factory one."""
        for writer in (self.lf, self.swift):
            if writer is not None:
                writer.close()
                self.written.append(str(writer.path))
        if self.lf is not None:
            info = trainer_export.write_llamafactory_info(Path(self.args.llamafactory_dir), self.name,
                                                          f"{self.name}.json", bool(self.args.system_text))
            if str(info) not in self.written:
                self.written.append(str(info))
        self.lf = self.swift = None

    def report(self) -> list[str]:
        lines = [] if self.squares is None else [self.squares.report()]
        if self.written:
            lines.append("for other trainers: " + ", ".join(self.written) + " (docs/interop.md)")
        return lines


def convert_one(args, annotation_file: str, output_file: str, name: str, images: UprightImages | None,
                exports: Exports) -> None:
    """Convert one annotation file; print its summary."""
    out = require_output_file(output_file, "--output_file")
    if out.resolve() == Path(annotation_file).resolve():
        raise InputError(f"--output_file: {out} is the same file as --annotation_file")
    check_not_pending(annotation_file, "--annotation_file")
    stats = Stats()
    left_out: Counter = Counter()
    qa_types = None if args.qa_types is None else set(args.qa_types)
    with single_writer(out, "--output_file"), contextlib.ExitStack() as stack:
        writer = stack.enter_context(LlavaWriter(out))
        exports.stack = stack
        exports.open(name)
        reader = AnnotationReader(annotation_file)
        for i, rec in enumerate(tqdm(reader, desc="convert", unit=" images", mininterval=1.0, disable=None)):
            recs = image_records(rec, i, annotation_file, args.max_turns, qa_types, left_out, args.frame,
                                 args.seed if args.shuffle_turns else None, args.box_prompt)
            writer.write_many(recs if args.image_prefix is None else [under_folder(r, args.image_prefix)
                                                                      for r in recs])
            stats.add(recs)
            exports.add(rec, recs, i, annotation_file)
            if images is not None and recs:
                images.add(recs[0]["image"], f"{annotation_file}: images[{i}]")
        writer.close()
        exports.close()
    s = stats.as_dict()
    if left_out:
        print(f"left out {sum(left_out.values())} Q&A pairs of other types (--qa_types): "
              + ", ".join(f"{t} {n}" for t, n in sorted(left_out.items())))
    if s["skipped_empty"]:
        kind = " of those types" if qa_types is not None else ""
        print(f"skipped {s['skipped_empty']} image(s) without Q&A pairs{kind} (no record to write)")
    per_type = ", ".join(f"{t} {n}" for t, n in s["types"].items()) or "none"
    print(f"turns by type: {per_type}")
    print(f"wrote {s['records']} records ({s['images']} images, {s['turns']} Q&A turns) -> {out}")


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    images = None if args.image_dir is None else UprightImages(
        Path(args.image_dir), None if args.upright_images_dir is None else Path(args.upright_images_dir))
    exports = Exports(args)
    for annotation_file, output_file, name in zip(args.annotation_files, args.output_files, args.dataset_names):
        convert_one(args, annotation_file, output_file, name, images, exports)
    # Once for all the files converted: what the images look like to other trainers.
    if images is not None:
        for line in images.report():
            print(line)
    else:
        print("note: images not checked for EXIF rotation or transparency (pass --image_dir to check them)")
    for line in exports.report():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
