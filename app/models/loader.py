"""Builds a diffusers pipeline from a registry entry, offline, without ever unpickling code.

Single files are loaded with the config folder of their family shipped in `configs/models/` and the
tokenizer in `configs/tokenizer/`: diffusers would otherwise download configs from the hub (even
with local_files_only) or guess them and lose settings such as SD 2.1's `upcast_attention`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from app.errors import ModelLoadError
from app.models.families import Family
from app.models.registry import Layout, ModelEntry, VaeEntry
from app.models.safe_weights import LOAD_ERRORS, load_failure

# diffusers and transformers are imported on first use, not at startup: the page answers seconds sooner
# (launch.py serves it before the first checkpoint loads).
if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DiffusionPipeline
    from transformers import CLIPTokenizer

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
TOKENIZER_DIR = CONFIGS_DIR / "tokenizer"
MODEL_CONFIGS_DIR = CONFIGS_DIR / "models"

CONFIG_FOLDERS = {
    Family.SD1: "sd15",
    Family.SD1_INPAINT: "sd15-inpainting",
    Family.SD2_V: "sd21",
    Family.SD2: "sd21-base",
    Family.SD2_INPAINT: "sd2-inpainting",
    Family.SD2_DEPTH: "sd2-depth",
    Family.X4_UPSCALER: "x4-upscaler",
}

PIPELINE_CLASSES = {  # diffusers' class names
    Family.SD1: "StableDiffusionPipeline",
    Family.SD2_V: "StableDiffusionPipeline",
    Family.SD2: "StableDiffusionPipeline",
    Family.SD1_INPAINT: "StableDiffusionInpaintPipeline",
    Family.SD2_INPAINT: "StableDiffusionInpaintPipeline",
    Family.SD2_DEPTH: "StableDiffusionDepth2ImgPipeline",
    Family.X4_UPSCALER: "StableDiffusionUpscalePipeline",
}


def pipeline_class(family: Family) -> type[DiffusionPipeline]:
    return getattr(importlib.import_module("diffusers"), PIPELINE_CLASSES[family])


def config_folder(family: Family, config_root: Path = MODEL_CONFIGS_DIR) -> Path:
    return Path(config_root) / CONFIG_FOLDERS[family]


def tokenizer_for(family: Family) -> CLIPTokenizer:
    """SD 1.x pads with <|endoftext|>; the OpenCLIP models (SD 2.x, the upscaler) with "!"."""
    from transformers import CLIPTokenizer

    if family.uses_open_clip:
        return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="!")
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


def load_pipeline(entry: ModelEntry, dtype: torch.dtype, config_root: Path = MODEL_CONFIGS_DIR) -> DiffusionPipeline:
    """The entry's pipeline on the CPU in `dtype`; the caller moves it where the device plan says.

    `config_root` holds one config folder per family (configs/models/; tests pass tiny ones)."""
    if entry.problem:
        raise ModelLoadError(entry.problem)
    try:
        if entry.layout is Layout.SINGLE_FILE:
            pipe = _single_file(entry, dtype, config_folder(entry.family, config_root))
        else:
            pipe = _diffusers_folder(entry, dtype)
    except ModelLoadError:
        raise
    except LOAD_ERRORS as error:
        raise ModelLoadError(f"Could not load the checkpoint '{entry.title}': {load_failure(error)}") from error
    pipe.set_progress_bar_config(disable=True)  # progress is reported through the job instead
    return pipe


def _without_estimator(family: Family) -> dict:
    """A depth model loads without its depth estimator: app.models.depth adds one when there is one."""
    return dict(depth_estimator=None, feature_extractor=None) if family.is_depth else {}


def _single_file(entry: ModelEntry, dtype: torch.dtype, config: Path) -> DiffusionPipeline:
    if entry.family.is_depth:
        # diffusers' depth pipeline has no single-file loader: the text-to-image one loads the same
        # parts (the config folder gives the UNet its 5 input channels; `depth_model.*` MiDaS
        # weights in the file are left out), then they are assembled into the depth pipeline.
        parts = _load_single_file(pipeline_class(Family.SD2), entry, dtype, config)
        return pipeline_class(Family.SD2_DEPTH)(
            vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
            scheduler=parts.scheduler, **_without_estimator(entry.family),
        )
    return _load_single_file(pipeline_class(entry.family), entry, dtype, config)


def _load_single_file(cls, entry: ModelEntry, dtype: torch.dtype, config: Path) -> DiffusionPipeline:
    return cls.from_single_file(
        str(entry.path),
        config=str(config),
        # Without tokenizer=, transformers 5 quietly builds an empty 2-token tokenizer.
        tokenizer=tokenizer_for(entry.family),
        local_files_only=True,
        dtype=dtype,
    )


def _diffusers_folder(entry: ModelEntry, dtype: torch.dtype) -> DiffusionPipeline:
    if not any(entry.path.rglob("*.safetensors")):
        raise ModelLoadError(
            f"'{entry.title}' holds no .safetensors weights. Easel does not open pickled .bin weights "
            "(they can run code); get the safetensors version of this model."
        )
    extra = _without_estimator(entry.family)
    if entry.family not in (Family.X4_UPSCALER, Family.SD2_DEPTH):
        extra = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipeline_class(entry.family).from_pretrained(
        entry.path, dtype=dtype, local_files_only=True, use_safetensors=True, **extra
    )


def load_vae(vae: VaeEntry, family: Family, dtype: torch.dtype, config_root: Path = MODEL_CONFIGS_DIR) -> AutoencoderKL:
    """A standalone VAE file (A1111's models/VAE/), shaped by the checkpoint family's VAE config."""
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_single_file(
            str(vae.path),
            config=str(config_folder(family, config_root)),
            subfolder="vae",
            local_files_only=True,
            dtype=dtype,
        )
    except LOAD_ERRORS as error:
        raise ModelLoadError(
            f"Could not load the VAE '{vae.title}' for this checkpoint: {load_failure(error)} It may also be made "
            "for another kind of model; choose Automatic to use the checkpoint's own VAE."
        ) from error
