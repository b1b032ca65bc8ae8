"""Where each image token a world VLM's language model reads sits in the original image, for every family.

``world/pretrain_grounding.py`` teaches heads to look at the tokens of the object a phrase names, so it needs, per
image token in the order the language model reads them, the point of the original image that token sees. Each family
lays its tokens out its own way: LLaVA-1.5 and ViP-LLaVA a square grid over the image padded to a square, LLaVA-NeXT
and LLaVA-OneVision a base view then the unpadded tiles with a newline token per row, the
Qwen-VL families a grid of ``merge x merge`` patch windows over the ``smart_resize``\\ d image. Rather than restate
each layout (and drift from it, as frames did: issue 26), the places are *read* from the family's own code:

1. an image whose pixels spell their own coordinates (red: x, green: y, blue: inside the image), and its negative,
   are put through the training code's own image path (``TokenLayout.image_inputs``: the frame's ``prepare_image``,
   then the family's image processor), and each patch's centre pixels are read back; the two readings' difference
   cancels the padding's fill, whatever its colour;
2. the patches become tokens as the model does it: LLaVA-NeXT / OneVision through the model's own
   ``pack_image_features`` (unpadding and newlines included: a newline's place is ``None``), the Qwen families by
   their merge windows (``merge**2`` consecutive patch rows make one token, the order their mergers read).

A token whose centre lies in padding has no place (``None``) either.
"""
from __future__ import annotations

from PIL import Image

# A place is read to about 1/255 of the image's width or height, so a token whose centre lies on the box's edge may
# read a hair outside it: within this much of the edge counts as inside (LLaVA-1.5's centres and a world box's edges,
# both whole pixels of the padded square, are then split as their true positions split them).
EDGE = 1 / 255
IMAGE_SHARE = 0.25  # a token whose centre pixels are less of the image than this is padding (on the edge: about 0.5)


def coordinate_image(width: int, height: int, negative: bool = False) -> Image.Image:
    """An RGB image whose pixel (x, y) is (255 (x + 0.5) / width, 255 (y + 0.5) / height, 255): a resize of it (any
    linear filter) keeps each pixel's own original coordinates. ``negative``: each channel 255 minus that."""
    import numpy as np

    xs = np.round(255 * (np.arange(width) + 0.5) / width).astype(np.uint8)
    ys = np.round(255 * (np.arange(height) + 0.5) / height).astype(np.uint8)
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = xs[None, :]
    rgb[..., 1] = ys[:, None]
    rgb[..., 2] = 255
    return Image.fromarray(255 - rgb if negative else rgb, "RGB")


def _centres(patches, mean, std):
    """(N, 3, P, P) normalised patches -> (N, 3) pixel values 0..255 of each one's centre (its middle 2x2 pixels)."""
    import torch

    p = patches.shape[-1]
    mid = patches[..., p // 2 - 1:p // 2 + 1, p // 2 - 1:p // 2 + 1].float().mean((-1, -2))
    return (mid * torch.tensor(std) + torch.tensor(mean)) * 255


def token_places(model, layout, width: int, height: int) -> list[tuple[float, float] | None]:
    """Per image token of a ``width x height`` image, in the order ``model``'s language model reads them: the
    (x, y) of the original image it sees, each 0..1 of the width / height; ``None`` for a newline token or one
    whose centre lies in padding. ``layout`` is the training code's (``TokenLayout`` / ``FamilyLayout``)."""

    n_tokens = layout.image_tokens({"width": width, "height": height})
    # The image and its negative: their difference cancels the padding's fill, whatever its colour, so a token
    # half on the image and half on padding still reads where its image half is (and how much of it is image).
    read = [_token_pixels(model, layout, coordinate_image(width, height, negative), n_tokens)
            for negative in (False, True)]
    diff = read[0] - read[1]                     # image share a: (a (2 v - 255), a (2 v - 255), 255 a)
    share = diff[:, 2] / 255
    places = (diff[:, :2] / share[:, None].clamp(min=1e-6) + 255) / 2 / 255
    if len(places) != n_tokens:
        raise RuntimeError(f"{width}x{height}: {len(places)} token places read, the processor plans {n_tokens} "
                           "image tokens")
    out = []
    for (x, y), a in zip(places.tolist(), share.tolist()):
        on_image = a > IMAGE_SHARE  # NaN (a newline) compares false
        out.append((min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)) if on_image else None)
    return out


def _token_pixels(model, layout, image, n_tokens: int):
    """(tokens, 3): the pixel values (0..255) at each image token's centre, in the order the language model reads
    the tokens; NaN for a newline token."""
    import torch

    inputs = layout.image_inputs(image, n_tokens, f"a {image.size[0]}x{image.size[1]} coordinate image")
    processor = layout.image_processor
    mean, std = list(processor.image_mean), list(processor.image_std)
    pixels = inputs["pixel_values"]
    if "image_grid_thw" in inputs:  # Qwen-VL: rows of (3, T, P, P) patches, merge x merge of them per token
        patch, merge = processor.patch_size, processor.merge_size
        rows = pixels.view(pixels.shape[0], 3, -1, patch, patch)[:, :, 0]
        return _centres(rows, mean, std).view(-1, merge * merge, 3).mean(1)
    views = pixels if pixels.dim() == 4 else pixels[None]  # (views, 3, S, S)
    patch = model.config.vision_config.patch_size
    v, _, s, _ = views.shape
    g = s // patch
    grid = views.view(v, 3, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(v * g * g, 3, patch, patch)
    rgb = _centres(grid, mean, std).view(v, g * g, 3)
    if "image_sizes" not in inputs:
        return rgb[0]
    # LLaVA-NeXT / OneVision: the base view, then the tiles unpadded with a newline per row, by the model's own code
    newline = torch.full((3,), float("nan"))
    sizes = inputs["image_sizes"].view(1, 2)
    pack = model.model.pack_image_features
    aspect = getattr(model.config, "vision_aspect_ratio", None)
    if aspect is not None:  # OneVision: its packing may shrink the tiles to that many (not at the world's sizes)
        return pack([rgb], sizes, image_newline=newline, vision_aspect_ratio=aspect)[0][0]
    return pack([rgb], sizes, vision_feature_select_strategy="default", image_newline=newline)[0][0]



def tokens_in_box(places: list[tuple[float, float] | None], box: list[float], width: float,
                  height: float) -> list[int]:
    """The tokens (indices into ``places``) whose place lies in the pixel ``box`` of a ``width x height`` image (its
    edges included, to ``EDGE``); the one nearest the box centre when none does."""
    x1, y1, x2, y2 = box[0] / width - EDGE, box[1] / height - EDGE, box[2] / width + EDGE, box[3] / height + EDGE
    inside = [k for k, p in enumerate(places) if p is not None and x1 <= p[0] <= x2 and y1 <= p[1] <= y2]
    if inside:
        return inside
    mx, my = (x1 + x2) / 2, (y1 + y2) / 2
    return [min((k for k, p in enumerate(places) if p is not None),
                key=lambda k: (places[k][0] - mx) ** 2 + (places[k][1] - my) ** 2)]
