"""A grid of images with a caption under each tile: validation images during training
(`RUN/samples/step-N.png`) and `nami sample --grid`.

Small images are enlarged by a whole factor (nearest neighbour: every pixel stays a sharp block)
until a tile is at least `MIN_TILE` pixels on its longer side, so a 64 px model's tiles and their
captions can be read. Each caption is wrapped to the tile's width; a line too long for
`MAX_CAPTION_LINES` lines ends in "...".
"""

from __future__ import annotations

import math
from typing import Sequence

MIN_TILE = 256  # pixels on the longer side of a tile, at least
MAX_CAPTION_LINES = 4
PAD = 6
FONT_SIZE = 13


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def fitting_prefix(word: str, width: int, measure) -> int:
    """The length of the longest start of `word` no wider than `width` by `measure` (at least 1
    character), found by halving: a longer start is never narrower."""
    low, high = 1, len(word)
    while low < high:
        middle = (low + high + 1) // 2
        if measure(word[:middle]) <= width:
            low = middle
        else:
            high = middle - 1
    return low


def wrap(text: str, width: int, measure, max_lines: int = MAX_CAPTION_LINES) -> list[str]:
    """`text` in lines no wider than `width` pixels by `measure(line)`, words kept whole where they
    fit (a longer word is cut), at most `max_lines` lines (the last then ends in "...").
    A character is at least a pixel wide, so only the first `max_lines x width` characters can
    show: the rest is dropped before measuring (a prompt of a million characters is measured no
    longer than one that fills the lines, and within what the font can measure)."""
    lines: list[str] = []
    shown = max_lines * max(int(width), 1) + 1
    for word in text[:shown].split():
        line = f"{lines[-1]} {word}" if lines else word
        if lines and measure(line) <= width:
            lines[-1] = line
            continue
        while measure(word) > width and len(word) > 1 and len(lines) <= max_lines:
            cut = fitting_prefix(word, width, measure)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
        if len(lines) > max_lines:
            break
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and measure(last + "...") > width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last + "..."]
    return lines


def image_grid(images: Sequence, captions: Sequence[str], columns: int | None = None):
    """One RGB PIL image: `images` (PIL, all of one size) in rows of `columns` (default: a
    near-square grid), `captions[i]` wrapped under image i ("\\n" starts a new line)."""
    from PIL import Image, ImageDraw

    if not images or len(images) != len(captions):
        raise ValueError(f"a grid needs one caption per image, got {len(images)} images and {len(captions)} captions")
    width, height = images[0].size
    scale = max(1, math.ceil(MIN_TILE / max(width, height)))
    tile_w, tile_h = width * scale, height * scale
    font = _font()
    measure = lambda text: ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)  # noqa: E731
    wrapped = [[line for part in caption.split("\n") for line in wrap(part, tile_w, measure)] for caption in captions]
    line_h = FONT_SIZE + 3
    caption_h = PAD + line_h * max(len(lines) for lines in wrapped) + PAD
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell_w, cell_h = tile_w + PAD, tile_h + caption_h
    grid = Image.new("RGB", (columns * cell_w + PAD, rows * cell_h + PAD), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, lines) in enumerate(zip(images, wrapped)):
        if image.size != (width, height):
            raise ValueError(f"grid images must share one size: {image.size} differs from {(width, height)}")
        x, y = PAD + (i % columns) * cell_w, PAD + (i // columns) * cell_h
        grid.paste(image.convert("RGB").resize((tile_w, tile_h), Image.NEAREST), (x, y))
        for k, line in enumerate(lines):
            draw.text((x, y + tile_h + PAD + k * line_h), line, fill="black", font=font)
    return grid
