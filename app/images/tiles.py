"""Processing a large picture in overlapping tiles and blending the results without seams.

Upscalers (the SD x4 diffusion model, ESRGAN-family networks) need memory that grows with the
picture; in tiles, any size works within the memory the device plan allows. Neighbouring tiles
overlap, and each output pixel of an overlap is a weighted mix of the tiles that cover it, the
weight falling linearly to the tile's edge, so no seam shows.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Tile:
    left: int
    top: int
    right: int
    bottom: int

    @property
    def size(self) -> tuple[int, int]:
        return self.right - self.left, self.bottom - self.top


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile start offsets covering [0, length): evenly spread, each overlap at least `overlap`."""
    if length <= tile:
        return [0]
    count = 1 + -(-(length - tile) // (tile - overlap))  # ceil
    step = (length - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def tile_grid(size: tuple[int, int], tile: int, overlap: int) -> list[Tile]:
    """Tiles of at most `tile` px covering a picture of `size`, overlapping by >= `overlap` px."""
    if not 0 <= overlap < tile:
        raise ValueError("overlap must be at least 0 and smaller than the tile")
    width, height = size
    return [
        Tile(left, top, min(left + tile, width), min(top + tile, height))
        for top in _starts(height, tile, overlap)
        for left in _starts(width, tile, overlap)
    ]


def _ramp(length: int, fade_start: bool, fade_end: bool, fade: int) -> np.ndarray:
    """1 in the middle, falling linearly towards an edge that overlaps a neighbour."""
    weights = np.ones(length, dtype=np.float64)
    fade = min(fade, length // 2)
    if fade > 0:
        ramp = (np.arange(fade, dtype=np.float64) + 1) / (fade + 1)
        if fade_start:
            weights[:fade] = ramp
        if fade_end:
            weights[length - fade :] = ramp[::-1]
    return weights


def tiled(
    image: Image.Image,
    process: Callable[[Image.Image], Image.Image],
    scale: int,
    tile: int,
    overlap: int,
    on_tile: Callable[[int, int], None] | None = None,
) -> Image.Image:
    """`process` (which scales a picture by `scale`) applied tile by tile, blended seamlessly.

    `on_tile(done, total)` reports progress after each tile.
    """
    tiles = tile_grid(image.size, tile, overlap)
    width, height = image.width * scale, image.height * scale
    total = np.zeros((height, width, 3), dtype=np.float64)
    weight = np.zeros((height, width, 1), dtype=np.float64)
    for index, part in enumerate(tiles):
        result = process(image.crop((part.left, part.top, part.right, part.bottom)).convert("RGB"))
        expected = (part.size[0] * scale, part.size[1] * scale)
        if result.size != expected:
            raise ValueError(f"the upscaler returned {result.size} for a tile that should become {expected}")
        fade = overlap * scale
        rows = _ramp(expected[1], part.top > 0, part.bottom < image.height, fade)
        columns = _ramp(expected[0], part.left > 0, part.right < image.width, fade)
        mask = (rows[:, None] * columns[None, :])[..., None]
        top, left = part.top * scale, part.left * scale
        total[top : top + expected[1], left : left + expected[0]] += np.asarray(result, dtype=np.float64) * mask
        weight[top : top + expected[1], left : left + expected[0]] += mask
        if on_tile:
            on_tile(index + 1, len(tiles))
    return Image.fromarray(np.clip(np.rint(total / weight), 0, 255).astype(np.uint8), "RGB")
