"""Model families: what kind of network a checkpoint is, which decides how it is loaded and run.

The values are stable strings: they are cached on disk (model facts, demo markers, the catalog).
"""

from enum import Enum


class Family(str, Enum):
    SD1 = "sd1"                  # SD 1.x, epsilon prediction, 512 px
    SD1_INPAINT = "sd1-inpaint"
    SD2_V = "sd2-v"              # SD 2.x 768, v-prediction
    SD2 = "sd2"                  # SD 2.x base, epsilon prediction, 512 px
    SD2_INPAINT = "sd2-inpaint"
    SD2_DEPTH = "sd2-depth"      # SD 2 depth (512-depth-ema): image-to-image guided by a depth map
    X4_UPSCALER = "x4-upscaler"

    @property
    def label(self) -> str:
        """The family as the page names it."""
        return _LABELS[self]

    @property
    def native_size(self) -> int:
        return 768 if self is Family.SD2_V else 512

    @property
    def is_sd2(self) -> bool:
        """OpenCLIP text encoder (SD 2.x and the x4 upscaler's own): pads with "!", marked "SDV2"."""
        return self in (Family.SD2, Family.SD2_V, Family.SD2_INPAINT, Family.SD2_DEPTH)

    @property
    def uses_open_clip(self) -> bool:
        return self is not Family.SD1 and self is not Family.SD1_INPAINT

    @property
    def makes_images(self) -> bool:
        """Text-to-image and image-to-image (and inpainting by blending in latent space)."""
        return self in (Family.SD1, Family.SD2, Family.SD2_V)

    @property
    def is_inpainting(self) -> bool:
        return self in (Family.SD1_INPAINT, Family.SD2_INPAINT)

    @property
    def is_depth(self) -> bool:
        """Its UNet takes a depth map beside the latents (5 input channels): image-to-image only."""
        return self is Family.SD2_DEPTH

    @property
    def is_checkpoint(self) -> bool:
        """A checkpoint the user can make the active one (the x4 upscaler is used from the Upscale tab)."""
        return self is not Family.X4_UPSCALER

    @property
    def use(self) -> str:
        """What a checkpoint of this family is for, in words."""
        if self.makes_images:
            return "making and changing pictures"
        if self.is_depth:
            return "depth-guided image-to-image only"
        return "inpainting only" if self.is_inpainting else "upscaling only"


_LABELS = {
    Family.SD1: "SD 1.x",
    Family.SD1_INPAINT: "SD 1.x inpainting",
    Family.SD2_V: "SD 2.x (768, v-prediction)",
    Family.SD2: "SD 2.x base (512)",
    Family.SD2_INPAINT: "SD 2.x inpainting",
    Family.SD2_DEPTH: "SD 2 depth",
    Family.X4_UPSCALER: "SD x4 upscaler",
}
