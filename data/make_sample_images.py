"""Write the demo's sample images: two photos that Ultralytics ships and a few drawn scenes.

    python data/make_sample_images.py --out data/images

Nothing is downloaded. The drawn scenes go into a subfolder, so the demo also shows
that the annotation stage walks folders recursively.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: benchmarks/, data/ and models/ are not installed packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.make_tiny_models import draw_scene  # noqa: E402


def write_sample_images(out: str | Path, n_scenes: int = 4) -> list[Path]:
    from ultralytics.utils import ASSETS

    out = Path(out)
    (out / "scenes").mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("bus.jpg", "zidane.jpg"):
        shutil.copyfile(ASSETS / name, out / name)
        written.append(out / name)
    for i in range(n_scenes):
        path = out / "scenes" / f"scene_{i}.{'png' if i % 2 else 'jpg'}"
        draw_scene(100 + i).save(path)
        written.append(path)
    return written


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/images", help="folder to write the images into (default data/images)")
    parser.add_argument("--n_scenes", type=int, default=4, help="how many drawn scenes to add (default 4)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    paths = write_sample_images(args.out, args.n_scenes)
    print(f"wrote {len(paths)} sample images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
