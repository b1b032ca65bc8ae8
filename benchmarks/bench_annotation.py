"""Annotation throughput: this pipeline (batched) vs the seed's way (one image, one caption call at a time).

    python benchmarks/bench_annotation.py                  # tiny offline models, CPU
    python benchmarks/bench_annotation.py --batch_size 8 --num_images 48 \\
        --yolo_model yolov8x.pt --detr_model PekingU/rtdetr_r101vd \\
        --captioner_model Salesforce/blip-image-captioning-base

Both ways run in this process on the same models and images and produce the same
annotations (checked); only how work is grouped differs:

* naive: per image, YOLO on that image, RT-DETR on that image, then one captioner call
  per object and one for the whole image (what the seed script does);
* pipeline: ``--batch_size`` images through each detector at once, then every crop of
  those images through the captioner together, grouped by prompt.

Then the real command (``data_annotation.main``, which streams images) runs in fresh
processes over N and 4N images, to show that peak memory does not grow with the number of
images. Prints images/s for each way, the peak RSS of both streaming runs, and last
``ratio: N.NN`` (pipeline / naive).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: benchmarks/, data/ and models/ are not installed packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from vlm_annotation import data_annotation  # noqa: E402
from vlm_annotation.describer import PromptBook  # noqa: E402
from vlm_annotation.detectors import ClassMap, import_ultralytics  # noqa: E402
from vlm_annotation.engine import Annotator  # noqa: E402
from vlm_core.images import (
    list_images,  # noqa: E402
    load_image,  # noqa: E402
)


class OneCallPerCrop:
    """The seed's captioning: one generate() call for every object and every image."""

    def __init__(self, captioner):
        self.inner = captioner

    def caption(self, images, prompts):
        return [self.inner.caption([image], [prompt])[0] for image, prompt in zip(images, prompts)]


# VmHWM, not getrusage: ru_maxrss is inherited through fork, so a child would report this
# (larger) process's peak.
_PEAK_RSS_CODE = (
    "import re, sys\n"
    "from vlm_annotation import data_annotation\n"
    "rc = data_annotation.main(sys.argv[1:])\n"
    "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())\n"
    "print('PEAK_RSS_MIB', int(hwm.group(1)) / 1024)\n"
    "sys.exit(rc)\n")


def streaming_peak_rss(flags: list[str], sources: list[Path], n: int, work: Path) -> float:
    """Peak RSS (MiB) of a fresh process running the annotation command over ``n`` images."""
    folder = work / f"stream_{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = sources[i % len(sources)]
        shutil.copyfile(src, folder / f"{i:05d}{src.suffix}")
    argv = flags + ["--images_dir", str(folder), "--output_file", str(work / f"stream_{n}.json")]
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS_CODE, *argv], capture_output=True, text=True, env=env)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("PEAK_RSS_MIB")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"streaming run over {n} images failed:\n{done.stderr[-2000:]}")
    return float(line.split()[1])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_images", type=int, default=24, help="images to annotate each way (default 24)")
    p.add_argument("--batch_size", type=int, default=8, help="pipeline images per batch (default 8)")
    p.add_argument("--max_det", type=int, default=10, help="boxes per detector per image (default 10)")
    p.add_argument("--imgsz", type=int, default=320, help="YOLO input size (default 320)")
    p.add_argument("--device", default="cpu", help="device for both ways (default cpu)")
    p.add_argument("--yolo_model", default=None, help="real YOLO weights (default: tiny offline model)")
    p.add_argument("--detr_model", default=None, help="real RT-DETR model (default: tiny offline model)")
    p.add_argument("--detr_processor", default=None, help="its processor (default: with the model)")
    p.add_argument("--captioner_model", default=None, help="real BLIP / BLIP-2 (default: tiny offline model)")
    p.add_argument("--images_dir", default=None, help="images to use (default: the sample images, repeated)")
    p.add_argument("--memory_images", type=int, default=24,
                   help="N for the memory check: streaming runs over N and 4N images (default 24; 0 skips it)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_annotation_"))
    if not (args.yolo_model and args.detr_model and args.captioner_model):
        from fixtures.tiny_models import build_all
        tiny = build_all(work / "tiny", seed=0)
        args.yolo_model = args.yolo_model or str(tiny["yolo"])
        if not args.detr_model:
            args.detr_model, args.detr_processor = str(tiny["rtdetr_model"]), str(tiny["rtdetr_processor"])
        args.captioner_model = args.captioner_model or str(tiny["blip"])
    if args.images_dir:
        images_dir = Path(args.images_dir)
    else:
        from fixtures.sample_images import write_sample_images
        images_dir = work / "images"
        write_sample_images(images_dir)
    names = list_images(images_dir)
    paths = [images_dir / names[i % len(names)] for i in range(args.num_images)]
    run_names = [f"{i:05d}_{Path(p).name}" for i, p in enumerate(paths)]

    flags = ["--images_dir", str(images_dir), "--output_file", str(work / "unused.json"),
             "--yolo_model", args.yolo_model, "--detr_model", args.detr_model,
             "--captioner_model", args.captioner_model, "--max_det", str(args.max_det), "--imgsz", str(args.imgsz),
             "--batch_size", str(args.batch_size), "--device", args.device]
    if args.detr_processor:
        flags += ["--detr_processor", args.detr_processor]
    opts = data_annotation.parse_args(flags)
    import_ultralytics()
    annotator = Annotator(opts, args.device, ClassMap(), PromptBook())
    batched_captioner = annotator.describer.captioner
    annotator.annotate([run_names[0]], [load_image(paths[0])])  # warm-up, not timed

    # Naive: one image at a time, one captioner call per crop.
    annotator.describer.captioner = OneCallPerCrop(batched_captioner)
    start = time.perf_counter()
    naive = []
    for name, path in zip(run_names, paths):
        naive += annotator.annotate([name], [load_image(path)])
    naive_s = time.perf_counter() - start

    annotator.describer.captioner = batched_captioner
    start = time.perf_counter()
    batched = []
    for i in range(0, len(paths), args.batch_size):
        chunk = list(zip(run_names, paths))[i:i + args.batch_size]
        batched += annotator.annotate([n for n, _ in chunk], [load_image(p) for _, p in chunk])
    batched_s = time.perf_counter() - start

    objects = sum(len(r["objects"]) for r in batched)
    same = naive == batched
    n = len(paths)
    print(f"images: {n}, objects: {objects} ({objects / n:.1f} per image), batch size {args.batch_size}, "
          f"device {args.device}, torch threads {__import__('torch').get_num_threads()}")
    print(f"naive (seed):  {naive_s:7.2f} s  {n / naive_s:7.2f} images/s")
    print(f"pipeline:      {batched_s:7.2f} s  {n / batched_s:7.2f} images/s")
    print(f"same annotations both ways: {same}")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.memory_images > 0:
        stream_flags = [f for f in flags if f not in ("--images_dir", str(images_dir), "--output_file",
                                                      str(work / "unused.json"))]
        small = streaming_peak_rss(stream_flags, paths, args.memory_images, work)
        large = streaming_peak_rss(stream_flags, paths, 4 * args.memory_images, work)
        print(f"streaming command, peak RSS: {small:.0f} MiB for {args.memory_images} images, "
              f"{large:.0f} MiB for {4 * args.memory_images} images ({large - small:+.0f} MiB)")
    print(f"ratio: {naive_s / batched_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
