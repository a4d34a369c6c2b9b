"""Tiny, randomly initialised models of the real Stable Diffusion architectures.

They exercise every code path of the real models (same classes, same layer kinds, the real
tokenizer, a VAE with the real latent scale factor of 8) in about a second on one CPU thread.
The tests use them, and `launch.py --demo` uses one so that a newcomer without weights can see
the whole app work. Their images are noise: they were never trained.
"""

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from app.models import families
from app.models.families import SD1, SD2_V

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "configs" / "tokenizer"

# The real SD schedules; only the network sizes are tiny.
_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def tokenizer_for(family: str) -> CLIPTokenizer:
    """SD 2.x (OpenCLIP) pads with "!" (id 0); SD 1.x with <|endoftext|>."""
    if family in (SD1, families.SD1_INPAINT):
        return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="!")


def _text_encoder(family: str) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=49408,  # real tokenizer ids must work
        max_position_embeddings=77,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=32,
        hidden_act="quick_gelu" if family in (SD1, families.SD1_INPAINT) else "gelu",  # OpenAI CLIP vs OpenCLIP
    )
    return CLIPTextModel(config).eval()


def _unet(family: str) -> UNet2DConditionModel:
    sd2 = family != SD1
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        # Attention only at the lower resolution keeps a 512 px demo image to a few seconds.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(4, 8) if sd2 else 8,
        use_linear_projection=sd2,
        upcast_attention=sd2,
        norm_num_groups=16,
    ).eval()


def _vae() -> AutoencoderKL:
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


def _scheduler(family: str):
    if family == SD1:
        return PNDMScheduler(**_SCHEDULE, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    return DDIMScheduler(
        **_SCHEDULE,
        prediction_type="v_prediction" if family == SD2_V else "epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_pipeline(family: str = SD1, seed: int = 0):
    """A tiny pipeline of the given family (any of app.models.families), identical for the same seed."""
    if family in (families.SD1_INPAINT, families.SD2_INPAINT):
        return _tiny_inpaint(family, seed)
    if family == families.X4_UPSCALER:
        return _tiny_upscaler(seed)
    torch.manual_seed(seed)
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=_text_encoder(family),
        tokenizer=tokenizer_for(family),
        unet=_unet(family),
        scheduler=_scheduler(family),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _tiny_inpaint(family: str, seed: int) -> StableDiffusionInpaintPipeline:
    """The tiny text-to-image model of the base family with an inpainting UNet (in_channels 9)."""
    base = tiny_pipeline(SD1 if family == families.SD1_INPAINT else families.SD2, seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config({**base.unet.config, "in_channels": 9}).eval()
    return StableDiffusionInpaintPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=unet,
        scheduler=base.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _tiny_upscaler(seed: int) -> StableDiffusionUpscalePipeline:
    """The x4 upscaler's architecture, tiny: 7-channel UNet with 1000 noise-level classes, 3-level VAE."""
    text = tiny_pipeline(SD2_V, seed)  # OpenCLIP-style (gelu) text encoder, "!" padding
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=7,
        out_channels=4,
        # The real block layout (4 levels, 2 resnets each, self-attention off in the first three).
        block_out_channels=(16, 16, 32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        only_cross_attention=(True, True, True, False),
        cross_attention_dim=32,
        attention_head_dim=8,
        use_linear_projection=True,
        num_class_embeds=1000,
        norm_num_groups=8,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=2,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=0.08333,
    ).eval()
    schedule = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", num_train_timesteps=1000)
    return StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text.text_encoder,
        tokenizer=text.tokenizer,
        unet=unet,
        low_res_scheduler=DDPMScheduler(**schedule),
        scheduler=DDIMScheduler(**schedule, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False),
        max_noise_level=350,
    )


def save_tiny_configs(root: Path, seed: int = 0) -> Path:
    """Config folders for the tiny models, laid out like configs/models/ (one per family, no
    weights), so the real single-file loading code can be driven with tiny checkpoints."""
    from app.models.loader import CONFIG_FOLDERS  # the loader's own folder names

    for family, name in CONFIG_FOLDERS.items():
        folder = Path(root) / name
        if (folder / "model_index.json").is_file():
            continue
        tiny_pipeline(family, seed).save_pretrained(folder, safe_serialization=True)
        for weights in folder.rglob("*.safetensors"):
            weights.unlink()
    return Path(root)


def save_tiny_model(folder: Path, family: str = SD1, seed: int = 0) -> Path:
    """Write a tiny model as a diffusers folder (safetensors), unless one is already there."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        tiny_pipeline(family, seed).save_pretrained(folder, safe_serialization=True)
        # A marker the registry reads so the UI can say plainly that this model draws noise.
        (folder / "easel_demo.json").write_text(json.dumps({"demo": True, "family": family}))
    return folder


def tiny_esrgan_state_dict(scale: int = 4, features: int = 8, blocks: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny random Real-ESRGAN (BasicSR's RRDBNet), named and shaped as RealESRGAN_x4plus.pth is.

    Scales 2 and 1 fold the input into 4 or 16 channels first (pixel unshuffle), as BasicSR does;
    the growth channels stay at 32, which spandrel assumes."""
    generator = torch.Generator().manual_seed(seed)
    growth = 32
    first_in = 3 * {4: 1, 2: 4, 1: 16}[scale]
    shapes: dict[str, tuple[int, int]] = {"conv_first": (features, first_in)}
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for conv in range(1, 6):
                out = features if conv == 5 else growth
                shapes[f"body.{block}.rdb{rdb}.conv{conv}"] = (out, features + (conv - 1) * growth)
    shapes.update({name: (features, features) for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr")})
    shapes["conv_last"] = (3, features)
    state = {}
    for name, (out, inp) in shapes.items():
        # Scaled so the output varies with the input around mid-grey instead of saturating.
        state[f"{name}.weight"] = torch.randn(out, inp, 3, 3, generator=generator) * (1.0 / (inp * 9) ** 0.5)
        state[f"{name}.bias"] = torch.randn(out, generator=generator) * 0.01
    state["conv_last.bias"] += 0.5
    return state
