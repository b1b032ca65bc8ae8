"""The synthetic world's ground truth as an annotation file: objects from the COCO labels, descriptions
and Q&A pairs composed by the toolkit's own code (:func:`truth_annotations`). The command is world/make_truth.py.
"""
from __future__ import annotations

from vlm_annotation.describer import compose_description
from vlm_annotation.qa import generate_qa, image_rng
from vlm_annotation.spatial import nearest, position_phrase, relation_phrase, size_word


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
            "meta": {"tool": "world/make_truth.py", "ground_truth": True, "seed": seed,
                     "max_region_qa": max_region_qa}}
