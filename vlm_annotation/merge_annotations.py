"""Merge the annotation files of a sharded run into one, equal to a single-process run.

    python vlm_annotation/merge_annotations.py \\
        --input_files ann.0.json ann.1.json --output_file annotations.json

Each shard comes from ``data_annotation.py --num_shards N --shard_index K`` (on as many
machines as you like). The shards must have been made with the same settings, and every
shard of the run must be there; images are sorted by path, as a single run writes them.

Any size: shards are sorted by path already (as an annotation run writes them), so they are
merged a record at a time, like ``sort -m``; memory does not grow with the number of images.
Inputs that are not sorted are merged through a temp file beside the output (memory: the
paths only). ``.jsonl`` inputs and outputs use the JSONL layout.
"""
from __future__ import annotations

import argparse
import heapq
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from tqdm import tqdm  # disable=None: no bar at all when stderr is not a terminal

from vlm_annotation.progress import DIGEST_KEY, RecordsDigest
from vlm_core.io_utils import InputError, dumps_line
from vlm_core.runtime import (
    plural,
    report_input_errors,
    require_output_file,
    require_path,
    single_writer,
)
from vlm_core.schema import AnnotationReader, AnnotationWriter, path_digest

# Meta keys that may differ between shards (machines mount the images in different places; each shard's
# digest of its own records).
_PER_SHARD_META = ("shard", "images_dir", DIGEST_KEY)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_files", nargs="+", required=True, help="the shard annotation files to merge")
    p.add_argument("--output_file", required=True, help="merged annotation file to write")
    args = p.parse_args(argv)
    # Every flag is checked here, once.
    args.input_paths = [require_path(f, "--input_files", "file") for f in args.input_files]
    require_output_file(args.output_file, "--output_file", {f"--input_files ({f})": f for f in args.input_paths})
    return args


def _common_meta(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in _PER_SHARD_META}


class _Unsorted(Exception):
    pass


def _sorted_records(reader: AnnotationReader, k: int) -> Iterator[tuple[str, int, dict]]:
    last = None
    for rec in reader:
        if last is not None and rec["image"] < last:
            raise _Unsorted(reader.path)
        last = rec["image"]
        yield rec["image"], k, rec


def _merged_sorted(readers: list[AnnotationReader]) -> Iterator[tuple[Path, dict]]:
    """Records of all readers in path order (each input sorted), a record at a time."""
    streams = [_sorted_records(r, k) for k, r in enumerate(readers)]
    # Equal paths come out in input order (the tie-break is the input's position), so the
    # second one is the one found "also in another input file".
    for _, k, rec in heapq.merge(*streams, key=lambda t: (t[0], t[1])):
        yield readers[k].path, rec


def _merged_by_spool(readers: list[AnnotationReader], spool_dir: Path) -> Iterator[tuple[Path, dict]]:
    """Records of all readers in path order, inputs in any order: each record is parked in a
    temp file and only ``(path, input, offset)`` is kept in memory, then read back sorted."""
    index: list[tuple[str, int, int]] = []
    with tempfile.TemporaryFile(dir=spool_dir, prefix=".merge-spool.") as spool:
        for k, reader in enumerate(readers):
            for rec in reader:
                index.append((rec["image"], k, spool.tell()))
                spool.write(dumps_line(rec) + b"\n")
        index.sort()
        for _, k, offset in index:
            spool.seek(offset)
            yield readers[k].path, json.loads(spool.readline())


def _merge_into(writer: AnnotationWriter, readers: list[AnnotationReader], records) -> dict:
    counts = {"images": 0, "objects": 0, "qa": 0, "records": RecordsDigest()}
    digests = bytearray()
    last, last_path = None, None
    for path, rec in tqdm(records, desc="merge", unit=" images", mininterval=1.0, disable=None):
        if rec["image"] == last:
            where = "listed twice in it" if path == last_path else "also in another input file"
            raise InputError(f"{path}: {rec['image']} is {where}")
        last, last_path = rec["image"], path
        digests += path_digest(rec["image"])
        writer.write(rec)
        counts["records"].add(rec)
        counts["images"] += 1
        counts["objects"] += len(rec["objects"])
        counts["qa"] += len(rec.get("qa", []))
    counts["digests"] = digests
    return counts


def check_shards(readers: list[AnnotationReader], image_digests: bytearray) -> tuple[list[dict], dict]:
    """Skipped list and meta of the merged file; InputError on incompatible or missing shards."""
    skipped: dict[str, dict] = {}
    where: dict[str, Path] = {}
    meta, first = None, None
    shard_ids, shard_counts = set(), set()
    for reader in readers:
        m, path = reader.meta, reader.path
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
        for rec in reader.skipped:
            if rec["image"] in skipped:
                raise InputError(f"{path}: {rec['image']} is also in another input file")
            skipped[rec["image"]] = rec
            where[rec["image"]] = path
    if skipped:  # an image both merged and skipped: found through the 16-byte path digests
        wanted = {path_digest(image): image for image in skipped}
        listed = bytes(image_digests)
        for i in range(0, len(listed), 16):
            image = wanted.get(listed[i:i + 16])
            if image is not None:
                raise InputError(f"{where[image]}: {image} is also in another input file")
    if len(shard_counts) > 1:
        raise InputError(f"the input files come from runs with different --num_shards: {sorted(shard_counts)}")
    if shard_counts:
        missing = sorted(set(range(shard_counts.pop())) - shard_ids)
        if missing:
            raise InputError(f"{'shard' if len(missing) == 1 else 'shards'} {', '.join(map(str, missing))} missing from "
                             "--input_files")
    merged_meta = {k: v for k, v in (meta or {}).items() if k not in ("shard", DIGEST_KEY)}
    return [skipped[k] for k in sorted(skipped)], merged_meta


def _with_digest(meta: dict, readers: list[AnnotationReader], counts: dict, skipped: list[dict]) -> dict:
    """Shards of an annotation run record a digest of their records: the merged file records its own, as
    a single run's file would (files without one stay without)."""
    if readers and all(DIGEST_KEY in r.meta for r in readers):
        return {**meta, DIGEST_KEY: counts["records"].finish(skipped)}
    return meta


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    paths = args.input_paths
    out = Path(args.output_file)
    with single_writer(out, "--output_file"):
        try:
            with AnnotationWriter(out, style="lines") as writer:
                readers = [AnnotationReader(p) for p in paths]
                counts = _merge_into(writer, readers, _merged_sorted(readers))
                skipped, meta = check_shards(readers, counts["digests"])
                writer.finish(skipped, _with_digest(meta, readers, counts, skipped))
        except _Unsorted as e:
            print(f"note: {e.args[0]} is not sorted by image path; merging through a temp file", flush=True)
            with AnnotationWriter(out, style="lines") as writer:
                readers = [AnnotationReader(p) for p in paths]
                counts = _merge_into(writer, readers, _merged_by_spool(readers, out.parent))
                skipped, meta = check_shards(readers, counts["digests"])
                writer.finish(skipped, _with_digest(meta, readers, counts, skipped))
    print(f"merged {plural(len(paths), 'file')}: {plural(counts['images'], 'image')}, "
          f"{plural(counts['objects'], 'object')}, {plural(counts['qa'], 'Q&A pair')}, {len(skipped)} skipped, {time.perf_counter() - start:.1f}s "
          f"-> {args.output_file}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
