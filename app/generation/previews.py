"""Live previews: latents to a rough RGB picture at no cost, without running the VAE."""

import torch
from PIL import Image

# The well-known linear approximation of the SD 1.x/2.x VAE decoder (latent channel -> RGB),
# as used by ComfyUI and A1111's "Approx cheap" previews.
_LATENT_RGB = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)


def latent_preview(latents: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """The first image of a latent batch (B, 4, h, w) as an RGB picture of `size`."""
    rgb = latents[0].detach().float().cpu().permute(1, 2, 0) @ _LATENT_RGB
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB").resize(size, Image.BILINEAR)
