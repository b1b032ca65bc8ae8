"""The image loader: EXIF rotation, every awkward mode to RGB, bombs and broken files refused."""
import numpy as np
import pytest
from PIL import Image

from vlm_core.images import ImageLoadError, as_rgb_image, is_image_file, load_image


def test_exif_rotation_gives_displayed_size(tmp_path):
    img = Image.new("RGB", (60, 40), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 10))           # a blue corner at the stored top left
    exif = Image.Exif()
    exif[0x0112] = 6                                 # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (40, 60)
    r, g, b = out.getpixel((35, 3))                  # the blue corner is now at the top right
    assert b > 200 and r < 60


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    arr = (np.arange(32 * 24) % 256).reshape(24, 32).astype(np.uint8)
    base = Image.fromarray(arr, "L")
    if mode == "I;16":
        img = Image.fromarray(arr.astype(np.uint16) * 257)
        assert img.mode == "I;16"
    else:
        img = base.convert(mode)
    ext = "tif" if mode in ("CMYK", "I", "F") else "png"
    path = tmp_path / f"img.{ext}"
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (32, 24)
    if mode == "I;16":
        # 16-bit is scaled, not clipped to white: the darkest and brightest stay apart.
        px = np.asarray(out)[..., 0]
        assert px.min() == 0 and px.max() == 255


def test_transparent_pixels_show_on_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    path = tmp_path / "t.png"
    img.save(path)
    assert load_image(path).getpixel((1, 1)) == (255, 255, 255)


def test_unreadable_files_raise_one_exception_type(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(good)
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:200])
    for name in ("text.jpg", "empty.png", "trunc.jpg", "missing.jpg"):
        with pytest.raises(ImageLoadError):
            load_image(tmp_path / name)


def test_decompression_bomb_is_refused(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(path)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(path, max_pixels=10_000)


def test_helpers():
    assert is_image_file("a/B.JPG") and is_image_file("x.webp") and not is_image_file("notes.txt")
    assert as_rgb_image(Image.new("L", (3, 3))).mode == "RGB"


def test_non_image_is_refused_after_ultralytics_patched_pillow(tmp_path):
    import ultralytics  # noqa: F401  (it patches Image.open to try an optional HEIF plugin)
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ImageLoadError, match="not a recognised image format"):
        load_image(tmp_path / "notes.jpg")


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path


def test_listing_follows_symlinks_wherever_they_point(tmp_path):
    """The one symlink rule of every stage: a link inside the images folder is followed."""
    from vlm_core.images import list_images
    images, outside = tmp_path / "images", tmp_path / "elsewhere"
    _png(images / "b.png")
    _png(images / "sub" / "a.jpg")
    _png(outside / "far.jpg")
    _png(outside / "more" / "deep.png")
    (images / "notes.txt").write_text("not an image")
    _png(images / ".hidden.png")
    _png(images / ".cache" / "x.png")
    (images / "linked.jpg").symlink_to(outside / "far.jpg")      # a file outside the folder
    (images / "shelf").symlink_to(outside / "more")               # a folder outside it
    (images / "sub" / "loop").symlink_to(images)                  # back to a folder above: not again
    (images / "sub" / "again.jpg").symlink_to(images / "sub" / "a.jpg")
    (images / "broken.jpg").symlink_to(tmp_path / "gone.jpg")     # listed, so that it is skipped with a reason
    assert list_images(images) == ["b.png", "broken.jpg", "linked.jpg", "shelf/deep.png", "sub/a.jpg",
                                   "sub/again.jpg"]
    assert load_image(images / "linked.jpg").size == (8, 8)
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(images / "broken.jpg")


def test_undecodable_file_name_is_refused_with_a_printable_reason(tmp_path):
    import os

    from vlm_core.images import list_images, printable_name
    raw = os.fsdecode(b"caf\xe9.jpg")                    # Latin-1 bytes on a UTF-8 system
    _png(tmp_path / raw)
    assert list_images(tmp_path) == [raw]
    with pytest.raises(ImageLoadError) as err:
        load_image(tmp_path / raw)
    assert str(err.value) == "file name is not valid UTF-8 (caf\\xe9.jpg); rename the file"
    assert printable_name(raw) == "caf\\xe9.jpg" and printable_name("café.jpg") == "café.jpg"
