"""Train the tiny YOLO on the synthetic world with Ultralytics' own trainer.

    python world/train_yolo.py --world world --out world_output/models/yolo --epochs 24 --minutes 6

Builds YOLOv8n from its yaml (``YOLO("yolov8n.yaml")``, as fixtures/tiny_models.py does, with
the world's classes) and calls ``YOLO.train`` on an Ultralytics dataset of the world's training
pool: ``--data`` names one (world/world.sh makes it with ``vlm_annotation/export_annotations.py
--format yolo`` from the ground truth), else this script writes it from ``WORLD/train.json``
(``data.yaml``, ``images/``, ``labels/`` with normalised ``class cx cy w h`` lines). Seeded; bounded
by ``--epochs`` and by ``--minutes`` (when the planned epochs would not fit, a callback plans fewer
and re-plans the learning-rate schedule over them, so a short run still ends at a low rate).
Writes ``OUT/yolo.pt``, which ``data_annotation.py --yolo_model`` loads like any other Ultralytics
checkpoint, and ``OUT/train_info.json`` (command, seed, seconds).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

if __package__ in (None, ""):  # run as a file: its folder is not an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_annotation.label_readers import load_coco  # noqa: E402
from vlm_core.io_utils import InputError, write_json_atomic, write_text_atomic  # noqa: E402
from world.training import steps_that_fit  # noqa: E402


def write_yolo_dataset(coco_file: Path, images_dir: Path, out: Path, val_fraction: float = 0.1) -> Path:
    """An Ultralytics dataset of a COCO file: images linked, one label file per image, data.yaml."""
    coco = load_coco(coco_file)
    names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    index = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    n_val = max(1, int(len(coco["images"]) * val_fraction))
    for split in ("train", "val"):
        for sub in ("images", "labels"):
            d = out / sub / split
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
    for k, im in enumerate(coco["images"]):
        split = "val" if k >= len(coco["images"]) - n_val else "train"
        src = (images_dir / im["file_name"]).resolve()
        dst = out / "images" / split / Path(im["file_name"]).name
        os.symlink(src, dst)
        w, h = im["width"], im["height"]
        lines = []
        for a in by_image.get(im["id"], []):
            x, y, bw, bh = a["bbox"]
            lines.append(f"{index[a['category_id']]} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} "
                         f"{bw / w:.6f} {bh / h:.6f}")
        (out / "labels" / split / (dst.stem + ".txt")).write_text("".join(line + "\n" for line in lines))
    yaml = (f"path: {out.resolve()}\ntrain: images/train\nval: images/val\nnames:\n"
            + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
    write_text_atomic(out / "data.yaml", yaml)
    return out / "data.yaml"


# YOLOv8's own architecture (ultralytics/cfg/models/v8/yolov8.yaml) at a smaller width than "n":
# the world's five classes need little capacity, a CPU trains it ~3x faster, and the weights
# stay small enough to commit (about 1 MB in half precision).
def tiny_yaml(path: Path, width: float) -> Path:
    import yaml
    from ultralytics.utils import ROOT

    cfg = yaml.safe_load((ROOT / "cfg" / "models" / "v8" / "yolov8.yaml").read_text(encoding="utf-8"))
    cfg["scales"] = {"t": [0.33, width, 1024]}
    cfg["scale"] = "t"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", required=True, help="world folder written by world/make_world.py")
    p.add_argument("--out", required=True, help="folder to write yolo.pt and train_info.json into")
    p.add_argument("--data", default=None,
                   help="an Ultralytics data.yaml of the training pool (default: written here from WORLD/train.json)")
    p.add_argument("--epochs", type=int, default=24,
                   help="planned epochs (default 24); fewer when they would not fit in --minutes")
    p.add_argument("--minutes", type=float, default=4.0, help="stop after this many minutes at most (default 4)")
    p.add_argument("--width", type=float, default=0.1875,
                   help="width multiple of YOLOv8's yaml (default 0.1875; yolov8n is 0.25)")
    p.add_argument("--imgsz", type=int, default=128, help="training image size (default 128)")
    p.add_argument("--batch", type=int, default=16,
                   help="batch size (default 16: more optimizer steps per epoch learn faster from scratch)")
    p.add_argument("--lr0", type=float, default=0.005,
                   help="peak AdamW learning rate, decayed linearly to 1%% by the last epoch (default 0.005)")
    p.add_argument("--mosaic", type=float, default=0.0,
                   help="Ultralytics mosaic probability (default 0: at 128 px a mosaic halves objects)")
    p.add_argument("--hsv_s", type=float, default=0.3,
                   help="saturation jitter (default 0.3, Ultralytics' 0.7 blurs the classes' colours)")
    p.add_argument("--hsv_v", type=float, default=0.25, help="brightness jitter (default 0.25)")
    p.add_argument("--translate", type=float, default=0.05, help="translation jitter, a fraction (default 0.05)")
    p.add_argument("--max_images", type=int, default=None, help="use only the first N training scenes")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.minutes <= 0 or args.imgsz < 32 or args.batch < 1:
        p.error("--epochs, --minutes, --imgsz and --batch must be positive (--imgsz >= 32)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    world, out = Path(args.world), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    coco_file = world / "train.json"
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.max_images and not args.data:
            coco = load_coco(coco_file)
            keep = {im["id"] for im in coco["images"][:args.max_images]}
            coco["images"] = [im for im in coco["images"] if im["id"] in keep]
            coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
            coco_file = out / "train_subset.json"
            write_json_atomic(coco_file, coco, indent=None)
        data_yaml = Path(args.data) if args.data else write_yolo_dataset(coco_file, world / "train_images",
                                                                         work / "dataset")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import torch
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS
    SETTINGS.update({"sync": False})  # no analytics, no network
    torch.manual_seed(args.seed)
    threads = torch.get_num_threads()
    model = YOLO(str(tiny_yaml(work / "yolov8-litter.yaml", args.width)))
    budget = args.minutes * 60.0

    def fit_in_time(trainer) -> None:
        # --epochs is the plan, --minutes a cap. A short run learns most while its learning rate
        # decays, so when the planned epochs would not fit, plan as many as fit, re-plan the schedule
        # over them (as Ultralytics' own ``time`` mode does) and stop at the last one, instead of
        # stopping mid-schedule at a high learning rate. Re-estimated after every epoch, from the
        # epochs' own time (the set-up before the first is spent already), never past --epochs.
        # (``time`` itself stretches a run to fill the time: we want a cap.)
        done = trainer.epoch + 1
        fits = steps_that_fit(done, time.time() - trainer.train_time_start, budget - (time.perf_counter() - start),
                              args.epochs)
        if fits != trainer.epochs:
            trainer.epochs = trainer.args.epochs = max(done, fits)
            trainer._setup_scheduler()
            trainer.scheduler.last_epoch = trainer.epoch
            trainer.stop |= done >= trainer.epochs

    model.add_callback("on_fit_epoch_end", fit_in_time)
    model.train(data=str(data_yaml), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device="cpu",
                workers=0, seed=args.seed, deterministic=True, plots=False, amp=False, project=str(work.resolve()),
                name="run", exist_ok=True, verbose=False, val=False, cache=False, patience=1000,
                optimizer="AdamW", lr0=args.lr0, mosaic=args.mosaic, close_mosaic=max(1, args.epochs // 4),
                # scale 0.2: the world's objects vary in size less than COCO's
                warmup_epochs=1.0, fliplr=0.5, flipud=0.5, scale=0.2, erasing=0.0,
                # hue carries the class (a brown glass bottle, a blue can): not jittered
                hsv_h=0.0, hsv_s=args.hsv_s, hsv_v=args.hsv_v, translate=args.translate)
    torch.set_num_threads(threads)
    weights = work / "run" / "weights"
    best = weights / "last.pt"  # validation only runs at the end (val=False): the last epoch is the model
    shutil.copyfile(best, out / "yolo.pt.tmp")
    os.replace(out / "yolo.pt.tmp", out / "yolo.pt")
    if (work / "run" / "results.csv").is_file():  # the per-epoch curve (losses, mAP50 on the val slice)
        shutil.copyfile(work / "run" / "results.csv", out / "results.csv")
    seconds = time.perf_counter() - start
    write_json_atomic(out / "train_info.json", {
        "model": f"yolov8.yaml at width {args.width}", "trainer": "ultralytics",
        "command": " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
        "seed": args.seed, "epochs": args.epochs, "imgsz": args.imgsz, "seconds": round(seconds, 1)})
    shutil.rmtree(work, ignore_errors=True)
    print(f"trained YOLO on {args.world} in {seconds:.1f}s -> {out / 'yolo.pt'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
