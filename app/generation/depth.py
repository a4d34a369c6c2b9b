"""The depth map an SD 2 depth model paints with: the user's picture (greyscale, lighter is nearer,
as MiDaS draws it), or none, and then the depth estimator beside the model makes one.

diffusers' depth pipeline scales any depth map to its own range (-1 to 1 from the map's least to
its greatest value), so only the map's shape matters, not its brightness.
"""

import numpy as np
import torch
from PIL import Image, ImageOps

from app.errors import InvalidRequest
from app.images.transform import resized
from app.models.depth import missing_estimator

MAX_DEPTH_PIXELS = 8192 * 8192


def validated_depth_map(depth_map, init_image: Image.Image | None, size: tuple[int, int], resize_mode: str):
    """The uploaded depth map as greyscale at the output size, fitted as the init picture is; None stays None."""
    if depth_map is None:
        return None
    if init_image is None:
        raise InvalidRequest("A depth map goes with image to image: upload the picture to change as well.")
    if not isinstance(depth_map, Image.Image) or depth_map.width < 1 or depth_map.height < 1:
        raise InvalidRequest("The depth map could not be read. Upload a greyscale PNG (lighter is nearer).")
    if depth_map.width * depth_map.height > MAX_DEPTH_PIXELS:
        raise InvalidRequest(f"The depth map is {depth_map.width}x{depth_map.height}; resize it to the picture's size first.")
    grey = _greyscale(ImageOps.exif_transpose(depth_map))
    low, high = grey.getextrema()
    if low == high:
        raise InvalidRequest(
            "The depth map is one flat shade, so it says nothing about depth. Upload a greyscale map where "
            "nearer parts are lighter, or leave it empty to have it estimated."
        )
    return resized(grey, size, resize_mode)


def _greyscale(picture: Image.Image) -> Image.Image:
    """8-bit greyscale; 16-bit and float maps (common for depth) are stretched over their own range."""
    if picture.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(picture, dtype=np.float32)
        span = float(values.max() - values.min()) or 1.0
        return Image.fromarray(((values - values.min()) * (255.0 / span)).round().astype(np.uint8), "L")
    if picture.mode in ("RGBA", "LA", "PA", "P"):
        picture = picture.convert("RGBA").convert("RGB")  # transparency carries no depth
    return picture.convert("L")


def depth_arguments(pipe, depth_map: Image.Image | None) -> dict:
    """The depth pipeline's `depth_map` argument: the user's map, or nothing for the estimator to fill in.
    Other pipelines take none (an uploaded map is then unused)."""
    if "depth_estimator" not in getattr(pipe, "components", {}):
        return {}
    if depth_map is not None:
        return {"depth_map": depth_tensor(depth_map)}
    if pipe.depth_estimator is None:
        raise InvalidRequest(missing_estimator())
    return {}


def depth_tensor(depth_map: Image.Image) -> torch.Tensor:
    """(1, height, width), 0 to 1: what diffusers' depth pipeline takes (a batch of one, repeated)."""
    return torch.from_numpy(np.asarray(depth_map.convert("L"), dtype=np.float32) / 255.0).unsqueeze(0)
