"""Merge the annotation files of a sharded run into one, equal to a single-process run.

    python vlm_annotation/merge_annotations.py \\
        --input_files ann.0.json ann.1.json --output_file annotations.json

Each shard comes from ``data_annotation.py --num_shards N --shard_index K`` (on as many
machines as you like). The shards must have been made with the same settings, and every
shard of the run must be there; images are sorted by path, as a single run writes them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vlm_annotation.io_utils import InputError
from vlm_annotation.progress import write_annotations_stream
from vlm_annotation.runtime import report_input_errors, require_output_file, require_path
from vlm_annotation.schema import load_annotations

# Meta keys that may differ between shards (machines mount the images in different places).
_PER_SHARD_META = ("shard", "images_dir")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_files", nargs="+", required=True, help="the shard annotation files to merge")
    p.add_argument("--output_file", required=True, help="merged annotation file to write")
    return p.parse_args(argv)


def _common_meta(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in _PER_SHARD_META}


def merge(paths: list[Path]) -> tuple[list[dict], list[dict], dict]:
    """Images, skipped and meta of the merged file; raises InputError on incompatible shards."""
    images: dict[str, dict] = {}
    skipped: dict[str, dict] = {}
    meta, first = None, None
    shard_ids, shard_counts = set(), set()
    for path in paths:
        data = load_annotations(path)
        m = data.get("meta", {})
        if meta is None:
            meta, first = m, path
        elif _common_meta(m) != _common_meta(meta):
            diff = sorted(k for k in set(_common_meta(m)) | set(_common_meta(meta)) if m.get(k) != meta.get(k))
            raise InputError(f"{path}: made with other settings than {first} ({', '.join(diff[:5])})")
        if "shard" in m:
            if m["shard"]["index"] in shard_ids:
                raise InputError(f"{path}: shard {m['shard']['index']} given twice")
            shard_ids.add(m["shard"]["index"])
            shard_counts.add(m["shard"]["count"])
        for rec in data["images"]:
            if rec["image"] in images or rec["image"] in skipped:
                raise InputError(f"{path}: {rec['image']} is also in another input file")
            images[rec["image"]] = rec
        for rec in data.get("skipped", []):
            if rec["image"] in images or rec["image"] in skipped:
                raise InputError(f"{path}: {rec['image']} is also in another input file")
            skipped[rec["image"]] = rec
    if len(shard_counts) > 1:
        raise InputError(f"the input files come from runs with different --num_shards: {sorted(shard_counts)}")
    if shard_counts:
        missing = sorted(set(range(shard_counts.pop())) - shard_ids)
        if missing:
            raise InputError(f"shard(s) {', '.join(map(str, missing))} missing from --input_files")
    merged_meta = {k: v for k, v in (meta or {}).items() if k != "shard"}
    return ([images[k] for k in sorted(images)], [skipped[k] for k in sorted(skipped)], merged_meta)


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    paths = [require_path(p, "--input_files", "file") for p in args.input_files]
    require_output_file(args.output_file, "--output_file", {f"--input_files ({p})": p for p in paths})
    images, skipped, meta = merge(paths)
    counts = write_annotations_stream(args.output_file, images, skipped, meta)
    print(f"merged {len(paths)} files: {counts['images']} images, {counts['objects']} objects, "
          f"{counts['qa']} Q&A pairs, {counts['skipped']} skipped, {time.perf_counter() - start:.1f}s "
          f"-> {args.output_file}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
