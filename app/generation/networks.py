"""Running an ESRGAN-family network (a spandrel descriptor) over a picture, tile by tile.

The network is fully convolutional, so a tile needs memory for its own size only; tiles overlap
and are blended (app.images.tiles), so no seam shows and any picture fits the device.
"""

from typing import Callable

import numpy as np
import torch
from PIL import Image

from app.images.tiles import tiled


def network_upscaled(
    network,
    image: Image.Image,
    tile: int,
    overlap: int,
    on_tile: Callable[[int, int], None] | None = None,
) -> Image.Image:
    """`image` scaled by the network's own factor, in tiles of `tile` input pixels."""
    return tiled(image, lambda part: one_tile(network, part), network.scale, tile, overlap, on_tile)


def one_tile(network, image: Image.Image) -> Image.Image:
    """One pass of the network over a small picture (spandrel pads to the sizes it needs)."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    batch = pixels.permute(2, 0, 1).unsqueeze(0).to(network.device, network.dtype)
    # spandrel clamps the output to [0, 1], which would hide an overflow: look before it does.
    finite: list[bool] = []
    hook = network.model.register_forward_hook(lambda module, args, out: finite.append(bool(torch.isfinite(out).all())))
    try:
        with torch.inference_mode():
            result = network(batch)
    finally:
        hook.remove()
    if network.dtype != torch.float32 and not all(finite):
        network.float()  # this network overflows in half precision: float32 from now on
        return one_tile(network, image)
    result = result.squeeze(0).permute(1, 2, 0).float().cpu().numpy()
    return Image.fromarray(np.clip(np.rint(result * 255.0), 0, 255).astype(np.uint8), "RGB")
