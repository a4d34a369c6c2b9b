"""Pure decisions of the upscalers: network passes towards a target size, precision, tile defaults."""

import pytest
import torch
from PIL import Image

from app.errors import InvalidRequest
from app.generation.upscale import (
    NETWORK_OVERLAP,
    NETWORK_TILE,
    X4_OVERLAP,
    X4_TILE,
    UpscalerChoice,
    UpscaleRequest,
    network_pass_sizes,
    resampler_choices,
)
from app.kinds import UpscalerKind
from app.models.upscalers import network_dtype

UPSCALERS = [
    *resampler_choices(),
    UpscalerChoice("4x-UltraSharp", UpscalerKind.NETWORK, "4x-UltraSharp", 4),
    UpscalerChoice("SD x4: x4.safetensors", UpscalerKind.DIFFUSION, "x4.safetensors", 4),
]


@pytest.mark.parametrize(
    "size, target, factor, passes",
    [
        ((512, 512), (2048, 2048), 4, [(512, 512)]),                 # native: one pass
        ((512, 512), (1024, 1024), 4, [(512, 512)]),                 # smaller: one pass, resized after
        ((100, 50), (800, 400), 4, [(100, 50), (200, 100)]),         # 8x: a second pass on 200x100, not 400x200
        ((100, 50), (600, 300), 4, [(100, 50), (150, 75)]),          # 6x: second input shrunk to land on 600x300
        ((100, 50), (800, 400), 2, [(100, 50), (200, 100), (400, 200)]),
        ((10, 10), (80, 80), 1, [(10, 10)]),                         # 1x restoration: once, whatever the scale
        ((10, 10), (1000, 1000), 2, [(10, 10), (20, 20), (40, 40)]),  # at most three passes
    ],
)
def test_network_passes_stop_at_the_target(size, target, factor, passes):
    assert network_pass_sizes(size, target, factor) == passes


@pytest.mark.parametrize(
    "plan, half, bf16, expected",
    [
        (torch.float16, True, True, torch.float16),
        (torch.float16, False, True, torch.float32),  # architectures that overflow in fp16 stay in fp32
        (torch.bfloat16, True, True, torch.bfloat16),
        (torch.bfloat16, True, False, torch.float32),
        (torch.float32, True, True, torch.float32),
    ],
)
def test_the_network_runs_in_the_plans_precision_only_where_its_architecture_allows(plan, half, bf16, expected):
    assert network_dtype(plan, half, bf16) == expected


@pytest.mark.parametrize(
    "upscaler, tile, overlap",
    [("4x-UltraSharp", NETWORK_TILE, NETWORK_OVERLAP), ("SD x4: x4.safetensors", X4_TILE, X4_OVERLAP)],
)
def test_each_kind_of_upscaler_gets_its_own_tile_size(upscaler, tile, overlap):
    request = UpscaleRequest(image=Image.new("RGB", (8, 8)), upscaler=upscaler).validated(UPSCALERS)
    assert (request.tile, request.overlap) == (tile, overlap)
    assert request.kind is (UpscalerKind.NETWORK if upscaler == "4x-UltraSharp" else UpscalerKind.DIFFUSION)


@pytest.mark.parametrize("tile, overlap, message", [(16, 0, "Tile size"), (64, 40, "at most half"), (64, "x", "number")])
def test_bad_tiles_are_refused(tile, overlap, message):
    request = UpscaleRequest(image=Image.new("RGB", (8, 8)), upscaler="4x-UltraSharp", tile=tile, overlap=overlap)
    with pytest.raises(InvalidRequest, match=message):
        request.validated(UPSCALERS)
