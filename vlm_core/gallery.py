"""What the review galleries share (vlm_annotation/visualize.py, vlm_inference/visualize_predictions.py):
image scaling for display, the font, HTML escaping and relative links, page names and the page navigation,
the stylesheet and the script that counts the images the browser loaded.

A gallery is a folder with ``index.html`` (page 1) and ``page_N.<token>.html`` pages named by a token of
the render that wrote them, so a re-render never overwrites a page the previous gallery still shows.
"""
from __future__ import annotations

import html
from urllib.parse import quote

from PIL import ImageFont

INDEX_NAME = "index.html"
NAV_WINDOW = 5  # a page links to the pages this far before and after it


def text_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (ITU-R BT.601 luma)."""
    r, g, b = rgb
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def downscale_factor(width: int, height: int, max_side: int) -> float:
    if max_side <= 0 or max(width, height) <= max_side:
        return 1.0
    return max_side / max(width, height)


def upscale_factor(width: int, height: int, min_side: int) -> float:
    """A whole factor that brings a small image's longer side to ``min_side`` or more (1 for larger ones)."""
    longer = max(width, height)
    if min_side <= 0 or longer >= min_side:
        return 1.0
    return float(-(-min_side // longer))


def auto_line_width(width: int, height: int) -> int:
    return max(2, round(max(width, height) / 320))


def font_for(image_w: int, image_h: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = min(32, max(11, round(max(image_w, image_h) / 55)))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the fixed-size bitmap font
        return ImageFont.load_default()


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def url(rel_path: str) -> str:
    return esc(quote(rel_path))


def page_name(page: int, token: str = "") -> str:
    """``index.html`` for page 1; ``page_2.<token>.html`` ...: a render's pages are named by its token."""
    if page == 1:
        return INDEX_NAME
    return f"page_{page}.{token}.html" if token else f"page_{page}.html"


def pages_index_name(token: str = "") -> str:
    return f"pages.{token}.html" if token else "pages.html"


def page_numbers(page: int, n_pages: int, window: int = NAV_WINDOW) -> list[int | None]:
    """The pages a page links to: the first, ``window`` either side of it, the last; None for a gap."""
    shown = sorted({1, n_pages, *range(max(1, page - window), min(n_pages, page + window) + 1)})
    out: list[int | None] = []
    for p in shown:
        if out and p - out[-1] > 1:
            out.append(None)
        out.append(p)
    return out


def render_nav(page: int, n_pages: int, token: str = "") -> str:
    if n_pages <= 1:
        return ""
    links = [f"<span>page {page} of {n_pages}:</span>"]
    for p in page_numbers(page, n_pages):
        if p is None:
            links.append("<span>&hellip;</span>")
        else:
            links.append(f"<span><b>{p}</b></span>" if p == page else f'<a href="{url(page_name(p, token))}">{p}</a>')
    links.append(f'<a href="{url(pages_index_name(token))}">all pages</a>')
    return "<nav>" + "".join(links) + "</nav>"


def render_pages_index(title: str, n_pages: int, n_entries: int, per_page: int, token: str = "") -> str:
    rows = "\n".join(f'<li><a href="{url(page_name(p, token))}">page {p}</a>: entries {(p - 1) * per_page + 1} '
                     f'to {min(n_entries, p * per_page)}</li>' for p in range(1, n_pages + 1))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(title)}: all pages</title>
<style>{CSS}</style>
</head>
<body>
<h1>{esc(title)}: all {n_pages} pages</h1>
<ol>
{rows}
</ol>
</body>
</html>
"""


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.05em;margin:0 0 .3em;word-break:break-all}
.summary{margin:.2em 0 .8em} nav a,nav span{margin-right:.6em}
.legend span.item{display:inline-block;margin:0 1em .3em 0}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #555;vertical-align:middle;margin-right:.3em}
.entry{display:flex;flex-wrap:wrap;gap:1.2em;background:#fff;border:1px solid #ddd;border-radius:6px;padding:1em;margin:1em 0}
.picture{flex:0 1 auto;max-width:min(100%,720px)} .picture img{max-width:100%;height:auto;display:block}
.picture.missing{background:#fee;border:1px dashed #c00;padding:1em;color:#900;min-width:240px}
.details{flex:1 1 380px;min-width:300px} .meta,.note{color:#666;font-size:.9em} .note{color:#a60}
.caption{font-style:italic;margin:.4em 0 .8em}
table{border-collapse:collapse;margin:.3em 0 1em;font-size:.9em;width:100%}
th,td{border:1px solid #ddd;padding:.25em .45em;text-align:left;vertical-align:top}
th{background:#f0f0f0} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
#problems{background:#fff8e6;border:1px solid #e0c060;border-radius:6px;padding:.6em 1em}
#load-status{color:#666;font-size:.9em;margin-top:2em}
.box{font-family:ui-monospace,monospace;background:#eef;border-radius:3px;padding:0 .2em}
.errors{color:#b00;font-weight:bold} td.error{color:#b00;font-weight:bold} .ok{color:#070}
#load-status.failed{color:#c00;font-weight:bold}
"""


# Counts the images the browser really decoded, for a human (a warning when the folder lost its

# images/ subfolder) and for the headless-browser test, which reads the data attributes.

LOAD_SCRIPT = """
<script>
(function () {
  function report() {
    var imgs = Array.prototype.slice.call(document.images);
    var loaded = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
    var status = document.getElementById("load-status");
    status.setAttribute("data-images-loaded", String(loaded));
    status.setAttribute("data-images-total", String(imgs.length));
    status.textContent = loaded + " of " + imgs.length + " images loaded";
    if (loaded < imgs.length) { status.className = "failed"; }
  }
  if (document.readyState === "complete") { report(); } else { window.addEventListener("load", report); }
})();
</script>
"""
