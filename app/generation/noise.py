"""Starting noise with A1111's variation seeds: the noise of the seed, spherically interpolated
towards the noise of a variation seed ("subseed"), optionally made at another size and pasted in
the middle ("resize seed from"), as A1111's `create_random_tensors` and `slerp`
(modules/processing.py) do.

Each noise is drawn exactly as diffusers draws it for a seed: a fresh CPU generator per image, one
`randn` of shape (1, channels, h/8, w/8) in the pipeline's dtype. So the seed's own noise here is
the noise diffusers would have used, and a variation of strength 0 is the plain picture.
"""

from dataclasses import dataclass

import torch

from app.generation.requests import SIZE_STEP

LATENT_CHANNELS = 4


@dataclass(frozen=True)
class Variation:
    """What a request asks of the noise beyond its seeds."""

    strength: float = 0.0        # 0: the seed's noise; 1: the variation seed's
    resize_from: tuple[int, int] | None = None  # (width, height) the seed's noise is made at

    @property
    def active(self) -> bool:
        """Whether the noise differs from the plain seed's (else diffusers makes its own)."""
        return self.strength > 0 or self.resize_from is not None


def seed_noise(seed: int, shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator | None = None) -> torch.Tensor:
    """One image's noise, (1, *shape), as diffusers' `randn_tensor` draws it for this seed.

    `generator`: one already in use (image-to-image draws its VAE sample from it first)."""
    generator = generator or torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, *shape), generator=generator, device="cpu", dtype=dtype)


def slerp(value: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's `slerp`, verbatim in its arithmetic (norms over dim 1 of a (C, H, W) noise), so a
    variation matches A1111's for the same two noises. Computed in float32."""
    low32, high32 = low.float(), high.float()
    low_norm = low32 / torch.norm(low32, dim=1, keepdim=True)
    high_norm = high32 / torch.norm(high32, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        # A1111's nearly-parallel shortcut, weights as A1111 writes them.
        return (low32 * value + high32 * (1 - value)).to(low.dtype)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    mixed = (torch.sin((1.0 - value) * omega) / so).unsqueeze(1) * low32 + (torch.sin(value * omega) / so).unsqueeze(1) * high32
    return mixed.to(low.dtype)


def pasted_centred(small: torch.Tensor, large: torch.Tensor) -> torch.Tensor:
    """`small` (C, h, w) pasted into the middle of `large` (C, H, W), cropped where it is bigger:
    A1111's seed resize."""
    result = large.clone()
    dx = (large.shape[2] - small.shape[2]) // 2
    dy = (large.shape[1] - small.shape[1]) // 2
    w = small.shape[2] if dx >= 0 else small.shape[2] + 2 * dx
    h = small.shape[1] if dy >= 0 else small.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    result[:, ty : ty + h, tx : tx + w] = small[:, sy : sy + h, sx : sx + w]
    return result


def latent_shape(width: int, height: int) -> tuple[int, int, int]:
    return LATENT_CHANNELS, height // SIZE_STEP, width // SIZE_STEP


def variation_noise(seed: int, subseed: int, variation: Variation, shape: tuple[int, int, int], dtype: torch.dtype,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """One image's starting noise, (1, *shape), with A1111's variation and seed resize.

    `generator`: the seed's generator when the pipeline has drawn from it already (image-to-image)."""
    noise_shape = shape
    if variation.resize_from is not None:
        width, height = variation.resize_from
        noise_shape = latent_shape(width, height)
    if noise_shape == shape:
        noise = seed_noise(seed, shape, dtype, generator)[0]
    else:
        noise = seed_noise(seed, noise_shape, dtype)[0]
    if variation.strength > 0:
        noise = slerp(variation.strength, noise, seed_noise(subseed, noise_shape, dtype)[0])
    if noise_shape != shape:
        noise = pasted_centred(noise, seed_noise(seed, shape, dtype, generator)[0])
    return noise.unsqueeze(0)


def noise_maker(seeds: list[int], subseeds: list[int], variation: Variation):
    """A batch's noise maker for diffusion.run_batch: `(generators, shape, dtype)` → the batch's
    starting noise, each image's drawn from its own generator as diffusers would."""

    def make(generators: list[torch.Generator] | None, shape: tuple[int, int, int], dtype: torch.dtype) -> torch.Tensor:
        # Text to image hands diffusers' fresh generators; image to image has drawn the VAE sample from them.
        return torch.cat([variation_noise(seed, sub, variation, shape, dtype, generator)
                          for seed, sub, generator in zip(seeds, subseeds, generators)])

    return make
