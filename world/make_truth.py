"""The synthetic world's ground truth as an annotation file of the toolkit's own schema.

    python world/make_truth.py --coco world/heldout.json --output_file world_output/truth.json \\
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
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: world/ is not an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_annotation.label_readers import load_coco  # noqa: E402
from vlm_core.io_utils import InputError, read_json, write_json_atomic  # noqa: E402
from vlm_core.runtime import plural  # noqa: E402
from world.truth import truth_annotations  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco", required=True, help="COCO ground truth written by world/make_world.py")
    p.add_argument("--output_file", required=True, help="annotation file to write (JSON)")
    p.add_argument("--only", default=None, help="annotation file whose images to keep (default: every image)")
    p.add_argument("--seed", type=int, default=42, help="seed of the Q&A choices, as data_annotation.py (default 42)")
    p.add_argument("--max_region_qa", type=int, default=10,
                   help="objects per image with per-object questions, as data_annotation.py (default 10)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        coco = load_coco(args.coco)
        only = None
        if args.only:
            only = {r["image"] for r in read_json(args.only)["images"]}
    except (InputError, KeyError, TypeError) as e:
        detail = str(e) if isinstance(e, InputError) else f"{args.only}: expected an annotations file with images"
        print(f"error: {detail}", file=sys.stderr)
        return 2
    data = truth_annotations(coco, args.seed, only, args.max_region_qa)
    write_json_atomic(args.output_file, data)
    n_objects, n_qa = sum(len(r["objects"]) for r in data["images"]), sum(len(r["qa"]) for r in data["images"])
    print(f"ground truth: {plural(len(data['images']), 'image')}, {plural(n_objects, 'object')}, "
          f"{plural(n_qa, 'Q&A pair')} -> {args.output_file}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
