"""Tiny, randomly initialised models of every Stable Diffusion family Easel runs, for the tests and
benches (the demo's SD 1.x model, app/models/demo.py, is the base they are built on).

They exercise every code path of the real models (same classes, same layer kinds, the real
tokenizer, a VAE with the real latent scale factor of 8) in about a second on one CPU thread.
Their images are noise: they were never trained.
"""

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionDepth2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)

from app.models.demo import SCHEDULE, save_marked, tiny_sd1_pipeline, tiny_text_encoder, tiny_unet, tiny_vae
from app.models.families import Family
from app.models.loader import tokenizer_for


def tiny_pipeline(family: Family = Family.SD1, seed: int = 0):
    """A tiny pipeline of the given family, identical for the same seed."""
    if family.is_inpainting:
        return _tiny_inpaint(family, seed)
    if family is Family.X4_UPSCALER:
        return _tiny_upscaler(seed)
    if family.is_depth:
        return _tiny_depth(seed)
    if family is Family.SD1:
        return tiny_sd1_pipeline(seed)
    torch.manual_seed(seed)
    return StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder("gelu"),
        tokenizer=tokenizer_for(family),
        unet=tiny_unet(attention_head_dim=(4, 8), use_linear_projection=True, upcast_attention=True),
        scheduler=DDIMScheduler(
            **SCHEDULE,
            prediction_type="v_prediction" if family is Family.SD2_V else "epsilon",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _with_unet_inputs(base, in_channels: int, seed: int) -> dict:
    """`base`'s modules, with a UNet of the same shape but `in_channels` inputs (inpainting: 9, depth: 5)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config({**base.unet.config, "in_channels": in_channels}).eval()
    return dict(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
                scheduler=base.scheduler)


def _tiny_inpaint(family: Family, seed: int) -> StableDiffusionInpaintPipeline:
    """The tiny text-to-image model of the base family with an inpainting UNet (in_channels 9)."""
    base = tiny_pipeline(Family.SD1 if family is Family.SD1_INPAINT else Family.SD2, seed)
    return StableDiffusionInpaintPipeline(
        **_with_unet_inputs(base, 9, seed),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _tiny_depth(seed: int) -> StableDiffusionDepth2ImgPipeline:
    """SD 2 depth, tiny: the SD 2 base model with a UNet taking the depth map as a fifth channel.
    No estimator inside, as Easel loads it (see `save_tiny_depth_estimator`)."""
    return StableDiffusionDepth2ImgPipeline(
        **_with_unet_inputs(tiny_pipeline(Family.SD2, seed), 5, seed),
        depth_estimator=None,
        feature_extractor=None,
    )


def save_tiny_depth_estimator(folder: Path, seed: int = 0) -> Path:
    """A tiny random DPT depth estimator (the plain ViT DPT, not the hybrid: same classes and
    outputs as Intel/dpt-hybrid-midas) and its image processor, saved as a folder in safetensors."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    config = DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 16, 32],
        fusion_hidden_size=16, is_hybrid=False, head_in_index=-1,
    )
    model = DPTForDepthEstimation(config).eval()
    with torch.no_grad():
        # With transformers' small init the map comes out ~1e-7 everywhere, and its final ReLU zeroes
        # most of it: He-initialised convolutions give a map with a real range, lifted above zero.
        for conv in (m for m in [*model.neck.modules(), *model.head.modules()] if isinstance(m, torch.nn.Conv2d)):
            conv.weight.normal_(0.0, (2.0 / (conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1])) ** 0.5)
            if conv.bias is not None:
                conv.bias.zero_()
        model.head.head[-2].bias.fill_(5.0)
    model.save_pretrained(folder, safe_serialization=True)
    DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return Path(folder)


def _tiny_upscaler(seed: int) -> StableDiffusionUpscalePipeline:
    """The x4 upscaler's architecture, tiny: 7-channel UNet with 1000 noise-level classes, 3-level VAE."""
    text = tiny_pipeline(Family.SD2_V, seed)  # OpenCLIP-style (gelu) text encoder, "!" padding
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
        pipe = tiny_pipeline(family, seed)
        if family.is_depth:  # its folder is read by the text-to-image single-file loader (app.models.loader)
            parts = {part: pipe.components[part] for part in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
            pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(folder, safe_serialization=True)
        for weights in folder.rglob("*.safetensors"):
            weights.unlink()
    return Path(root)


def save_tiny_model(folder: Path, family: Family = Family.SD1, seed: int = 0) -> Path:
    """Write a tiny model as a diffusers folder (safetensors, marked as a demo: it draws noise),
    unless one is already there."""
    if (Path(folder) / "model_index.json").is_file():
        return Path(folder)
    return save_marked(tiny_pipeline(family, seed), folder, family)


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


def save_tiny_taesd(folder: Path, seed: int = 0) -> Path:
    """A tiny random AutoencoderTiny (TAESD's architecture, 8x, 4 latent channels) in diffusers' layout."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    blocks = (8, 8, 8, 8)
    model = AutoencoderTiny(encoder_block_out_channels=blocks, decoder_block_out_channels=blocks,
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    model.save_pretrained(folder, safe_serialization=True)
    return Path(folder)
