"""The annotation engine behind data_annotation.py and import_labels.py: the flags they share, the
detector ensemble (:class:`Annotator`), fusion glue, captions, descriptions and Q&A (:class:`Describer`),
and the resumable, shardable run (:func:`run_annotation`). Imported by the stage scripts; never runs itself.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vlm_annotation.describer import (
    IMAGE_KEY,
    Captioner,
    PromptBook,
    compose_description,
    context_crop,
    surface_phrase,
)
from vlm_annotation.detectors import ClassMap, RTDetrDetector, YoloDetector, load_detector
from vlm_annotation.fusion import DEFAULT_AGNOSTIC_IOU, fuse, select_boxes
from vlm_annotation.progress import ProgressLog, claim_output, progress_path, release_locks, write_from_progress
from vlm_annotation.qa import generate_qa, image_rng
from vlm_annotation.spatial import nearest, position_phrase, relation_phrase, size_word
from vlm_core.images import ImageLoadError, is_image_file, load_image
from vlm_core.io_utils import InputError
from vlm_core.runtime import (
    add_precision_flag,
    check_seed,
    plural,
    progress_bar,
    require_model,
    require_output_file,
    resolve_device,
    resolve_dtype,
    set_seed,
)

TOOL_VERSION = "0.1.0"


# Output precision: also absorbs float noise between batch sizes, so resumed and sharded
# runs write the same numbers as a single run.
BOX_DECIMALS, SCORE_DECIMALS = 2, 4


def add_describe_args(p: argparse.ArgumentParser, class_map_help: str) -> None:
    """The flags of everything after the boxes (captions, descriptions, Q&A) and of the run itself.

    Shared with ``import_labels.py``, so imported labels are described exactly like detections.
    """
    p.add_argument("--captioner_model", default="Salesforce/blip-image-captioning-base",
                   help="BLIP or BLIP-2 captioning model: local dir or hub id "
                        "(default Salesforce/blip-image-captioning-base)")
    p.add_argument("--class_map", default=None, help=class_map_help)
    p.add_argument("--prompts", default=None,
                   help="JSON file of captioning prompts per class ({\"glass\": \"a photo of a glass lying on\"}; "
                        "keys __default__ and __image__ for other classes and the whole image)")
    p.add_argument("--crop_margin", type=float, default=0.5,
                   help="context around a box for its caption, as a fraction of the box size (default 0.5)")
    p.add_argument("--caption_max_tokens", type=int, default=20, help="longest caption, in tokens (default 20)")
    p.add_argument("--max_region_qa", type=int, default=10,
                   help="objects per image (best scores first) that get per-object questions (default 10)")
    p.add_argument("--batch_size", type=int, default=8, help="images per batch (default 8)")
    p.add_argument("--caption_batch_size", type=int, default=64, help="crops per captioner call (default 64)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    add_precision_flag(p, "auto runs the captioner in bf16 on CUDA GPUs that support it (else fp16), fp32 on CPU "
                          "and MPS")
    p.add_argument("--max_images", type=int, default=None, help="annotate only the first N images (sorted by path)")
    p.add_argument("--seed", type=int, default=42, help="seed of the Q&A choices (default 42)")
    p.add_argument("--num_shards", type=int, default=1, help="split the images into this many shards (default 1)")
    p.add_argument("--shard_index", type=int, default=0, help="which shard this run annotates, 0-based (default 0)")
    p.add_argument("--restart", action="store_true",
                   help="annotate every image again: discard the progress of an earlier run and do not reuse a "
                        "finished --output_file (after changing image files in place); replaces an --output_file "
                        "that was edited by hand or not written by this tool (never another shard's)")


def describe_checks(args) -> list[tuple[bool, str]]:
    """Checks of the flags declared by :func:`add_describe_args` (the caller reports the first failure)."""
    return [
        (args.crop_margin >= 0, "--crop_margin must be >= 0"),
        (args.caption_max_tokens >= 1, "--caption_max_tokens must be at least 1"),
        (args.max_region_qa >= 0, "--max_region_qa must be >= 0"),
        (args.batch_size >= 1 and args.caption_batch_size >= 1, "batch sizes must be at least 1"),
        (args.max_images is None or args.max_images >= 1, "--max_images must be at least 1"),
        (args.num_shards >= 1, "--num_shards must be at least 1"),
        (0 <= args.shard_index < args.num_shards, "--shard_index must be in [0, --num_shards)"),
    ]


def distributed_context() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun / accelerate environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def round_objects(objects: list[dict]) -> list[dict]:
    """Number the objects of one image and round them to the precision the file stores."""
    for k, o in enumerate(objects):
        o["id"] = k
        o["bbox"] = [round(v, BOX_DECIMALS) for v in o["bbox"]]
        o["score"] = round(o["score"], SCORE_DECIMALS)
        for c in o.get("label_candidates", ()):
            c["score"] = round(c["score"], SCORE_DECIMALS)
    return objects


def round_detections(detections: list[dict]) -> list[dict]:
    """One detector's boxes of one image at the precision the file stores, before they are fused.

    The detectors' numbers differ in the last float bits between batch sizes (a batch of 4 runs other
    kernels than a batch of 1); rounded like the objects, the boxes kept with ``--keep_detector_boxes``
    are the same in any batch or shard, and fusing them again gives exactly the stored objects. A
    difference can still flip a last digit when a value lies on a rounding boundary, as for the objects
    (about once in 10^3 values for YOLO's 1e-5 noise against 0.01 px).
    """
    return [{**d, "bbox": [round(v, BOX_DECIMALS) for v in d["bbox"]], "score": round(d["score"], SCORE_DECIMALS)}
            for d in detections]


def fuse_detections(per_detector: list[list[dict]], names, width: int, height: int, method: str, weights,
                    iou_thr: float, conf: float | None = None, agnostic_iou: float | None = None,
                    agree_conf: float | None = None) -> list[dict]:
    """The objects data_annotation.py stores for one image, from each detector's boxes (``names``: the
    detectors, in the order of ``per_detector``; they become the objects' ``sources``).

    ``conf``: keep only detections scoring above it first (the detectors already did this at
    the run's ``--conf_threshold``; ``evaluate_annotations.py --sweep`` tries higher ones).
    ``agnostic_iou``: merge objects of different classes overlapping above it (None: never).
    ``agree_conf``: also keep a box above this that another detector's box overlaps (fusion.select_boxes).
    """
    if conf is not None or agree_conf is not None:
        per_detector = select_boxes(per_detector, conf, agree_conf, agnostic_iou or DEFAULT_AGNOSTIC_IOU)
    return round_objects(fuse(per_detector, list(names), width, height, method, weights, iou_thr, agnostic_iou))


class Describer:
    """Caption, describe and question the objects of a batch of images, wherever the boxes came from."""

    def __init__(self, args, device: str, prompt_book: PromptBook, vocabulary: list[str]):
        self.args, self.prompt_book, self.vocabulary = args, prompt_book, vocabulary
        dtype = str(resolve_dtype(args.precision, device)).removeprefix("torch.")
        self.captioner = Captioner(args.captioner_model, device, args.caption_batch_size,
                                   args.caption_max_tokens, dtype)
        prompts: dict[str, list[str]] = {IMAGE_KEY: [prompt_book.image]}
        for label in vocabulary:  # every prompt a crop of this run can get
            prompts.setdefault(prompt_book.key_for(label), []).append(prompt_book.for_label(label))
        self.captioner.check_prompts(prompts)

    def describe(self, names: list[str], images: list, objects: list[list[dict]],
                 extras: list[dict] | None = None) -> list[dict]:
        """One record per image. ``objects``: numbered, rounded objects with label, bbox, score, sources;
        ``extras``: more fields for each record (e.g. ``detector_boxes``)."""
        a = self.args
        # Every crop of the batch, plus each whole image, through the captioner in one go.
        crops, prompts, owners = [], [], []
        for i, (image, objs) in enumerate(zip(images, objects)):
            for o in objs:
                crops.append(context_crop(image, o["bbox"], a.crop_margin))
                prompts.append(self.prompt_book.for_label(o["label"]))
                owners.append((i, o["id"]))
            crops.append(image)
            prompts.append(self.prompt_book.image)
            owners.append((i, None))
        captions = self.captioner.caption(crops, prompts)
        scene = {i: c for (i, oid), c in zip(owners, captions) if oid is None}
        object_captions = {(i, oid): (c, p) for (i, oid), c, p in zip(owners, captions, prompts) if oid is not None}
        records = []
        for i, (name, image, objs) in enumerate(zip(names, images, objects)):
            w, h = image.size
            where = {}
            for o in objs:
                caption, prompt = object_captions[(i, o["id"])]
                surface = surface_phrase(prompt, caption)
                place = position_phrase(o["bbox"], w, h)
                where[o["id"]] = f"{surface}, {place}" if surface else place
                others = nearest(o["id"], [x["bbox"] for x in objs], 2)
                relations = [(relation_phrase(o["bbox"], objs[j]["bbox"], w, h), objs[j]["label"]) for j in others]
                o["description"] = compose_description(
                    o["label"], place, size_word(o["bbox"], w, h), surface, relations, scene[i],
                    context="" if surface else caption)
            objs = [{k: o[k] for k in ("id", "label", "bbox", "score", "sources", "description", "label_candidates")
                     if k in o} for o in objs]
            qa = generate_qa(objs, w, h, self.vocabulary, image_rng(a.seed, name), where, a.max_region_qa)
            records.append({"image": name, "width": w, "height": h, "caption": scene[i],
                            "objects": objs, "qa": qa, **(extras[i] if extras else {})})
        return records


def detector_names(args) -> list[str]:
    """The ensemble's detectors, in fusion order: yolo (``--yolo_model``), rtdetr (``--detr_model``), then each
    ``--detector`` (its ``args.detectors`` entry, named in data_annotation.py's checks)."""
    names = (["yolo"] if args.yolo_model else []) + (["rtdetr"] if args.detr_model else [])
    return names + [name for name, _, _ in args.detectors]


class Annotator:
    """Detect, fuse, caption, describe and question a batch of images."""

    def __init__(self, args, device: str, class_map: ClassMap, prompt_book: PromptBook):
        self.args = args
        self.detectors = []
        if args.yolo_model:
            self.detectors.append(YoloDetector(args.yolo_model, device, class_map, args.conf_threshold, args.imgsz,
                                               args.max_det, args.batch_size, classes=args.classes,
                                               trust=args.trust_detector_files))
        if args.detr_model:
            self.detectors.append(RTDetrDetector(args.detr_model, args.detr_processor, device, class_map,
                                                 args.conf_threshold, args.max_det, args.batch_size))
        for spec in args.detectors:
            self.detectors.append(load_detector(spec, device, class_map, args.conf_threshold, args.imgsz,
                                                args.max_det, args.batch_size, args.classes,
                                                trust=args.trust_detector_files))
        self.names = [d.name for d in self.detectors]
        vocabulary = set().union(*(d.vocabulary() for d in self.detectors))
        self.describer = Describer(args, device, prompt_book, sorted(vocabulary))

    def annotate(self, names: list[str], images: list) -> list[dict]:
        a = self.args
        per_image = list(zip(*([round_detections(dets) for dets in d.detect(images)] for d in self.detectors)))
        objects = [fuse_detections(list(dets), self.names, *image.size, a.fusion, a.detector_weights,
                                   a.iou_threshold, a.fusion_conf_threshold, a.agnostic_iou or None,
                                   a.agreement_conf_threshold)
                   for image, dets in zip(images, per_image)]
        extras = None
        if a.keep_detector_boxes:
            # The boxes the objects were fused from, so that fusing them again (evaluate_annotations.py) gives
            # exactly these objects.
            extras = [{"detector_boxes": dict(zip(self.names, dets))} for dets in per_image]
        return self.describer.describe(names, images, objects, extras)


class Skip(str):
    """What an annotator returns instead of a record for an image it refuses (the reason)."""


def _load(images_dir: Path, names: list[str], skip: dict[str, str]) -> list[tuple[str, object]]:
    """(name, RGB image) or (name, ImageLoadError) for each file."""
    out = []
    for name in names:
        if name in skip:
            out.append((name, ImageLoadError(skip[name])))
            continue
        try:
            out.append((name, load_image(images_dir / name)))
        except ImageLoadError as e:
            out.append((name, e))
    return out


def model_identity(model: str | None) -> str | None:
    """What identifies a model's files for a resumed run: a digest of the path, size and mtime of the file
    (or of every file of the folder), so a model replaced in place is another model; a hub id is its name.

    Size and mtime, not the bytes: hashing gigabytes at every start would cost more than the check is worth;
    a model copied elsewhere (new mtimes) counts as another one (its work is redone, or resumed no more
    than ``--restart`` allows).
    """
    if model is None:
        return None
    path = Path(model)
    if not path.exists():
        return f"hub:{model}"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def run_settings(args, class_map: ClassMap, prompt_book: PromptBook) -> dict:
    """The settings that decide the annotations (a resumed run must use the same ones)."""
    settings = {
        "yolo_model": args.yolo_model, "detr_model": args.detr_model,
        "detr_processor": args.detr_processor or args.detr_model, "captioner_model": args.captioner_model,
        "detectors": detector_names(args),
        "conf_threshold": args.conf_threshold, "fusion": args.fusion, "iou_threshold": args.iou_threshold,
        "detector_weights": list(args.detector_weights), "class_map": class_map.to_dict(),
        "prompts": prompt_book.to_dict(), "max_det": args.max_det, "imgsz": args.imgsz,
        **describe_settings(args),
    }
    if args.keep_detector_boxes:  # only when set: files of runs without it stay as they were
        settings["keep_detector_boxes"] = True
    if args.fusion_conf_threshold is not None:  # likewise
        settings["fusion_conf_threshold"] = args.fusion_conf_threshold
    settings["agnostic_iou"] = args.agnostic_iou
    if args.agreement_conf_threshold is not None:  # only when set, like fusion_conf_threshold
        settings["agreement_conf_threshold"] = args.agreement_conf_threshold
    if args.detectors:  # each --detector's model and processor, so a resumed run must use the same ones
        settings["detector_models"] = {name: [model, processor] for name, model, processor in args.detectors}
    if args.classes:
        settings["classes"] = list(args.classes)
    models = {"yolo_model": args.yolo_model, "detr_model": args.detr_model, "detr_processor": args.detr_processor,
              "captioner_model": args.captioner_model,
              **{f"detector {name}": model for name, model, _ in args.detectors},
              **{f"detector {name} processor": processor for name, _, processor in args.detectors if processor}}
    settings["model_files"] = {k: model_identity(v) for k, v in models.items() if v}
    return settings


def describe_settings(args) -> dict:
    return {"crop_margin": args.crop_margin, "caption_max_tokens": args.caption_max_tokens,
            "max_region_qa": args.max_region_qa, "precision": args.precision, "seed": args.seed}


def _barrier_group(world: int):
    """A gloo process group for the final barrier (CPU-only, works beside any GPU backend)."""
    import datetime

    import torch.distributed as dist
    if world <= 1:
        return None
    if not dist.is_initialized():
        # Ranks finish their shards at different times: wait as long as a big run takes.
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    return dist


def run_annotation(args, images_dir: Path, names: list[str], make_annotator, settings: dict, meta: dict,
                   start: float, skip: dict[str, str] | None = None, summary_tail: str = "") -> int:
    """Shard, resume, load, annotate, log progress and write the annotation file: the part of the stage
    that does not depend on where the boxes come from (detectors here, labels in import_labels.py).

    ``make_annotator(device)`` builds an object whose ``annotate(names, images)`` returns one record
    (or :class:`Skip`) per image; ``skip`` maps images to reasons they are skipped without loading.
    """
    skip = skip or {}
    if args.max_images:
        names = names[:args.max_images]
    rank, world, local_rank = distributed_context()
    # Round-robin (every shard gets a similar mix): first this machine's shard, then this
    # process's part of it, so machines with different numbers of processes still agree.
    machine = names[args.shard_index::args.num_shards]
    mine = machine[rank::world]
    device = resolve_device(args.device)
    if world > 1 and device == "cuda":
        device = f"cuda:{local_rank}"
    set_seed(args.seed)

    # What else makes the output "the same work": the pictures (another folder may hold other files of the
    # same names) and, with shards, the shard (a shard never takes another's file as done).
    settings = {**settings, "images_dir": str(Path(images_dir).resolve())}
    if args.num_shards > 1:
        settings["shard"] = {"index": args.shard_index, "count": args.num_shards}
    claim_output(args.output_file, settings, args.restart, lock=rank == 0)
    own = progress_path(args.output_file, args.shard_index, args.num_shards, rank, world)
    try:
        log = ProgressLog(own, settings, args.restart)
        todo = [n for n in mine if n not in log.done]
        # Models load before anything is written, so a bad model is refused with nothing on disk.
        annotator = make_annotator(device) if any(n not in skip for n in todo) else None
    except BaseException:
        release_locks(args.output_file, own)
        raise
    log.open()
    try:
        batches = [todo[i:i + args.batch_size] for i in range(0, len(todo), args.batch_size)]
        desc = "annotate" + (f" [shard {args.shard_index + 1}/{args.num_shards}]" if args.num_shards > 1 else "") \
            + (f" [rank {rank}/{world}]" if world > 1 else "")
        bar = progress_bar(total=len(mine), initial=len(mine) - len(todo), unit="img", desc=desc)
        # Read the next batch of images from disk while the models work on this one.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(_load, images_dir, batches[0], skip) if batches else None
            for b in range(len(batches)):
                loaded = pending.result()
                pending = pool.submit(_load, images_dir, batches[b + 1], skip) if b + 1 < len(batches) else None
                good = [(n, im) for n, im in loaded if not isinstance(im, ImageLoadError)]
                records = dict(zip([n for n, _ in good],
                                   annotator.annotate([n for n, _ in good], [im for _, im in good]))) if good else {}
                for name, im in loaded:
                    if isinstance(im, ImageLoadError):
                        log.add_skipped(name, str(im))
                    elif isinstance(records[name], Skip):
                        log.add_skipped(name, str(records[name]))
                    else:
                        log.add_image(records[name])
                    bar.update(1)
        bar.close()
    finally:
        log.close()

    dist = _barrier_group(world)
    if dist is not None:
        dist.barrier()  # every shard's progress file is complete
        dist.destroy_process_group()
    if rank != 0:
        return 0
    meta = {**meta, **settings}
    parts = [progress_path(args.output_file, args.shard_index, args.num_shards, r, world) for r in range(world)]
    counts = write_from_progress(args.output_file, parts, meta, set(machine))
    for part in parts:
        part.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    print(f"annotated {plural(counts['images'], 'image')}: {plural(counts['objects'], 'object')}, "
          f"{plural(counts['qa'], 'Q&A pair')}, {counts['skipped']} skipped, {seconds:.1f}s -> "
          f"{args.output_file}{summary_tail}", flush=True)
    if counts["images"] == 0:
        unread = "the one image could not be read" if counts["skipped"] == 1 else \
            f"none of the {counts['skipped']} images could be read"
        print(f"error: {unread}; reasons are under 'skipped' in {args.output_file}", file=sys.stderr, flush=True)
        return 1
    return 0


def check_describe_paths(args, inputs: dict) -> None:
    """The output file, seed and captioner of :func:`add_describe_args`, checked with the other flags."""
    require_output_file(args.output_file, "--output_file", {
        **inputs, "--captioner_model": args.captioner_model, "--class_map": args.class_map,
        "--prompts": args.prompts})
    if is_image_file(args.output_file):
        raise InputError(f"--output_file: {args.output_file} is an image path; give a .json file")
    check_seed(args.seed)
    args.captioner_model = require_model(args.captioner_model, "--captioner_model")


def load_describe_files(args) -> tuple[ClassMap, PromptBook]:
    """The --class_map and --prompts files, each read and checked by the module that owns its format."""
    return ClassMap.from_file(args.class_map), PromptBook.from_file(args.prompts)
