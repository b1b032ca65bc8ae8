"""The synthetic world's ground truth as an annotation file of the toolkit's own schema.

    python data/world_truth.py --coco world/heldout.json --output_file world_output/truth.json \\
        [--only world_output/test.json]

Every object of the COCO file becomes an object with ``sources: ["labels"]`` and score 1.0;
its description is composed exactly as ``data_annotation.py`` composes one (the same
:func:`vlm_annotation.describer.compose_description`, position, size and relation words),
with the surface the scene truly lies on ("on the grass") and the scene caption
"litter on the grass"; the Q&A pairs come from the same
:func:`vlm_annotation.qa.generate_qa`. Converted like any annotation file, it gives the
questions of the held-out images with the answers of the ground truth, against which the
world run scores the VLM (never against the detectors' own labels). ``--only`` keeps the
images named in another annotation file (e.g. the test split).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: data/ is not an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_annotation.describer import compose_description  # noqa: E402
from vlm_annotation.io_utils import write_json_atomic  # noqa: E402
from vlm_annotation.qa import generate_qa, image_rng  # noqa: E402
from vlm_annotation.spatial import nearest, position_phrase, relation_phrase, size_word  # noqa: E402


def scene_caption(surface: str, n_objects: int) -> str:
    """What the world's captioner is taught to say of a whole image (after "a picture of")."""
    return f"litter on the {surface}" if n_objects else f"the {surface}"


def truth_record(image: dict, anns: list[dict], names: dict[int, str], vocabulary: list[str], seed: int,
                 max_region_qa: int = 10) -> dict:
    """One image record of the toolkit's schema from its COCO entry and annotations."""
    w, h = image["width"], image["height"]
    surface = image.get("surface", "")
    objs = []
    for k, a in enumerate(anns):
        x, y, bw, bh = a["bbox"]
        objs.append({"id": k, "label": names[a["category_id"]],
                     "bbox": [round(x, 2), round(y, 2), round(x + bw, 2), round(y + bh, 2)],
                     "score": 1.0, "sources": ["labels"], "surface": a.get("surface", surface)})
    scene = scene_caption(surface, len(objs))
    where = {}
    for o in objs:
        place = position_phrase(o["bbox"], w, h)
        on = f"on the {o['surface']}" if o["surface"] else ""
        where[o["id"]] = f"{on}, {place}" if on else place
        others = nearest(o["id"], [x["bbox"] for x in objs], 2)
        relations = [(relation_phrase(o["bbox"], objs[j]["bbox"], w, h), objs[j]["label"]) for j in others]
        o["description"] = compose_description(o["label"], place, size_word(o["bbox"], w, h), on, relations, scene)
    objects = [{k: o[k] for k in ("id", "label", "bbox", "score", "sources", "description")} for o in objs]
    qa = generate_qa(objects, w, h, vocabulary, image_rng(seed, image["file_name"]), where, max_region_qa)
    return {"image": image["file_name"], "width": w, "height": h, "caption": scene, "objects": objects, "qa": qa,
            "surface": surface}


def truth_annotations(coco: dict, seed: int = 42, only: set[str] | None = None, max_region_qa: int = 10) -> dict:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    vocabulary = sorted(names.values())
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    records = [truth_record(im, by_image.get(im["id"], []), names, vocabulary, seed, max_region_qa)
               for im in coco["images"] if only is None or im["file_name"] in only]
    return {"images": records, "skipped": [],
            "meta": {"tool": "data/world_truth.py", "ground_truth": True, "seed": seed,
                     "max_region_qa": max_region_qa}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco", required=True, help="COCO ground truth written by data/make_world.py")
    p.add_argument("--output_file", required=True, help="annotation file to write (JSON)")
    p.add_argument("--only", default=None, help="annotation file whose images to keep (default: every image)")
    p.add_argument("--seed", type=int, default=42, help="seed of the Q&A choices, as data_annotation.py (default 42)")
    p.add_argument("--max_region_qa", type=int, default=10,
                   help="objects per image with per-object questions, as data_annotation.py (default 10)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    coco = json.loads(Path(args.coco).read_text(encoding="utf-8"))
    only = None
    if args.only:
        only = {r["image"] for r in json.loads(Path(args.only).read_text(encoding="utf-8"))["images"]}
    data = truth_annotations(coco, args.seed, only, args.max_region_qa)
    write_json_atomic(args.output_file, data)
    print(f"ground truth: {len(data['images'])} images, {sum(len(r['objects']) for r in data['images'])} objects, "
          f"{sum(len(r['qa']) for r in data['images'])} Q&A pairs -> {args.output_file}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
