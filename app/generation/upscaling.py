"""Runs an upscale job with the kind of upscaler it names: a resampler (Lanczos, Nearest), an
ESRGAN-family network, or the SD x4 diffusion upscaler. Both model kinds work in overlapping tiles
(app.images.tiles); a scale other than the model's own is reached by Lanczos afterwards."""

from PIL import Image

from app.errors import EaselError
from app.generation.diffusion import run_x4
from app.generation.memory_retry import with_memory_retry
from app.generation.networks import network_upscaled
from app.generation.outputs import OutputWriter
from app.generation.prompts import encode_prompt_pair
from app.generation.results import GeneratedImage
from app.generation.upscale import (
    X4_FACTOR,
    UpscaleRequest,
    lanczos,
    network_pass_sizes,
    output_size,
    padded,
    resampled,
)
from app.images.tiles import tile_grid, tiled
from app.jobs import Job
from app.kinds import UpscalerKind
from app.models.manager import ModelManager

INTERRUPTED = "The upscale was interrupted; nothing was saved."


class Interrupted(Exception):
    """Raised from a step or tile callback to stop an upscale part-way."""


class UpscaleRunner:
    def __init__(self, models: ModelManager, writer: OutputWriter):
        self._models = models
        self._writer = writer

    def run(self, job: Job) -> GeneratedImage:
        request: UpscaleRequest = job.request
        size = output_size(request.image.size, request.scale)
        try:
            if request.kind is UpscalerKind.DIFFUSION:
                with self._models.use_x4(request.choice.model) as pipe:
                    picture = lanczos(self._x4_upscaled(job, pipe), size)
            elif request.kind is UpscalerKind.NETWORK:
                picture = lanczos(with_memory_retry(lambda: self._network_run(job, size), self._models.degrade), size)
            else:
                picture = resampled(request.image, size, request.upscaler)
        except Interrupted:
            raise EaselError(INTERRUPTED) from None
        return self._writer.upscaled(request, picture)

    def _network_run(self, job: Job, size: tuple[int, int]) -> Image.Image:
        with self._models.use_network(job.request.choice.model) as network:
            return self._network_upscaled(job, network, size)

    @staticmethod
    def _network_upscaled(job: Job, network, size: tuple[int, int]) -> Image.Image:
        """An ESRGAN-family network towards `size`: one pass, or more when its factor falls short."""
        request: UpscaleRequest = job.request
        passes = network_pass_sizes(request.image.size, size, network.scale)
        tiles = sum(len(tile_grid(pass_size, request.tile, request.overlap)) for pass_size in passes)
        tiles_done = 0

        def report(done: int, total: int) -> None:
            nonlocal tiles_done
            tiles_done += 1
            job.report(step=tiles_done, steps=tiles)
            if job.cancelled:
                raise Interrupted()

        picture = request.image
        for pass_size in passes:
            picture = network_upscaled(network, lanczos(picture, pass_size), request.tile, request.overlap, report)
        return picture

    @staticmethod
    def _x4_upscaled(job: Job, pipe) -> Image.Image:
        """The SD x4 diffusion upscaler over the picture, tile by tile, one seed for every tile."""
        request: UpscaleRequest = job.request
        embeddings = encode_prompt_pair(pipe.tokenizer, pipe.text_encoder, request.prompt, request.negative_prompt)
        tiles = len(tile_grid(request.image.size, request.tile, request.overlap))
        tiles_done = 0

        def report(step: int, timestep, latents) -> None:
            if job.cancelled:
                raise Interrupted()
            job.report(step=tiles_done * request.steps + step + 1, steps=tiles * request.steps)

        def one_tile(tile: Image.Image) -> Image.Image:
            nonlocal tiles_done
            # The model needs sides that are multiples of 8: pad with the edge, crop the result.
            result = run_x4(pipe, padded(tile, 8), request, embeddings, report)
            tiles_done += 1
            return result.crop((0, 0, tile.width * X4_FACTOR, tile.height * X4_FACTOR))

        return tiled(request.image, one_tile, X4_FACTOR, request.tile, request.overlap)
