"""Pretrain the world LLaVA's vision tower on the training pool's boxes, as a stand-in for CLIP pretraining.

    python world/pretrain_vision.py --coco world/train.json --image_dir world/train_images \
        --base_model world_output/models/llava_random --out world_output/models/llava --minutes 1.25

A real LLaVA starts from a pretrained CLIP tower whose patch features already say what is where; the
world LLaVA (``world/make_llava.py``) starts from random weights, and trained only through the language
model's loss its tower learns the ground's colour but not the objects: the VLM answered every count
question with one number (0.155 against a majority of 0.16). So the tower is pretrained first, like any
other upstream model, on the world's training pool (its ground truth, never the held-out scenes), with
two heads that are thrown away afterwards:

* per patch: the class of the object over the patch's centre, or background (a box-level
  segmentation; the smaller object wins where boxes overlap), so every image token learns what lies on it;
* per image: the number of objects, from the mean of the patch features (the pooling a language
  model's attention starts from), or from the CLS token when the model keeps it as an image token
  (``world/make_llava.py --feature_strategy full``).

With ``--box_aware 1`` (the default) it also learns what the guide's region questions ask (issue 24):

* per patch on an object: that object's 3x3 cell of the image and size word (the describer's words,
  ``vlm_annotation/spatial.py``) and the digits its box text starts with in LLaVA-1.5's frame
  (``[0.27, ...]``: 2 and 7 for each coordinate), so an image token says where the object it lies on is;
* per patch: the tenths digit of its own centre's x and y in that frame (:func:`patch_places`), so an image
  token says where it lies in the digits of a box question;
* per image: the surface, and, on ``--boxed_views`` extra views of each image with one object outlined
  by the visual box prompt (``vlm_core.images.draw_box_prompt``, what ``--box_prompt visual`` draws),
  the outlined object's class, cell and size.

Its held-out figures on the world (800 steps): on the detectors' 720 scenes it overfitted (count 0.28,
outlined class 0.31), on 2700 scenes of the same pool it did not (count 0.44, outlined class 0.40, outlined
cell 0.73, surface 1.00), hence ``world.sh``'s ``WORLD_TOWER_SCENES``. Without the surface head the box heads
crowded the surface out of the features and the VLM named the surface right 0.29 of the time (0.99 with it).
Images of 128 px with 16 px patches (the same 64 tokens) did no better than 64 px and took 3.5x as long.

A Qwen-VL family's world model (``world/make_family.py``) has its own tower, ``visual``, whose merger turns each
``2 x 2`` window of patches into one token over the image as the processor resized it (no padding): the heads then
read the merger's tokens, the ones its language model reads, on each image's own grid (:func:`load_token_pool`),
without the digits and place heads (LLaVA-1.5's frame words); ``--tower_out`` writes that ``visual``
(``world/models/towers/<family>``, what ``make_family.py --vision_tower_from`` reads).

Images are padded to a square with the processor's mean colour (LLaVA) and processed by the model's own
image processor, exactly as ``train_vlm.py`` feeds them. The steps run in the loop the world
trainers share (``world/training.py``), at a constant learning rate, until ``--max_steps`` or
``--minutes``. The result is the whole LLaVA (language model and projector unchanged) written to
``--out`` with its processor, loaded by ``train_vlm.py --base_model OUT`` like any checkpoint;
``OUT/pretrain_info.json`` records the arguments, seed, steps, seconds, the loss curve and the
per-patch and count accuracy on the last 10% of the pool (held out from this pretraining).

``world/world.sh`` then keeps the tower frozen while ``train_vlm.py`` teaches the language model and
projector, as LLaVA-1.5 keeps its CLIP tower frozen. Measured on the world (tuning runs, 4500 annotated
held-out scenes, count, surface and location questions, 800 VLM steps of 16, 400 test scenes):
``location`` answers rose from 0.056 to 0.28 with this pretraining (the question names an object, and
the image tokens now say where each class lies). ``count`` stayed at the majority answer (0.147 against
0.155) as long as ``--train_vision_tower`` trained the tower on at 1e-3 (0.13-0.20 over batch sizes 16-64,
ground-truth or detector labels), and rose to 0.39 with the tower frozen (seeds 0 and 1: 0.390, 0.388;
at a tower learning rate of 1e-4, 0.393). The count head alone teaches less: trained without the per-patch
head, count-only probes reached 0.22 against 0.40 with it. A third head on box centres (one patch per
object) did not help (0.375).
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

if __package__ in (None, ""):  # run as a file: its folder is not an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_annotation.label_readers import load_coco  # noqa: E402
from vlm_annotation.spatial import position_word, size_word  # noqa: E402
from vlm_core.boxes import pixel_to_square  # noqa: E402
from vlm_core.io_utils import InputError  # noqa: E402
from world.training import train_for, warmup_cosine, write_folder, write_llava  # noqa: E402

MAX_COUNT = 8  # the count head's last class is "8 or more"
# The describer's words for where an object is and how big (vlm_annotation/spatial.py), as class indices.
CELLS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
SIZES = ("small", "medium-sized", "large")


def covering_objects(boxes: list[list[float]], width: float, height: float, grid: int) -> list[int]:
    """Row-major ``grid x grid`` map of the padded square: the index of the box over each patch's centre, -1 where
    none is.

    ``boxes`` are pixel ``[x1, y1, x2, y2]`` of the unpadded image; a patch takes the box its centre
    lies in, the smallest one where several overlap (it is the one on top, or would be hidden).
    """
    return covering_grid([pixel_to_square(b, width, height) for b in boxes], grid, grid)


def covering_grid(boxes: list[list[float]], rows: int, cols: int) -> list[int]:
    """Row-major ``rows x cols`` map of a frame the ``boxes`` are given in as 0..1 ``[x1, y1, x2, y2]``: the index of
    the box over each cell's centre (the smallest where several overlap), -1 where none is."""
    cells = [-1] * (rows * cols)
    order = sorted(range(len(boxes)), key=lambda i: -(boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1]))
    for i in order:  # largest first: smaller boxes overwrite
        x1, y1, x2, y2 = boxes[i]
        for row in range(rows):
            cy = (row + 0.5) / rows
            if not y1 <= cy <= y2:
                continue
            for col in range(cols):
                if x1 <= (col + 0.5) / cols <= x2:
                    cells[row * cols + col] = i
    return cells


def patch_targets(boxes: list[list[float]], classes: list[int], width: float, height: float, grid: int) -> list[int]:
    """Row-major ``grid x grid`` class map (0 background, class + 1 inside a box) of the padded square
    (:func:`covering_objects`)."""
    return [0 if i < 0 else classes[i] + 1 for i in covering_objects(boxes, width, height, grid)]


def box_digits(box: list[float], width: float, height: float) -> list[int]:
    """The digits the box's text starts with, per coordinate: its tenths (0-9, 10 for 1.00) and hundredths, as
    ``format_box`` writes the box in LLaVA-1.5's padded-square frame (``[0.27, 0.20, ...]`` -> 2, 7, 2, 0, ...)."""
    digits = []
    for v in pixel_to_square(box, width, height):
        hundredths = int(f"{min(max(v, 0.0), 1.0):.2f}".replace(".", ""))  # the rounding format_box does
        digits += [hundredths // 10, hundredths % 10]
    return digits


def patch_places(grid: int) -> list[list[int]]:
    """Row-major, per patch of the padded square: the tenths digit of its centre's x and of its y, the first digit a
    box's text gives in LLaVA-1.5's frame (``[0.27, ...]``). Taught so that every image token says where it lies in the
    words a box question uses: the language model can then match a box's digits to the tokens under it."""
    tenths = [min(9, int(10 * (k + 0.5) / grid)) for k in range(grid)]
    return [[tenths[col], tenths[row]] for row in range(grid) for col in range(grid)]


def object_facts(box: list[float], width: float, height: float) -> tuple[int, int, list[int]]:
    """What the describer says of an object's place, as class indices: its 3x3 cell of the image
    (:data:`CELLS`), its size word (:data:`SIZES`), and the digits of its box text (:func:`box_digits`)."""
    return (CELLS.index(position_word(box, width, height)), SIZES.index(size_word(box, width, height)),
            box_digits(box, width, height))


def cover_targets(scene: dict, cover: list[int]) -> tuple[list[int], list[int], list[int]]:
    """Per patch or token whose covering object is ``cover[i]`` (-1: none): the class map (0: background, else the
    class + 1), and the object's cell and size (-100 off objects: not scored)."""
    facts = scene["facts"]
    return ([0 if i < 0 else scene["classes"][i] + 1 for i in cover],
            [-100 if i < 0 else facts[i][0] for i in cover], [-100 if i < 0 else facts[i][1] for i in cover])


def pool_surfaces(coco: dict) -> list[str]:
    """The surfaces of the pool's scenes, sorted: the surface head's classes."""
    return sorted({img.get("surface", "") for img in coco["images"]})


VIEW_KEYS = ("counts", "boxed_class", "boxed_cell", "boxed_size", "surface", "image")  # one value per view


def pool_views(coco: dict, image_dir: Path, boxed_views: int = 0, seed: int = 0):
    """Every image of a COCO file as views for the tower: one as it is and ``boxed_views`` more with one of its objects
    (drawn at random) outlined by the visual box prompt (:func:`vlm_core.images.draw_box_prompt`, the toolkit's own
    drawing, in the first colour a question names). Yields ``(view, scene, targets)`` per view: ``scene`` holds the
    image's size, pixel ``boxes``, ``classes`` and :func:`object_facts`; ``targets`` the per-view ones of
    :data:`VIEW_KEYS` (the number of objects, the outlined object's class, cell and size, 0 with no outline; the
    surface, an index into :func:`pool_surfaces`; the image's index). An image that cannot be read is reported and
    left out; none readable is an :class:`InputError`."""
    import random

    from vlm_core.images import BOX_PROMPT_COLOURS, ImageLoadError, draw_box_prompt, load_image

    colour = next(iter(BOX_PROMPT_COLOURS))
    rng = random.Random(seed)
    cat_index = {c["id"]: i for i, c in enumerate(coco["categories"])}
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    surfaces = pool_surfaces(coco)
    read = 0
    for n, img in enumerate(coco["images"]):
        anns = by_image.get(img["id"], [])
        w, h = img["width"], img["height"]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        classes = [cat_index[a["category_id"]] for a in anns]
        scene = {"width": w, "height": h, "boxes": boxes, "classes": classes,
                 "facts": [object_facts(b, w, h) for b in boxes]}
        try:
            image = load_image(image_dir / img["file_name"])
        except ImageLoadError as e:  # reported and left out of the pool; the pretraining goes on
            print(f"warning: skipped {img['file_name']}: {e}", file=sys.stderr, flush=True)
            continue
        read += 1
        outlined = [None] + ([rng.randrange(len(boxes)) for _ in range(boxed_views)] if boxes else [])
        for k in outlined:
            view = image if k is None else draw_box_prompt(image, [{"bbox": boxes[k], "colour": colour}])
            facts = None if k is None else scene["facts"][k]
            yield view, scene, {"counts": min(len(anns), MAX_COUNT),
                                "boxed_class": 0 if k is None else classes[k] + 1,
                                "boxed_cell": 0 if k is None else facts[0] + 1,
                                "boxed_size": 0 if k is None else facts[1] + 1,
                                "surface": surfaces.index(img.get("surface", "")), "image": n}
    if not read:
        raise InputError(f"--image_dir {image_dir}: none of the {len(coco['images'])} images of the COCO file could "
                         "be read")


def load_pool(coco: dict, image_dir: Path, image_processor, grid: int, boxed_views: int = 0, seed: int = 0):
    """Every image of a COCO file as the tower's training examples, a dict of tensors (:func:`pool_views`: each image
    as it is and ``boxed_views`` times with one object outlined). Targets per patch: the class over it
    (:func:`patch_targets`), and for patches on an object that object's cell, size and box digits (-100 elsewhere: not
    scored); per view: the number of objects, and the outlined object's class, cell and size (0: no outline).
    """
    import torch

    from vlm_core.boxes import pad_to_square

    fill = tuple(float(v) for v in image_processor.image_mean)
    rows: dict[str, list] = {k: [] for k in ("pixels", "maps", "cells", "sizes", "digits", *VIEW_KEYS)}
    last_scene = cover = None
    for view, scene, targets in pool_views(coco, image_dir, boxed_views, seed):
        if scene is not last_scene:  # the patch targets are the same for every view of an image
            last_scene, facts = scene, scene["facts"]
            cover = covering_objects(scene["boxes"], scene["width"], scene["height"], grid)
            maps, patch_cell, patch_size = cover_targets(scene, cover)
            patch_digits = [[-100] * 8 if i < 0 else facts[i][2] for i in cover]
        rows["pixels"].append(image_processor(images=pad_to_square(view, fill), return_tensors="pt")
                              ["pixel_values"][0])
        rows["maps"].append(maps)
        rows["cells"].append(patch_cell)
        rows["sizes"].append(patch_size)
        rows["digits"].append(patch_digits)
        for k in VIEW_KEYS:
            rows[k].append(targets[k])
    pool = {k: torch.tensor(v) for k, v in rows.items() if k != "pixels"}
    pool["pixels"] = torch.stack(rows["pixels"])
    pool["n_surfaces"] = len(pool_surfaces(coco))
    return pool


def load_token_pool(coco: dict, image_dir: Path, image_processor, merge: int, boxed_views: int = 0, seed: int = 0):
    """:func:`load_pool` for a Qwen-VL vision tower, whose image tokens are not a fixed grid of a padded square: the
    processor resizes each image (``smart_resize``, no padding) to a grid of patches that ``merge x merge`` windows
    turn into tokens. Per view: its patches and ``image_grid_thw``; per token of its ``(h/merge) x (w/merge)`` grid over
    the image itself: the class of the object over the token's centre (:func:`covering_grid`), that object's cell and
    size (-100 off objects); per view the count, the surface and the outlined object's class, cell and size. The
    per-token targets are lists of tensors, one per view (the token counts differ with the aspect ratio). The views
    are kept as images and processed batch by batch (:func:`qwen_pixels`): their patches, upscaled to ~64 tokens,
    take 25 times the memory of the image."""
    import torch

    rows: dict[str, list] = {k: [] for k in ("views", "grid", "maps", "cells", "sizes", *VIEW_KEYS)}
    last_scene = None
    for view, scene, targets in pool_views(coco, image_dir, boxed_views, seed):
        if scene is not last_scene:  # every view of an image has its size, hence its grid and token targets
            last_scene, w, h = scene, scene["width"], scene["height"]
            thw = image_processor(images=view, return_tensors="pt")["image_grid_thw"][0]
            gh, gw = int(thw[1]) // merge, int(thw[2]) // merge
            cover = covering_grid([[b[0] / w, b[1] / h, b[2] / w, b[3] / h] for b in scene["boxes"]], gh, gw)
            maps, cells, sizes = (torch.tensor(t) for t in cover_targets(scene, cover))
        rows["views"].append(view)
        rows["grid"].append(thw)
        rows["maps"].append(maps)
        rows["cells"].append(cells)
        rows["sizes"].append(sizes)
        for k in VIEW_KEYS:
            rows[k].append(targets[k])
    pool = {k: torch.tensor(rows[k]) for k in VIEW_KEYS}
    pool.update({k: rows[k] for k in ("views", "maps", "cells", "sizes")})
    pool["grid"] = torch.stack(rows["grid"])
    pool["n_surfaces"] = len(pool_surfaces(coco))
    return pool


def qwen_pixels(pool: dict, rows: list[int], image_processor):
    """The patches and ``image_grid_thw`` of the pool's views ``rows``, as the family's processor gives them."""
    processed = image_processor(images=[pool["views"][i] for i in rows], return_tensors="pt")
    return processed["pixel_values"], processed["image_grid_thw"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco", required=True, help="COCO json of the images to pretrain on: the world's train.json "
                   "(ground truth), or annotations exported by export_annotations.py --format coco")
    p.add_argument("--image_dir", required=True, help="folder of the COCO file's images")
    p.add_argument("--base_model", required=True, help="LLaVA folder to start from (world/make_llava.py's output)")
    p.add_argument("--out", required=True, help="folder to write the LLaVA with the pretrained tower to")
    p.add_argument("--minutes", type=float, default=1.25, help="wall-clock cap of the whole run, loading included (default 1.25)")
    p.add_argument("--max_steps", type=int, default=2000, help="step cap (default 2000; the minutes usually stop it)")
    p.add_argument("--batch_size", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                   help="learning rate schedule: constant (default; the committed world/models/tower) or cosine down to "
                   "2%% of the rate over --max_steps after a warm-up of 2%% of them")
    p.add_argument("--tower_out", default=None,
                   help="also write the tower alone (a CLIPVisionModel with pretrain_info.json) to this folder: what "
                   "world/models/tower holds and world/make_llava.py --vision_tower_from reads")
    p.add_argument("--max_images", type=int, default=0, help="use the first N images of the pool (default 0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the heads, the outlined objects and the batches "
                   "(default 0)")
    p.add_argument("--box_aware", type=int, choices=(0, 1), default=1,
                   help="1 (default): also teach, per patch, the cell, size and box digits of the object on it, and per "
                   "image the class, cell and size of the object outlined by a visual box prompt; 0: class map and "
                   "count only (the tower of before)")
    p.add_argument("--boxed_views", type=int, default=2, help="views of each image with one object outlined by the "
                   "visual box prompt, besides the image as it is (default 2; only with --box_aware 1)")
    args = p.parse_args(argv)
    if Path(args.out).resolve() == Path(args.base_model).resolve():
        p.error("--out must differ from --base_model (the base stays as it was)")
    if args.minutes <= 0 or args.max_steps < 1 or args.batch_size < 1 or not args.learning_rate > 0:
        p.error("--minutes, --max_steps, --batch_size and --learning_rate must be > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    start = time.perf_counter()
    base, out = Path(args.base_model), Path(args.out)
    try:
        coco = load_coco(args.coco)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.max_images:
        coco["images"] = coco["images"][:args.max_images]
    model = AutoModelForImageTextToText.from_pretrained(base)
    processor = AutoProcessor.from_pretrained(base)
    boxed_views = args.boxed_views if args.box_aware else 0
    # A Qwen-VL family (world/make_family.py) has its own vision tower, "visual", whose merger is part of it and whose
    # tokens follow each image's aspect ratio; the LLaVA families have a CLIP tower over a fixed grid.
    qwen = hasattr(model.model, "visual")
    if qwen:
        tower = model.model.visual
        grid = None
        load = functools.partial(load_token_pool, merge=tower.spatial_merge_size)
        width = model.config.text_config.hidden_size  # the merger's output, what the language model reads
    else:
        tower = model.model.vision_tower
        grid = tower.config.image_size // tower.config.patch_size
        load = functools.partial(load_pool, grid=grid)
        width = tower.config.hidden_size
    try:
        pool = load(coco, Path(args.image_dir), processor.image_processor, boxed_views=boxed_views, seed=args.seed)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_images = len(coco["images"])
    # The last 10% of the images (all their views) are held out of the pretraining and scored after it.
    n_val = max(1, n_images // 10) if n_images >= 10 else 0
    train_rows = torch.nonzero(pool["image"] < n_images - n_val).flatten()
    val_rows = torch.nonzero(pool["image"] >= n_images - n_val).flatten()

    torch.manual_seed(args.seed)
    n_classes = len(coco["categories"])
    heads = torch.nn.ModuleDict({
        "patch": torch.nn.Linear(width, 1 + n_classes), "count": torch.nn.Linear(width, MAX_COUNT + 1)})
    if args.box_aware:
        heads.update({"cell": torch.nn.Linear(width, len(CELLS)), "size": torch.nn.Linear(width, len(SIZES)),
                      "boxed_class": torch.nn.Linear(width, 1 + n_classes),
                      "boxed_cell": torch.nn.Linear(width, 1 + len(CELLS)),
                      "boxed_size": torch.nn.Linear(width, 1 + len(SIZES)),
                      "surface": torch.nn.Linear(width, pool["n_surfaces"])})
        if not qwen:  # the digits of LLaVA-1.5's box text: that frame's words, on its fixed grid
            heads.update({"digits": torch.nn.Linear(width, 8 * 11), "place": torch.nn.Linear(width, 2 * 10)})
            place = torch.tensor(patch_places(grid))  # the same for every view: (patches, 2)
    params = list(tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=0.0)
    cross_entropy = torch.nn.functional.cross_entropy

    with_cls = not qwen and model.config.vision_feature_select_strategy == "full"

    def features(rows):
        """(per-token features of the views, flattened; per-view pooled features)"""
        if qwen:  # the tokens the language model reads: the merger's output, one tensor per view
            pixels, grid_thw = qwen_pixels(pool, rows.tolist(), processor.image_processor)
            per_view = model.model.get_image_features(pixels, grid_thw).pooler_output
            return torch.cat(per_view), torch.stack([v.mean(0) for v in per_view])
        # The features LLaVA takes (its vision_feature_layer). With the "full" strategy the language model
        # also sees the CLS token: the per-image heads are taught there; else on the mean of the patches.
        hidden = tower(pixel_values=pool["pixels"][rows], output_hidden_states=True).hidden_states[
            model.config.vision_feature_layer]
        patches = hidden[:, 1:]
        return patches.flatten(0, 1), hidden[:, 0] if with_cls else patches.mean(1)

    def forward(rows):
        patches, pooled = features(rows)
        out = {"patch": heads["patch"](patches), "count": heads["count"](pooled)}
        if args.box_aware:
            out.update({k: heads[k](patches) for k in ("cell", "size")})
            if not qwen:
                out["digits"] = heads["digits"](patches).unflatten(-1, (8, 11))
                out["place"] = heads["place"](patches).unflatten(-1, (2, 10))
            out.update({k: heads[k](pooled) for k in ("boxed_class", "boxed_cell", "boxed_size", "surface")})
        return out

    def token_targets(name, rows):
        if qwen:
            return torch.cat([pool[name][i] for i in rows.tolist()])
        return pool[name][rows].flatten()

    # Each head's logits and the targets they are scored against (-100: not scored).
    def pairs(out, rows):
        yield "patch", out["patch"], token_targets("maps", rows)
        yield "count", out["count"], pool["counts"][rows]
        if args.box_aware:
            yield "cell", out["cell"], token_targets("cells", rows)
            yield "size", out["size"], token_targets("sizes", rows)
            if not qwen:
                yield "digits", out["digits"].flatten(0, 1), pool["digits"][rows].flatten()
                yield "place", out["place"].flatten(0, 1), place.expand(len(rows), -1, -1).flatten()
            for k in ("boxed_class", "boxed_cell", "boxed_size", "surface"):
                yield k, out[k], pool[k][rows]

    def loss_of(rows):
        return sum(cross_entropy(logits, target, ignore_index=-100) for _, logits, target in pairs(forward(rows), rows))

    generator = torch.Generator().manual_seed(args.seed)
    # Batches drawn with replacement, without end (the step cap and the time end the run).
    batches = iter(lambda: train_rows[torch.randint(len(train_rows), (args.batch_size,), generator=generator)], None)
    # No gradient clipping; a constant learning rate unless --schedule cosine (planned over --max_steps).
    schedule = warmup_cosine(max(1, args.max_steps // 50)) if args.schedule == "cosine" else None
    run = train_for(tower, loss_of, batches, optimizer, minutes=args.minutes, max_steps=args.max_steps,
                    start=start, schedule=schedule, log_every=50, name="vision")
    step, last_loss = run.steps, run.last_loss
    curve = [[h["step"], round(h["loss"], 4)] for h in run.history]
    scores = {}
    if n_val:
        with torch.no_grad():
            val_out = forward(val_rows)
        scores = {"val_images": n_val}
        for name, logits, target in pairs(val_out, val_rows):
            scored = target != -100
            if name in ("boxed_class", "boxed_cell", "boxed_size"):
                scored = target > 0  # the outlined views only
            right = (logits.argmax(-1) == target)[scored]
            scores[f"{name}_accuracy"] = round(float(right.float().mean()), 4) if right.numel() else None
            if name == "patch":
                objects = target > 0
                scores["object_patch_accuracy"] = (round(float((logits.argmax(-1)[objects] == target[objects])
                                                               .float().mean()), 4) if objects.any() else None)

    seconds = time.perf_counter() - start
    info = {"script": "world/pretrain_vision.py", "argv": list(sys.argv[1:] if argv is None else argv),
            "seed": args.seed,
            "base_model": str(base), "images": n_images, "train_images": n_images - n_val, "views": len(pool["image"]),
            "box_aware": args.box_aware, "boxed_views": args.boxed_views, "steps": step,
            "batch_size": args.batch_size, "learning_rate": args.learning_rate, "schedule": args.schedule,
            "seconds": round(seconds, 1), "loss_curve": curve, **scores}

    write_llava(out, base, model, info)
    if args.tower_out:
        write_folder(Path(args.tower_out), tower.save_pretrained, info)
    accuracy = (f"; held-out patch accuracy {scores['patch_accuracy']:.3f}, count {scores['count_accuracy']:.3f}"
                if scores else "")
    print(f"pretrained the vision tower for {step} steps on {n_images - n_val} scenes in {seconds:.1f}s (last loss "
          f"{last_loss:.3f}{accuracy}) -> {out}", flush=True)
    if not math.isfinite(last_loss):
        print("error: the pretraining loss is not finite", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
