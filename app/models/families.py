"""Model families: what kind of network a checkpoint is, which decides how it is loaded and run."""

SD1 = "sd1"                  # SD 1.x, epsilon prediction, 512 px
SD1_INPAINT = "sd1-inpaint"
SD2_V = "sd2-v"              # SD 2.x 768, v-prediction
SD2 = "sd2"                  # SD 2.x base, epsilon prediction, 512 px
SD2_INPAINT = "sd2-inpaint"
X4_UPSCALER = "x4-upscaler"

LABELS = {
    SD1: "SD 1.x",
    SD1_INPAINT: "SD 1.x inpainting",
    SD2_V: "SD 2.x (768, v-prediction)",
    SD2: "SD 2.x base (512)",
    SD2_INPAINT: "SD 2.x inpainting",
    X4_UPSCALER: "SD x4 upscaler",
}

NATIVE_SIZE = {SD1: 512, SD1_INPAINT: 512, SD2_V: 768, SD2: 512, SD2_INPAINT: 512, X4_UPSCALER: 512}


def is_sd2(family: str) -> bool:
    return family in (SD2, SD2_V, SD2_INPAINT)


def watermark_key(family: str) -> str:
    """The reference scripts mark SD 2.x outputs "SDV2" and everything else "StableDiffusionV1"."""
    return "sd2" if is_sd2(family) else "sd1"
