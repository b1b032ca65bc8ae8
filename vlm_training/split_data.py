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

Any size: the input is read twice, a record at a time (first the keys, 8 bytes an image, then
the records, each written straight to its split), so memory does not grow with the file.
A ``.jsonl`` input or output name selects the JSONL layout (see ``vlm_core/schema.py``).

All or nothing: the three files are written to temp files first and then renamed as a set,
with a marker ``.<name>.split-pending`` beside each output for the time of the renames. A run
killed in between leaves the markers; ``convert_to_llava_format.py`` refuses a split file that
has one, and running split again (the same command) writes all three files anew.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import sys
from array import array
from pathlib import Path

from tqdm import tqdm  # disable=None: no bar at all when stderr is not a terminal

from vlm_core.flags import ANNOTATION_FILE, flag_names
from vlm_core.io_utils import InputError, fsync_dir, write_json_atomic
from vlm_core.runtime import (
    plural,
    remove_stale_temps,
    report_input_errors,
    require_output_file,
    single_writer,
)
from vlm_core.schema import AnnotationReader, AnnotationWriter, pending_marker

SPLITS = ("train", "val", "test")
SPLIT_METHOD = "sha256(seed:image) key, images ordered by key, cut at rounded cumulative ratios"
# Ratios that sum to 1 + float noise (0.8 + 0.1 + 0.1) are accepted as summing to 1.
_RATIO_EPS = 1e-9


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(*flag_names("--input_file", ANNOTATION_FILE), required=True, help="annotation file to split (annotations.json)")
    p.add_argument("--train_file", default="train.json", help="where to write the train split")
    p.add_argument("--val_file", default="val.json", help="where to write the validation split")
    p.add_argument("--test_file", default=None,
                   help="where to write the test split (default: test.json beside --val_file; "
                        "test.jsonl when --val_file ends in .jsonl)")
    p.add_argument("--train_ratio", type=float, default=0.8, help="share of images for training (> 0)")
    p.add_argument("--val_ratio", type=float, default=0.1,
                   help="share of images for validation (>= 0); the rest is the test split")
    p.add_argument("--seed", type=int, default=42,
                   help="seed of the image-path hash; the same seed gives the same split")
    args = p.parse_args(argv)
    if args.test_file is None:  # test.json (test.jsonl for a .jsonl --val_file) beside the val file
        val = Path(args.val_file)
        args.test_file = str(val.parent / ("test.jsonl" if val.name.endswith(".jsonl") else "test.json"))
    # Every flag is checked here, once: ratios, then input and output paths.
    args.test_ratio = check_ratios(args.train_ratio, args.val_ratio)
    args.outputs = _check_outputs(args)
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


def image_key_int(image: str, seed: int) -> int:
    """The 64-bit integer behind :func:`image_key` (exact, for sorting and comparing)."""
    path = image.replace("\\", "/")
    digest = hashlib.sha256(f"{seed}:{path}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big")


def image_key(image: str, seed: int) -> float:
    """A fixed pseudo-random number in [0, 1) for an image path (depends on nothing else)."""
    return image_key_int(image, seed) / 2.0 ** 64


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
            notes.append(f"only {plural(n, 'image')}: the {name} split is empty although --{name}_ratio > 0"
                         if name != "test" else
                         f"only {plural(n, 'image')}: the test split is empty although the ratios leave {test_ratio:g} for it")
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


class Assigner:
    """Which split an image goes to, from the sorted keys of all images (8 bytes an image).

    The rule of :func:`assign_splits` (rank of ``(key, path)``, cut at the split counts) without
    holding the paths: an image whose key is unique has rank = number of smaller keys, so it
    is in train when its key is at most the ``n_train``-th smallest, and so on. Images that share
    a key (never seen with SHA-256, but ``a\\b.jpg`` and ``a/b.jpg`` do) are ranked by path,
    as :func:`assign_splits` ranks them; ``tied_paths`` gives their paths.
    """

    def __init__(self, keys: array, n_train: int, n_val: int):
        import numpy as np
        self.sorted = np.sort(np.frombuffer(keys, dtype=np.uint64))
        n = len(self.sorted)
        self.n_train, self.n_val = n_train, n_val
        big = 1 << 64  # above every key: an empty cut takes nothing
        self.cut1 = int(self.sorted[n_train - 1]) if n_train else -1
        self.cut2 = int(self.sorted[n_train + n_val - 1]) if n_train + n_val else -1
        if n_train + n_val == n:
            self.cut2 = big
        same = np.flatnonzero(self.sorted[1:] == self.sorted[:-1])
        self.tied: dict[int, list[str]] = {int(self.sorted[k]): [] for k in same}

    def add_tied(self, key: int, image: str) -> None:
        self.tied[key].append(image)

    def split_of(self, key: int, image: str) -> str:
        if key in self.tied:
            import numpy as np
            rank = int(np.searchsorted(self.sorted, np.uint64(key), "left")) + sorted(self.tied[key]).index(image)
            return "train" if rank < self.n_train else "val" if rank < self.n_train + self.n_val else "test"
        return "train" if key <= self.cut1 else "val" if key <= self.cut2 else "test"


def commit_as_set(temps: dict[str, Path], outputs: dict[str, Path], generation: str) -> None:
    """Rename the fsynced temps onto the outputs as one step for readers that check the markers."""
    dirs = {p.parent.resolve() for p in outputs.values()}
    record = {"generation": generation, "files": {name: str(p) for name, p in outputs.items()}}
    for path in outputs.values():
        write_json_atomic(pending_marker(path), record)
    for d in dirs:
        fsync_dir(d)
    for name, path in outputs.items():
        os.replace(temps[name], path)
    for d in dirs:
        fsync_dir(d)
    for path in outputs.values():
        pending_marker(path).unlink(missing_ok=True)
    for d in dirs:
        fsync_dir(d)


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


def _identity(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # the reader says what is wrong with it
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read_keys(path: str, seed: int) -> tuple[array, AnnotationReader]:
    """Pass 1: validate every record once and keep only its key."""
    keys = array("Q")
    reader = AnnotationReader(path)
    for rec in tqdm(reader, desc="split: reading", unit=" images", mininterval=1.0, disable=None):
        keys.append(image_key_int(rec["image"], seed))
    return keys, reader


def _write_splits(args, outputs, assigner: Assigner, source_meta: dict, split_info: dict, n: int, stack
                  ) -> tuple[dict[str, Path], dict[str, int], dict[str, int]]:
    """Pass 2: each record straight to its split's temp file."""
    writers = {name: stack.enter_context(AnnotationWriter(outputs[name], commit=False)) for name in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    n_qa = dict.fromkeys(SPLITS, 0)
    for rec in tqdm(AnnotationReader(args.input_file, validate=False), total=n, desc="split: writing",
                    unit=" images", mininterval=1.0, disable=None):
        key = image_key_int(rec["image"], args.seed)
        name = assigner.split_of(key, rec["image"])
        writers[name].write(rec)
        counts[name] += 1
        n_qa[name] += len(rec.get("qa", []))
    for name in SPLITS:
        meta = dict(source_meta)
        meta["split"] = dict(split_info, name=name)
        writers[name].finish([], meta)
    return {name: w.temp for name, w in writers.items()}, counts, n_qa


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    test_ratio, outputs = args.test_ratio, args.outputs
    flags = {"train": "--train_file", "val": "--val_file", "test": "--test_file"}
    with contextlib.ExitStack() as stack:
        for name in SPLITS:
            stack.enter_context(single_writer(outputs[name], flags[name]))
            # A run killed while writing a pending marker leaves the marker's temp file: no writer is alive now.
            remove_stale_temps(pending_marker(outputs[name]))
        if any(pending_marker(p).exists() for p in outputs.values()):
            print("note: the last split into these files was interrupted while replacing them; "
                  "writing all three again", flush=True)
        before = _identity(args.input_file)
        keys, reader = _read_keys(args.input_file, args.seed)
        n = reader.count
        if not n:
            raise InputError(f"{args.input_file}: images: the list is empty, nothing to split")
        (n_train, n_val, _), notes = split_counts(n, args.train_ratio, args.val_ratio)
        assigner = Assigner(keys, n_train, n_val)
        if assigner.tied:  # a third, rare pass: the paths of images that share a key
            for rec in AnnotationReader(args.input_file, validate=False):
                key = image_key_int(rec["image"], args.seed)
                if key in assigner.tied:
                    assigner.add_tied(key, rec["image"])
        counts = {"train": n_train, "val": n_val, "test": n - n_train - n_val}
        split_info = {
            "method": SPLIT_METHOD, "seed": args.seed,
            "train_ratio": args.train_ratio, "val_ratio": args.val_ratio, "test_ratio": round(test_ratio, 12),
            "source_file": str(args.input_file), "images_per_split": counts,
            "skipped_in_source": len(reader.skipped),
        }
        if notes:
            split_info["notes"] = notes
        temps: dict[str, Path] = {}
        try:
            with contextlib.ExitStack() as writers:
                temps, written, n_qa = _write_splits(args, outputs, assigner, reader.meta, split_info, n, writers)
            if written != counts or _identity(args.input_file) != before:
                raise InputError(f"--input_file: {args.input_file} changed while it was being split; run again")
            generation = hashlib.sha256(keys.tobytes() + repr(sorted(split_info.items())).encode()).hexdigest()[:16]
            commit_as_set(temps, outputs, generation)
        finally:
            for tmp in temps.values():  # left only when the set was not committed
                tmp.unlink(missing_ok=True)

    for note in notes:
        print(f"note: {note}")
    for name in SPLITS:
        print(f"{name:5s}: {plural(counts[name], 'image', width=6)}, {plural(n_qa[name], 'Q&A pair', width=7)} "
              f"-> {outputs[name]}")
    print(f"split {plural(n, 'image')} (seed {args.seed}, ratios "
          f"{args.train_ratio:g}/{args.val_ratio:g}/{test_ratio:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
