"""What a checkpoint file is, read from its weights' names and shapes (no model is built).

SD 1.x and 2.x differ in the text encoder (OpenAI CLIP vs OpenCLIP); inpainting, SD 2 depth and
the x4 upscaler in the UNet's input channels (9, 5 and 7 instead of 4; a depth checkpoint may also
carry the MiDaS weights it was trained with as `depth_model.*`, which Easel does not use).
v-prediction (SD 2.x 768) versus epsilon (SD 2.x base) is not visible in the weights: A1111's
convention is a `.yaml` beside the checkpoint with `parameterization: "v"`, which we honour, else
a per-model choice of the user, else v-prediction (the 768 model is the one most people have).
"""

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from omegaconf import OmegaConf

from app.models.families import Family
from app.models.safe_weights import UnreadableWeights

UNET_INPUT = "model.diffusion_model.input_blocks.0.0.weight"
CLIP_KEYS = "cond_stage_model.transformer."
OPEN_CLIP_KEYS = "cond_stage_model.model."
SDXL_KEYS = "conditioner.embedders."
CROSS_ATTENTION = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


class Prediction(str, Enum):
    """What an SD 2.x UNet predicts: the 768 model v, the 512 base model the noise (epsilon)."""

    V = "v"
    EPSILON = "epsilon"


class FamilySource(str, Enum):
    """How the family was settled, so the page can say when it is only an assumption."""

    WEIGHTS = "weights"
    SIDECAR = "sidecar"      # an A1111 `<name>.yaml` beside the checkpoint
    OVERRIDE = "override"    # the user's choice in the page
    DEFAULT = "default"      # nothing said: v-prediction assumed


@dataclass(frozen=True)
class Detection:
    family: Family
    source: FamilySource


def family_from_weights(shapes: dict[str, tuple[int, ...]]) -> Family:
    """SD1 / SD1 inpainting / SD2 / SD2 inpainting / SD2 depth / x4 upscaler; SD2 is returned as SD2_V
    (the caller settles v versus epsilon). Raises UnreadableWeights for anything else."""
    if any(key.startswith(SDXL_KEYS) for key in shapes):
        raise UnreadableWeights("it is an SDXL checkpoint; Easel runs SD 1.x and 2.x models for now.")
    unet_input = shapes.get(UNET_INPUT)
    if unet_input is None or len(unet_input) != 4:
        raise UnreadableWeights(
            "it is not a full Stable Diffusion checkpoint (no UNet inside: a LoRA, VAE or embedding "
            "goes in another folder)."
        )
    in_channels = unet_input[1]
    sd2 = _uses_open_clip(shapes)
    if in_channels == 7:
        return Family.X4_UPSCALER
    if in_channels == 9:
        return Family.SD2_INPAINT if sd2 else Family.SD1_INPAINT
    if in_channels == 5 and sd2:
        return Family.SD2_DEPTH  # the latents plus one depth channel
    if in_channels == 4:
        return Family.SD2_V if sd2 else Family.SD1
    raise UnreadableWeights(f"its UNet takes {in_channels} input channels, which no SD 1.x/2.x model has.")


def _uses_open_clip(shapes: dict[str, tuple[int, ...]]) -> bool:
    if any(key.startswith(OPEN_CLIP_KEYS) for key in shapes):
        return True
    if any(key.startswith(CLIP_KEYS) for key in shapes):
        return False
    # No text encoder inside: the cross-attention width tells (768 CLIP-L, 1024 OpenCLIP-H).
    return shapes.get(CROSS_ATTENTION, (0, 768))[1] == 1024


def sidecar_prediction(checkpoint: Path) -> Prediction | None:
    """The prediction an A1111 sidecar `<name>.yaml` declares, or None without one."""
    sidecar = checkpoint.with_suffix(".yaml")
    if not sidecar.is_file():
        return None
    try:
        config = OmegaConf.to_container(OmegaConf.load(sidecar))
    except Exception:  # an unreadable sidecar is ignored, as A1111 does
        return None
    parameterization = _find_key(config, "parameterization")
    return Prediction.V if parameterization == "v" else Prediction.EPSILON


def _find_key(tree, key: str):
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def settle_prediction(family: Family, sidecar: Prediction | None, override: Prediction | None) -> Detection:
    """The final family of an SD 2.x checkpoint: the user's choice, then the sidecar, then v."""
    if family is not Family.SD2_V:
        return Detection(family, FamilySource.WEIGHTS)
    # The user's explicit choice in the page wins over a file they may not know is there.
    for choice, source in ((override, FamilySource.OVERRIDE), (sidecar, FamilySource.SIDECAR)):
        if choice is not None:
            return Detection(Family.SD2_V if choice is Prediction.V else Family.SD2, source)
    return Detection(Family.SD2_V, FamilySource.DEFAULT)
