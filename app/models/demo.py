"""The demo model (`launch.py --demo`): a tiny, randomly initialised SD 1.x pipeline.

It has the real architecture (the same classes and layer kinds, the real tokenizer, a VAE with the
real latent scale factor of 8), so a newcomer without weights sees every part of the app work in
seconds on a CPU. Its images are noise: it was never trained. The registry reads the marker file
and says so in the page. The tests build their tiny models of every family on top of this one
(tools/tiny_models.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from app.models.families import Family
from app.models.loader import tokenizer_for

# diffusers and transformers are imported on first use, not at startup: the page answers seconds sooner
# (launch.py serves it before the first checkpoint loads).
if TYPE_CHECKING:
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

DEMO_MODEL_NAME = "Easel demo - tiny random SD 1.x (draws noise)"
DEMO_MARKER = "easel_demo.json"  # in the model folder: the registry flags the model as a demo

# The real SD schedule; only the network sizes are tiny.
SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def tiny_text_encoder(hidden_act: str = "quick_gelu") -> CLIPTextModel:
    """OpenAI CLIP (SD 1.x) uses quick_gelu, OpenCLIP (SD 2.x) gelu."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,  # real tokenizer ids must work
        max_position_embeddings=77,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=32,
        hidden_act=hidden_act,
    )
    return CLIPTextModel(config).eval()


def tiny_unet(**overrides) -> UNet2DConditionModel:
    from diffusers import UNet2DConditionModel

    config = dict(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        # Attention only at the lower resolution keeps a 512 px demo image to a few seconds.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    return UNet2DConditionModel(**{**config, **overrides}).eval()


def tiny_vae() -> AutoencoderKL:
    from diffusers import AutoencoderKL

    # Four levels, like the real VAE: latents are 1/8 of the image, so a 256 px request runs the
    # UNet at 32x32. With fewer levels a single step takes minutes.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=0.18215,
    ).eval()


def tiny_sd1_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A tiny SD 1.x pipeline, identical for the same seed."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    torch.manual_seed(seed)
    return StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(),
        tokenizer=tokenizer_for(Family.SD1),
        unet=tiny_unet(),
        scheduler=PNDMScheduler(**SCHEDULE, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_marked(pipe, folder: Path, family: Family) -> Path:
    """Write `pipe` as a diffusers folder (safetensors) with the demo marker, unless one is already there."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        pipe.save_pretrained(folder, safe_serialization=True)
        (folder / DEMO_MARKER).write_text(json.dumps({"demo": True, "family": family.value}))
    return folder


def save_demo_model(folder: Path) -> Path:
    """The demo model as a diffusers folder in `folder` (kept if it is already there)."""
    if (Path(folder) / "model_index.json").is_file():
        return Path(folder)
    return save_marked(tiny_sd1_pipeline(), folder, Family.SD1)
