"""Latents to pictures without the full VAE: live previews (the tiny autoencoder, TAESD, when there is
one; else a linear approximation at no cost) and fast mode's final decode (TAESD)."""

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


PREVIEW_LATENT_SIDE = 32  # latents larger than this (256 px pictures) are previewed at half size on a CPU


def tiny_decoded(decoder: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """TAESD's pixels (-1..1, float32 on the CPU) for a latent batch as the UNet leaves it."""
    parameter = next(decoder.parameters())
    with torch.no_grad():
        pixels = decoder.decode(latents.to(parameter.device, parameter.dtype), return_dict=False)[0]
    return pixels.float().cpu()


def tiny_preview(decoder: torch.nn.Module, latents: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """The first image of a latent batch through TAESD, as an RGB picture of `size`."""
    latents = latents[:1]
    if latents.device.type == "cpu" and min(latents.shape[-2:]) > PREVIEW_LATENT_SIDE:
        # On a CPU a full-size TAESD decode costs about a second, a good part of a step: a preview at half
        # the size costs a quarter of that and looks the same in the page's preview box.
        latents = torch.nn.functional.interpolate(latents.float(), scale_factor=0.5, mode="bilinear").to(latents.dtype)
    rgb = tiny_decoded(decoder, latents)[0].permute(1, 2, 0)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()
    picture = Image.fromarray(pixels, "RGB")
    return picture if picture.size == size else picture.resize(size, Image.BILINEAR)
