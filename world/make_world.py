"""The synthetic world: litter lying on a ground surface, with COCO ground truth.

    python world/make_world.py --out world --train_images 600 --heldout_images 3000 --seed 0

writes, deterministically (every image is drawn from its own seed)::

    OUT/train_images/w0_000000.jpg ...     the pool the detectors and the captioner learn from
    OUT/train.json                          its ground truth, COCO json
    OUT/heldout_images/w1_000000.jpg ...   the held-out pool the toolkit annotates (no image shared)
    OUT/heldout.json

A scene is one ground surface (grass, sand, asphalt, gravel: textures with per-scene
colour, grain and pattern) with 0-6 objects of five classes (glass bottle, plastic bottle,
can, paper, bag; each with its own shapes and colour ranges) lying on it at any angle,
with a soft shadow, some overlapping and some cut by the image border. Images come in
several aspect ratios. The surface is a property of the scene: the COCO ``images`` entries
and every annotation carry an extra ``surface`` field (COCO readers ignore unknown keys).
Boxes are ``[x, y, w, h]`` of the visible part of the object inside the image.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

if __package__ in (None, ""):  # run as a file: world/ is not an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_core.io_utils import write_json_atomic  # noqa: E402
from vlm_core.runtime import plural  # noqa: E402

CLASSES = ("glass", "plastic", "can", "paper", "bag")
# What each class is, in words (the COCO categories carry it as "supercategory"-like text).
CLASS_TEXT = {"glass": "glass bottle", "plastic": "plastic bottle", "can": "drink can",
              "paper": "paper", "bag": "plastic bag"}
SURFACES = ("grass", "sand", "asphalt", "gravel")
# (width, height) of the images: several aspect ratios around a 128 px long side.
SIZES = ((128, 128), (128, 96), (96, 128), (128, 80), (112, 128), (128, 104))
MAX_OBJECTS = 6
POOLS = {"train": 0, "heldout": 1}
WORLD_VERSION = 1


# --------------------------------------------------------------------------- surfaces
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """Noise in [-1, 1] that varies over about ``cells`` (rows, cols) blobs."""
    grid = rng.uniform(-1, 1, (max(1, cells[0]), max(1, cells[1]))).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BILINEAR))


def _jitter(rng: np.random.Generator, colour, amount: float) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def draw_surface(name: str, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """One ground texture filling a ``w`` x ``h`` image."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fine = rng.normal(0, 1, (h, w)).astype(np.float32)
    if name == "grass":
        base = _jitter(rng, rng.choice([(70, 130, 50), (95, 145, 55), (55, 105, 40), (110, 140, 60)]), 15)
        streaks = np.asarray(Image.fromarray(rng.normal(0, 1, (h // 4 + 1, w)).astype(np.float32), mode="F")
                             .resize((w, h), Image.BILINEAR))
        light = 1 + 0.18 * streaks + 0.12 * _smooth_noise(rng, h, w, (3, 3)) + 0.06 * fine
        img = base[None, None, :] * light[..., None]
        img[..., 2] *= 0.85
    elif name == "sand":
        base = _jitter(rng, rng.choice([(205, 185, 140), (220, 200, 160), (190, 165, 120)]), 12)
        angle = rng.uniform(0, math.pi)
        freq = rng.uniform(0.15, 0.35)
        ripple = np.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)) + rng.uniform(0, 6.3))
        light = 1 + 0.05 * ripple + 0.06 * _smooth_noise(rng, h, w, (4, 4)) + 0.05 * fine
        img = base[None, None, :] * light[..., None]
    elif name == "asphalt":
        grey = rng.uniform(55, 95)
        base = np.array([grey, grey, grey * rng.uniform(1.0, 1.08)], np.float32)
        speck = (rng.random((h, w)) < 0.04) * rng.uniform(30, 70)
        light = 1 + 0.08 * _smooth_noise(rng, h, w, (5, 5)) + 0.16 * fine
        img = base[None, None, :] * light[..., None] + speck[..., None]
    elif name == "gravel":
        img = np.empty((h, w, 3), np.float32)
        img[:] = _jitter(rng, (120, 110, 95), 15)
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(pil)
        tone = rng.uniform(100, 170)
        for _ in range(int(w * h / 14)):
            r = rng.uniform(1.5, 4.0)
            x, y = rng.uniform(-3, w + 3), rng.uniform(-3, h + 3)
            g = np.clip(tone + rng.normal(0, 28), 30, 240)
            c = (int(g), int(np.clip(g * rng.uniform(0.9, 1.0), 0, 255)), int(np.clip(g * rng.uniform(0.8, 0.95),
                                                                                       0, 255)))
            draw.ellipse([x - r, y - r * rng.uniform(0.6, 1.0), x + r, y + r * rng.uniform(0.6, 1.0)], fill=c)
        img = np.asarray(pil, np.float32) * (1 + 0.05 * fine[..., None])
    else:
        raise ValueError(f"unknown surface {name!r}")
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- objects
def _c(colour, alpha: int = 255) -> tuple[int, int, int, int]:
    return (int(colour[0]), int(colour[1]), int(colour[2]), int(alpha))


def _shade(colour, factor: float) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) * factor, 0, 255)


def _bottle(draw: ImageDraw.ImageDraw, W: int, H: int, body, neck_frac: float, neck_w: float,
            alpha: int) -> tuple[float, float]:
    """An upright bottle filling W x H; returns the (top, bottom) of its body."""
    cx = W / 2
    shoulder, body_top = H * neck_frac, H * (neck_frac + 0.12)
    nw = W * neck_w / 2
    draw.rounded_rectangle([0, body_top, W - 1, H - 1], radius=W * 0.22, fill=_c(body, alpha))
    draw.polygon([(cx - nw, shoulder), (cx + nw, shoulder), (W - 1, body_top + W * 0.1), (0, body_top + W * 0.1)],
                 fill=_c(body, alpha))
    draw.rectangle([cx - nw, H * 0.04, cx + nw, shoulder + 1], fill=_c(body, alpha))
    return body_top, H


def draw_object(label: str, long_side: int, rng: np.random.Generator) -> Image.Image:
    """One object, upright, on a transparent canvas (its long side ``long_side`` pixels)."""
    s = 3  # drawn 3x larger and scaled down: smooth edges
    if label == "glass":
        aspect = rng.uniform(0.3, 0.38)
    elif label == "plastic":
        aspect = rng.uniform(0.33, 0.45)
    elif label == "can":
        aspect = rng.uniform(0.5, 0.62)
    elif label == "paper":
        aspect = rng.uniform(0.7, 1.0)
    else:
        aspect = rng.uniform(0.75, 1.0)
    H = long_side * s
    W = max(6, int(round(H * aspect)))
    img = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    if label == "glass":
        body = _jitter(rng, [(40, 140, 60), (170, 100, 30), (110, 60, 25), (60, 160, 120), (200, 225, 215)]
                       [int(rng.integers(0, 5))], 15)
        _bottle(d, W, H, body, rng.uniform(0.22, 0.3), rng.uniform(0.32, 0.4), 235)
        d.rectangle([W / 2 - W * 0.22, H * 0.02, W / 2 + W * 0.22, H * 0.07], fill=_c(_shade(body, 0.6)))
        # A highlight along the body: glass shines.
        d.rectangle([W * 0.18, H * 0.45, W * 0.3, H * 0.9], fill=_c(_shade(body, 1.7), 200))
    elif label == "plastic":
        body = _jitter(rng, [(190, 215, 235), (175, 205, 225), (215, 230, 240)][int(rng.integers(0, 3))], 12)
        top, bottom = _bottle(d, W, H, body, rng.uniform(0.14, 0.2), rng.uniform(0.42, 0.52), 215)
        cap = [(30, 70, 200), (200, 30, 30), (240, 240, 240), (30, 150, 60), (240, 200, 30)][int(rng.integers(0, 5))]
        d.rectangle([W / 2 - W * 0.3, 0, W / 2 + W * 0.3, H * 0.08], fill=_c(_jitter(rng, cap, 15)))
        band = _jitter(rng, rng.integers(30, 230, 3), 0)
        y0 = top + (bottom - top) * rng.uniform(0.2, 0.35)
        d.rectangle([0, y0, W - 1, y0 + (bottom - top) * rng.uniform(0.25, 0.35)], fill=_c(band))
        for k in range(3):  # ribs
            y = top + (bottom - top) * (0.72 + 0.08 * k)
            d.line([(W * 0.05, y), (W * 0.95, y)], fill=_c(_shade(body, 0.75)), width=max(1, s))
    elif label == "can":
        body = _jitter(rng, [(200, 30, 40), (30, 60, 180), (230, 200, 30), (40, 150, 60), (30, 30, 30),
                             (200, 200, 205)][int(rng.integers(0, 6))], 20)
        rim = _jitter(rng, (185, 185, 190), 15)
        d.rounded_rectangle([0, 0, W - 1, H - 1], radius=W * 0.12, fill=_c(body))
        d.rectangle([0, 0, W - 1, H * 0.09], fill=_c(rim))
        d.rectangle([0, H * 0.91, W - 1, H - 1], fill=_c(rim))
        stripe = _shade(body, 0.4) if body.mean() > 120 else _jitter(rng, (235, 235, 235), 10)
        y0 = H * rng.uniform(0.3, 0.55)
        d.rectangle([0, y0, W - 1, y0 + H * rng.uniform(0.08, 0.16)], fill=_c(stripe))
        d.rectangle([W * 0.12, H * 0.1, W * 0.22, H * 0.9], fill=_c(_shade(body, 1.4), 160))
    elif label == "paper":
        tone = _jitter(rng, (238, 236, 228), 12)
        if rng.random() < 0.5:  # a flat sheet with lines of text
            d.rectangle([0, 0, W - 1, H - 1], fill=_c(tone))
            ink = (60, 60, 140) if rng.random() < 0.5 else (70, 70, 70)
            for y in np.arange(H * 0.12, H * 0.9, H * rng.uniform(0.08, 0.12)):
                d.line([(W * 0.1, y), (W * rng.uniform(0.6, 0.9), y)], fill=_c(ink), width=max(1, s))
        else:  # crumpled: an irregular polygon with fold lines
            n = int(rng.integers(7, 11))
            angles = np.sort(rng.uniform(0, 2 * math.pi, n))
            radii = rng.uniform(0.7, 1.0, n)
            pts = [(W / 2 + W / 2 * r * math.cos(a), H / 2 + H / 2 * r * math.sin(a)) for a, r in zip(angles, radii)]
            d.polygon(pts, fill=_c(tone))
            for _ in range(4):
                a, b = pts[int(rng.integers(0, n))], pts[int(rng.integers(0, n))]
                d.line([a, (W / 2, H / 2), b], fill=_c(_shade(tone, 0.78)), width=max(1, s))
    else:  # bag: a body with two handles
        colour = _jitter(rng, [(245, 245, 245), (35, 35, 35), (40, 90, 200), (230, 210, 40), (200, 40, 40)]
                         [int(rng.integers(0, 5))], 15)
        top = H * rng.uniform(0.22, 0.3)
        hw = max(s, int(W * 0.07))
        d.arc([W * 0.12, H * 0.02, W * 0.48, top * 2.0], 180, 360, fill=_c(colour, 230), width=hw)
        d.arc([W * 0.52, H * 0.02, W * 0.88, top * 2.0], 180, 360, fill=_c(colour, 230), width=hw)
        wave = [(x, H - 1 - H * 0.05 * (1 + math.sin(x / W * 9 + rng.uniform(0, 6)))) for x in np.linspace(W - 1, 0, 9)]
        d.polygon([(W * 0.06, top), (W * 0.94, top)] + wave, fill=_c(colour, 225))
        for _ in range(3):  # creases
            x = W * rng.uniform(0.2, 0.8)
            d.line([(x, top + H * 0.1), (x + W * rng.uniform(-0.15, 0.15), H * 0.9)],
                   fill=_c(_shade(colour, 0.75 if colour.mean() > 100 else 1.8), 200), width=max(1, s))
    # A darker rim along the silhouette: objects stand out from the ground, as real ones do.
    alpha = img.getchannel("A")
    rim = np.asarray(alpha, np.int16) - np.asarray(alpha.filter(ImageFilter.MinFilter(2 * s + 1)), np.int16)
    rgba = np.asarray(img, np.float32).copy()
    rgba[..., :3] *= np.where(rim[..., None] > 60, 0.55, 1.0)
    img = Image.fromarray(rgba.astype(np.uint8), "RGBA")
    return img.resize((max(2, W // s), long_side), Image.LANCZOS)


# --------------------------------------------------------------------------- scenes
def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def scene_rng(seed: int, pool: str, index: int) -> np.random.Generator:
    """The generator of one image: depends only on the seed, the pool and the image index."""
    return np.random.default_rng([seed, POOLS[pool], index])


def draw_scene(seed: int, pool: str, index: int) -> tuple[Image.Image, str, list[dict]]:
    """One scene: (image, surface, objects as {label, bbox [x1, y1, x2, y2]} in drawing order)."""
    rng = scene_rng(seed, pool, index)
    w, h = SIZES[int(rng.integers(0, len(SIZES)))]
    surface = SURFACES[int(rng.integers(0, len(SURFACES)))]
    image = draw_surface(surface, w, h, rng).convert("RGBA")
    n = int(rng.integers(0, MAX_OBJECTS + 1))
    short = min(w, h)
    objects, masks = [], []
    for _ in range(n):
        label = CLASSES[int(rng.integers(0, len(CLASSES)))]
        for _attempt in range(20):
            long_side = int(short * rng.uniform(0.22, 0.5))
            sprite = draw_object(label, long_side, rng).rotate(float(rng.uniform(0, 360)), resample=Image.BICUBIC,
                                                               expand=True)
            sw, sh = sprite.size
            # Mostly inside; sometimes (about 1 in 6) hanging over the border.
            margin = 0.45 if rng.random() < 0.17 else 0.0
            x = int(rng.uniform(-margin * sw, w - sw + margin * sw))
            y = int(rng.uniform(-margin * sh, h - sh + margin * sh))
            canvas = Image.new("L", (w, h), 0)
            canvas.paste(sprite.getchannel("A"), (x, y))
            alpha = np.asarray(canvas) > 40
            total = int((np.asarray(sprite.getchannel("A")) > 40).sum())
            if total == 0 or alpha.sum() < 0.55 * total:
                continue
            ys, xs = np.nonzero(alpha)
            box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
            # Partial overlaps are fine; an object mostly hidden under another is not.
            if any(_box_iou(box, o["bbox"]) > 0.3 for o in objects):
                continue
            if any((m & alpha).sum() > 0.4 * m.sum() for m in masks):
                continue
            # Soft shadow, then the object.
            shadow = Image.new("RGBA", (w, h), (0, 0, 0, 0))
            shade = sprite.getchannel("A").point(lambda a: int(a * 0.45))
            shadow.paste(Image.new("RGBA", sprite.size, (10, 10, 10, 255)), (x + 2, y + 2), shade)
            image = Image.alpha_composite(image, shadow.filter(ImageFilter.GaussianBlur(1.2)))
            layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
            layer.paste(sprite, (x, y))
            image = Image.alpha_composite(image, layer)
            objects.append({"label": label, "bbox": box})
            masks = [m & ~alpha for m in masks] + [alpha]
            break
    # Boxes of the visible part (a later object may cover an earlier one's edge).
    final = []
    for obj, m in zip(objects, masks):
        if m.sum() < 12:
            continue
        ys, xs = np.nonzero(m)
        final.append({"label": obj["label"],
                      "bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]})
    return image.convert("RGB"), surface, final


def _render(job: tuple[int, str, int, str]) -> dict:
    seed, pool, index, path = job
    image, surface, objects = draw_scene(seed, pool, index)
    image.save(path, quality=92)
    return {"width": image.size[0], "height": image.size[1], "surface": surface, "objects": objects}


def pool_name(pool: str, index: int) -> str:
    return f"w{POOLS[pool]}_{index:06d}.jpg"


def coco_from_scenes(names: list[str], scenes: list[dict], seed: int, pool: str) -> dict:
    categories = [{"id": i + 1, "name": c, "supercategory": "litter", "description": CLASS_TEXT[c]}
                  for i, c in enumerate(CLASSES)]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for i, (name, sc) in enumerate(zip(names, scenes)):
        images.append({"id": i + 1, "file_name": name, "width": sc["width"], "height": sc["height"],
                       "surface": sc["surface"]})
        for obj in sc["objects"]:
            x1, y1, x2, y2 = obj["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat_id[obj["label"]],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                                "surface": sc["surface"]})
    return {"info": {"description": "synthetic litter world", "version": WORLD_VERSION, "seed": seed,
                     "pool": pool}, "images": images, "annotations": annotations, "categories": categories}


def write_pool(out: Path, pool: str, count: int, seed: int, workers: int = 1) -> dict:
    """Draw ``count`` scenes of ``pool`` into ``out/<pool>_images`` and write ``out/<pool>.json``.

    Skipped when the json already describes this very pool (same seed, count and version):
    the json is written last, so its presence means every image is on disk.
    """
    json_path, img_dir = out / f"{pool}.json", out / f"{pool}_images"
    if json_path.is_file():
        try:
            old = json.loads(json_path.read_text(encoding="utf-8"))
            info = old.get("info", {})
            if (info.get("seed"), info.get("version"), len(old.get("images", []))) == (seed, WORLD_VERSION, count) \
                    and all((img_dir / im["file_name"]).is_file() for im in old["images"]):
                return old
        except (OSError, ValueError):
            pass
    img_dir.mkdir(parents=True, exist_ok=True)
    names = [pool_name(pool, i) for i in range(count)]
    jobs = [(seed, pool, i, str(img_dir / n)) for i, n in enumerate(names)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            scenes = list(ex.map(_render, jobs, chunksize=64))
    else:
        scenes = [_render(j) for j in jobs]
    coco = coco_from_scenes(names, scenes, seed, pool)
    write_json_atomic(json_path, coco, indent=None)
    return coco


def write_world(out: str | Path, train_images: int, heldout_images: int, seed: int = 0, workers: int = 1) -> dict:
    out = Path(out)
    return {"train": write_pool(out, "train", train_images, seed, workers),
            "heldout": write_pool(out, "heldout", heldout_images, seed, workers)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write the world into")
    p.add_argument("--train_images", type=int, default=600, help="scenes in the training pool (default 600)")
    p.add_argument("--heldout_images", type=int, default=3000, help="scenes in the held-out pool (default 3000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the world (default 0)")
    p.add_argument("--workers", type=int, default=2, help="processes drawing scenes (default 2)")
    args = p.parse_args(argv)
    if args.train_images < 0 or args.heldout_images < 0:
        p.error("--train_images and --heldout_images must be >= 0")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.seed < 0:
        p.error("--seed must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    world = write_world(args.out, args.train_images, args.heldout_images, args.seed, args.workers)
    n_obj = {k: len(v["annotations"]) for k, v in world.items()}
    print(f"world: {plural(args.train_images, 'training scene')} ({plural(n_obj['train'], 'object')}), "
          f"{plural(args.heldout_images, 'held-out scene')} ({plural(n_obj['heldout'], 'object')}), seed {args.seed}, {time.perf_counter() - start:.1f}s -> {args.out}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
