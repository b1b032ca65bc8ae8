"""Stage 2: split an annotation file into train / val / test by image.

    python vlm_training/split_data.py --input_file annotations.json \
        --train_file train.json --val_file val.json --train_ratio 0.8 --val_ratio 0.1

The rest (1 - train - val) goes to ``--test_file`` (default: ``test.json`` beside the val
file). Every image lands in exactly one split, with all its objects and Q&A pairs, so no
image is seen in training and scored in evaluation.

How an image is placed: a seeded SHA-256 of its path gives it a fixed key in [0, 1); images
are ordered by key and cut at round(N * train_ratio) and round(N * (train_ratio +
val_ratio)). That is the hash threshold rule with the counts corrected by moving only the
images nearest a cut, so the split is deterministic, ignores input order, and adding images
later moves at most a few old images that sit next to a cut (never across the whole range).
With few images every split that has a positive ratio still gets one image when there are
enough to go round (train first, then val, then test), and the script says so.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import sys
from pathlib import Path

from vlm_annotation.io_utils import InputError, write_json_atomic
from vlm_annotation.runtime import report_input_errors, require_output_file
from vlm_annotation.schema import load_annotations, validate_annotations

SPLITS = ("train", "val", "test")
SPLIT_METHOD = "sha256(seed:image) key, images ordered by key, cut at rounded cumulative ratios"
# Ratios that sum to 1 + float noise (0.8 + 0.1 + 0.1) are accepted as summing to 1.
_RATIO_EPS = 1e-9


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_file", required=True, help="annotation file to split (annotations.json)")
    p.add_argument("--train_file", default="train.json", help="where to write the train split")
    p.add_argument("--val_file", default="val.json", help="where to write the validation split")
    p.add_argument("--test_file", default=None,
                   help="where to write the test split (default: test.json beside --val_file)")
    p.add_argument("--train_ratio", type=float, default=0.8, help="share of images for training (> 0)")
    p.add_argument("--val_ratio", type=float, default=0.1,
                   help="share of images for validation (>= 0); the rest is the test split")
    p.add_argument("--seed", type=int, default=42,
                   help="seed of the image-path hash; the same seed gives the same split")
    args = p.parse_args(argv)
    if args.test_file is None:
        args.test_file = str(Path(args.val_file).parent / "test.json")
    return args


def check_ratios(train_ratio: float, val_ratio: float) -> float:
    """Validate the ratios; return the test ratio."""
    if not (math.isfinite(train_ratio) and math.isfinite(val_ratio)):
        raise InputError("--train_ratio/--val_ratio must be finite numbers")
    if train_ratio <= 0 or train_ratio > 1:
        raise InputError(f"--train_ratio must be in (0, 1], got {train_ratio}")
    if val_ratio < 0:
        raise InputError(f"--val_ratio must be >= 0, got {val_ratio}")
    total = train_ratio + val_ratio
    if total > 1 + _RATIO_EPS:
        raise InputError(f"--train_ratio + --val_ratio must be <= 1, got {train_ratio} + {val_ratio} = {total:g}")
    return max(0.0, 1.0 - total) if total < 1 - _RATIO_EPS else 0.0


def image_key(image: str, seed: int) -> float:
    """A fixed pseudo-random number in [0, 1) for an image path (depends on nothing else)."""
    path = image.replace("\\", "/")
    digest = hashlib.sha256(f"{seed}:{path}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + _RATIO_EPS))


def split_counts(n: int, train_ratio: float, val_ratio: float) -> tuple[tuple[int, int, int], list[str]]:
    """Images per split for ``n`` images, and notes on any adjustment for small ``n``.

    Cuts at rounded cumulative ratios (monotone in ``n``, so growing the input moves the
    cuts by at most the number of images added). Then every split with a positive ratio
    gets at least one image if there are enough images, taken from the largest split.
    """
    test_ratio = check_ratios(train_ratio, val_ratio)
    cut1 = min(n, _round_half_up(n * train_ratio))
    cut2 = min(n, max(cut1, _round_half_up(n * (train_ratio + val_ratio))))
    if test_ratio == 0.0:
        cut2 = n
    counts = {"train": cut1, "val": cut2 - cut1, "test": n - cut2}
    ratios = {"train": train_ratio, "val": val_ratio, "test": test_ratio}
    notes = []
    for name in SPLITS:
        if n == 0 or ratios[name] <= 0 or counts[name] > 0:
            continue
        donor = max((s for s in SPLITS if counts[s] > 1), key=lambda s: counts[s], default=None)
        if donor is None:
            notes.append(f"only {n} image(s): the {name} split is empty although --{name}_ratio > 0"
                         if name != "test" else
                         f"only {n} image(s): the test split is empty although the ratios leave {test_ratio:g} for it")
            continue
        counts[donor] -= 1
        counts[name] += 1
        notes.append(f"{n} images: moved 1 image from {donor} to {name} so that every split "
                     f"with a positive ratio has one")
    return (counts["train"], counts["val"], counts["test"]), notes


def assign_splits(images: list[str], train_ratio: float, val_ratio: float, seed: int
                  ) -> tuple[dict[str, str], list[str]]:
    """Map each image path to "train" / "val" / "test"; also return notes for small inputs."""
    (n_train, n_val, _), notes = split_counts(len(images), train_ratio, val_ratio)
    # Ties in the key are practically impossible; the path breaks them deterministically.
    order = sorted(images, key=lambda im: (image_key(im, seed), im))
    assignment = {}
    for rank, im in enumerate(order):
        assignment[im] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return assignment, notes


def _check_outputs(args) -> dict[str, Path]:
    outputs = {"train": Path(args.train_file), "val": Path(args.val_file), "test": Path(args.test_file)}
    flags = {"train": "--train_file", "val": "--val_file", "test": "--test_file"}
    seen: dict[Path, str] = {Path(args.input_file).resolve(): "--input_file"}
    for name, path in outputs.items():
        require_output_file(path, flags[name])
        key = path.resolve()
        if key in seen:
            raise InputError(f"{flags[name]}: {path} is the same file as {seen[key]}")
        seen[key] = flags[name]
    return outputs


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    test_ratio = check_ratios(args.train_ratio, args.val_ratio)
    outputs = _check_outputs(args)
    data = load_annotations(args.input_file)
    records = data["images"]
    if not records:
        raise InputError(f"{args.input_file}: images: the list is empty, nothing to split")

    assignment, notes = assign_splits([r["image"] for r in records], args.train_ratio, args.val_ratio, args.seed)
    counts = {s: sum(1 for v in assignment.values() if v == s) for s in SPLITS}
    source_meta = data.get("meta", {})
    split_info = {
        "method": SPLIT_METHOD, "seed": args.seed,
        "train_ratio": args.train_ratio, "val_ratio": args.val_ratio, "test_ratio": round(test_ratio, 12),
        "source_file": str(args.input_file), "images_per_split": counts,
        "skipped_in_source": len(data.get("skipped", [])),
    }
    if notes:
        split_info["notes"] = notes
    files = {}
    for name in SPLITS:
        meta = dict(source_meta)
        meta["split"] = dict(split_info, name=name)
        # Input order is kept inside a split, so the files read like the source.
        part = {"images": [r for r in records if assignment[r["image"]] == name], "skipped": [], "meta": meta}
        files[name] = validate_annotations(part, outputs[name])

    for name in SPLITS:
        write_json_atomic(outputs[name], files[name])

    for note in notes:
        print(f"note: {note}")
    for name in SPLITS:
        n_qa = sum(len(r.get("qa", [])) for r in files[name]["images"])
        print(f"{name:5s}: {counts[name]:6d} images, {n_qa:7d} Q&A pairs -> {outputs[name]}")
    print(f"split {len(records)} images (seed {args.seed}, ratios "
          f"{args.train_ratio:g}/{args.val_ratio:g}/{test_ratio:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
