"""Builds a diffusers pipeline from a registry entry, offline, without ever unpickling code.

Single files are loaded with the config folder of their family shipped in `configs/models/` and the
tokenizer in `configs/tokenizer/`: diffusers would otherwise download configs from the hub (even
with local_files_only) or guess them and lose settings such as SD 2.1's `upcast_attention`.
"""

import pickle
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
)
from safetensors import SafetensorError
from transformers import CLIPTokenizer

from app.errors import ModelLoadError
from app.models import families
from app.models.detect import is_code_refusal
from app.models.registry import SINGLE_FILE, ModelEntry, VaeEntry

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
TOKENIZER_DIR = CONFIGS_DIR / "tokenizer"
MODEL_CONFIGS_DIR = CONFIGS_DIR / "models"

CONFIG_FOLDERS = {
    families.SD1: "sd15",
    families.SD1_INPAINT: "sd15-inpainting",
    families.SD2_V: "sd21",
    families.SD2: "sd21-base",
    families.SD2_INPAINT: "sd2-inpainting",
    families.X4_UPSCALER: "x4-upscaler",
}

PIPELINE_CLASSES = {
    families.SD1: StableDiffusionPipeline,
    families.SD2_V: StableDiffusionPipeline,
    families.SD2: StableDiffusionPipeline,
    families.SD1_INPAINT: StableDiffusionInpaintPipeline,
    families.SD2_INPAINT: StableDiffusionInpaintPipeline,
    families.X4_UPSCALER: StableDiffusionUpscalePipeline,
}


def config_folder(family: str, config_root: Path = MODEL_CONFIGS_DIR) -> Path:
    return Path(config_root) / CONFIG_FOLDERS[family]


def tokenizer_for(family: str) -> CLIPTokenizer:
    """SD 1.x pads with <|endoftext|>; the OpenCLIP models (SD 2.x, the upscaler) with "!"."""
    if family in (families.SD1, families.SD1_INPAINT):
        return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="!")


def load_pipeline(entry: ModelEntry, dtype: torch.dtype, config_root: Path = MODEL_CONFIGS_DIR) -> DiffusionPipeline:
    """The entry's pipeline on the CPU in `dtype`; the caller moves it where the device plan says.

    `config_root` holds one config folder per family (configs/models/; tests pass tiny ones)."""
    if entry.problem:
        raise ModelLoadError(entry.problem)
    try:
        if entry.layout == SINGLE_FILE:
            pipe = _single_file(entry, dtype, config_folder(entry.family, config_root))
        else:
            pipe = _diffusers_folder(entry, dtype)
    except ModelLoadError:
        raise
    except pickle.UnpicklingError as error:
        if is_code_refusal(error):
            raise ModelLoadError(
                f"Easel refused '{entry.title}': it is a pickle that would run Python code when opened. "
                "Use a .safetensors version of this model."
            ) from None
        raise ModelLoadError(
            f"Could not load the checkpoint '{entry.title}': the file is damaged. Download it again."
        ) from None
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, SafetensorError) as error:
        if is_code_refusal(error):  # diffusers wraps torch's refusal in an OSError
            raise ModelLoadError(
                f"Easel refused '{entry.title}': it is a pickle that would run Python code when opened. "
                "Use a .safetensors version of this model."
            ) from None
        raise ModelLoadError(
            f"Could not load the checkpoint '{entry.title}': the file looks damaged or incomplete ({error}). "
            "Download it again, or remove it from the models folder."
        ) from error
    pipe.set_progress_bar_config(disable=True)  # progress is reported through the job instead
    return pipe


def _single_file(entry: ModelEntry, dtype: torch.dtype, config: Path) -> DiffusionPipeline:
    return PIPELINE_CLASSES[entry.family].from_single_file(
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
    extra = {}
    if entry.family != families.X4_UPSCALER:
        extra = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return PIPELINE_CLASSES[entry.family].from_pretrained(
        entry.path, dtype=dtype, local_files_only=True, use_safetensors=True, **extra
    )


def load_vae(vae: VaeEntry, family: str, dtype: torch.dtype, config_root: Path = MODEL_CONFIGS_DIR) -> AutoencoderKL:
    """A standalone VAE file (A1111's models/VAE/), shaped by the checkpoint family's VAE config."""
    try:
        return AutoencoderKL.from_single_file(
            str(vae.path),
            config=str(config_folder(family, config_root)),
            subfolder="vae",
            local_files_only=True,
            dtype=dtype,
        )
    except pickle.UnpicklingError as error:
        reason = "it would run Python code when opened" if is_code_refusal(error) else "the file is damaged"
        raise ModelLoadError(f"Easel cannot use the VAE '{vae.title}': {reason}. Use a .safetensors VAE.") from None
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, SafetensorError) as error:
        raise ModelLoadError(
            f"Could not load the VAE '{vae.title}' for this checkpoint ({error}). It may be damaged or made "
            "for another kind of model; choose Automatic to use the checkpoint's own VAE."
        ) from error
