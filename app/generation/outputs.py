"""From a finished picture to what the user gets: the invisible watermark, A1111's parameters text,
and the PNG in the outputs folder (app.images.store, the only code that writes outputs)."""

from PIL import Image

from app import __version__
from app.generation.a1111 import generation_info
from app.generation.requests import GenerationRequest
from app.generation.results import GeneratedImage
from app.generation.upscale import UpscaleRequest, postprocess_parameters
from app.images.metadata import infotext
from app.images.store import OutputStore
from app.images.watermark import apply_watermark, watermark_for
from app.kinds import JobKind
from app.models.registry import ModelEntry, VaeEntry

VERSION = f"Easel {__version__}"


class OutputWriter:
    def __init__(self, store: OutputStore, watermark: bool = True):
        self.store = store
        self._watermark = watermark

    def generated(self, request: GenerationRequest, model: ModelEntry, vae: VaeEntry | None, picture: Image.Image,
                  seed: int, extra: dict[str, object] | None = None) -> GeneratedImage:
        """One picture of a generation, marked, described and (unless the request says not to) saved.

        `extra`: infotext keys the run knows for this image only (see `a1111.generation_info`)."""
        if self._watermark:
            picture = apply_watermark(picture, watermark_for(model.family))
        vae_name = vae.path.stem if vae else None
        parameters = infotext(generation_info(request, seed, model.name, model.model_hash, vae_name, VERSION, extra))
        path = self.store.save(picture, parameters, request.kind.output_category, seed) if request.save else None
        return GeneratedImage(image=picture, path=path, seed=seed, parameters=parameters)

    def made_elsewhere(self, picture: Image.Image, parameters: str, kind: JobKind, seed: int | None,
                       save: bool) -> GeneratedImage:
        """A picture a cluster worker finished (marked and described there): saved here, by the one writer."""
        path = self.store.save(picture, parameters, kind.output_category, seed) if save else None
        return GeneratedImage(image=picture, path=path, seed=seed, parameters=parameters)

    def upscaled(self, request: UpscaleRequest, picture: Image.Image) -> GeneratedImage:
        """An upscaled picture with its source's parameters and A1111's postprocessing keys."""
        parameters = postprocess_parameters(request)
        path = self.store.save(picture, parameters, JobKind.UPSCALE.output_category, seed=None) if request.save else None
        return GeneratedImage(image=picture, path=path, seed=request.seed, parameters=parameters)
