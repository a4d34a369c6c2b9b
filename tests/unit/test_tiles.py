"""Tiled processing: covers every pixel, equals the untiled result where that is defined, no seams."""

import numpy as np
import pytest
from PIL import Image

from app.images.tiles import tile_grid, tiled


def gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8), "RGB")


def nearest_x4(tile: Image.Image) -> Image.Image:
    return tile.resize((tile.width * 4, tile.height * 4), Image.NEAREST)


@pytest.mark.parametrize("size", [(64, 64), (100, 37), (300, 129), (129, 300)])
def test_the_grid_covers_every_pixel_with_the_overlap_asked(size):
    tiles = tile_grid(size, tile=64, overlap=16)
    covered = np.zeros(size[::-1], dtype=int)
    for t in tiles:
        covered[t.top : t.bottom, t.left : t.right] += 1
        assert t.size[0] <= 64 and t.size[1] <= 64
    assert covered.min() >= 1
    lefts = sorted({t.left for t in tiles})
    rights = sorted({t.right for t in tiles})
    assert all(right - left >= 16 for left, right in zip(lefts[1:], rights[:-1]))


def test_a_picture_that_fits_one_tile_is_processed_exactly_as_untiled():
    picture = gradient(60, 50)
    assert np.array_equal(np.asarray(tiled(picture, nearest_x4, 4, tile=64, overlap=16)), np.asarray(nearest_x4(picture)))


def test_a_position_independent_process_gives_the_untiled_result_when_tiled():
    picture = gradient(200, 150)
    result = tiled(picture, nearest_x4, 4, tile=64, overlap=16)
    assert result.size == (800, 600)
    difference = np.abs(np.asarray(result, dtype=int) - np.asarray(nearest_x4(picture), dtype=int))
    assert difference.max() <= 1  # blending identical values only rounds


def test_tiles_that_disagree_blend_without_a_visible_seam():
    # Each tile comes back 40 levels brighter than the one before: the worst case for seams.
    def shifted_tiles():
        offsets = iter(range(0, 200, 40))

        def shifted(tile: Image.Image) -> Image.Image:
            data = np.asarray(nearest_x4(tile), dtype=int) + next(offsets)
            return Image.fromarray(np.clip(data, 0, 255).astype(np.uint8), "RGB")

        return shifted

    flat = Image.new("RGB", (160, 40), (60, 60, 60))
    blended = np.asarray(tiled(flat, shifted_tiles(), 4, tile=64, overlap=24), dtype=int)[..., 0]
    hard = np.asarray(tiled(flat, shifted_tiles(), 4, tile=64, overlap=0), dtype=int)[..., 0]
    # The largest jump between neighbouring columns: without feathering, overlaps average in
    # one step (half the offset); with it, the change spreads over the whole overlap.
    assert np.abs(np.diff(hard, axis=1)).max() >= 20
    assert np.abs(np.diff(blended, axis=1)).max() <= 2


def test_progress_is_reported_per_tile_and_a_wrong_size_is_refused():
    seen = []
    tiled(gradient(100, 64), nearest_x4, 4, tile=64, overlap=16, on_tile=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]
    with pytest.raises(ValueError, match="should become"):
        tiled(gradient(100, 64), lambda t: t, 4, tile=64, overlap=16)
