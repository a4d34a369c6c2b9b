"""diffusers -> LDM single file: diffusers' own `from_single_file` gives back identical weights and pixels.

Tiny random models of every real architecture (SD 1.x, SD 2.x-v, inpainting, the x4 upscaler) are
written with `save_single_file` and loaded back fully offline with
`Cls.from_single_file(path, config=<diffusers config folder without weights>, local_files_only=True)`.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    infer_diffusers_model_type,
)
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from app.models.families import Family
from tools.ldm_convert import (
    ConversionError,
    ldm_state_dict,
    open_clip_to_ldm,
    save_single_file,
    unet_to_ldm,
    vae_to_ldm,
)
from tools.tiny_models import tiny_pipeline

COMPONENTS = ("unet", "vae", "text_encoder")


# name -> (pipeline class, factory, what diffusers' key-shape detection says about the tiny file)
CASES = {
    # Falls through to the default: the tiny UNet has no input_blocks.11 / output_blocks.11 keys.
    "sd1": (StableDiffusionPipeline, lambda: tiny_pipeline(Family.SD1, 0), "v1"),
    # Confused by the tiny size: SD2 is told by a cross-attention width of 1024 (the tiny one is 32)
    # on input_blocks.2.1, a key the 2-level tiny UNet doesn't have.
    "sd2-v": (StableDiffusionPipeline, lambda: tiny_pipeline(Family.SD2_V, 1), "v1"),
    "sd1-inpaint": (StableDiffusionInpaintPipeline, lambda: tiny_pipeline(Family.SD1_INPAINT, 2), "inpainting"),
    # Not "inpainting_v2", for the same reason as sd2-v.
    "sd2-inpaint": (StableDiffusionInpaintPipeline, lambda: tiny_pipeline(Family.SD2_INPAINT, 4), "inpainting"),
    "x4-upscaler": (StableDiffusionUpscalePipeline, lambda: tiny_pipeline(Family.X4_UPSCALER, 3), "upscale"),
}


def config_folder(pipe, where: Path) -> Path:
    """A diffusers config folder (model_index.json, component configs, tokenizer) with no weights.

    diffusers would ignore weights there anyway for unet/vae/text_encoder (they always come from the
    single file); leaving them out proves nothing is read from them.
    """
    full = where / "diffusers"
    pipe.save_pretrained(full, safe_serialization=True)
    config = where / "config"
    shutil.copytree(full, config, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.ckpt"))
    shutil.rmtree(full)
    return config


def load_single(cls, path: Path, config: Path):
    pipe = cls.from_single_file(str(path), config=str(config), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_same_weights(original, loaded) -> None:
    for name in COMPONENTS:
        a = getattr(original, name).state_dict()
        b = getattr(loaded, name).state_dict()
        assert a.keys() == b.keys(), f"{name}: {sorted(set(a) ^ set(b))[:5]}"
        for key in a:
            assert b[key].device.type == "cpu", f"{name}.{key} was never loaded"
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), f"{name}.{key} differs"


def generate(pipe, kind: str) -> np.ndarray:
    kwargs = dict(prompt="a red fox in the snow", num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(7))
    if isinstance(pipe, StableDiffusionUpscalePipeline):
        low_res = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
        kwargs.update(image=low_res)  # 16 px in, 64 px out
    else:
        kwargs.update(height=64, width=64)
        if isinstance(pipe, StableDiffusionInpaintPipeline):
            image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
            mask = Image.new("L", (64, 64), 0)
            mask.paste(255, (16, 16, 48, 48))
            kwargs.update(image=image, mask_image=mask)
    images = pipe(**kwargs).images
    assert images.shape == (1, 64, 64, 3)
    return images


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> (original pipeline, single file, config folder), built once for the module."""
    built = {}

    def get(name):
        if name not in built:
            cls, factory, _ = CASES[name]
            where = tmp_path_factory.mktemp(name)
            pipe = factory()
            pipe.set_progress_bar_config(disable=True)
            assert isinstance(pipe, cls)
            path = save_single_file(pipe, where / "model.safetensors")
            built[name] = (pipe, path, config_folder(pipe, where))
        return built[name]

    return get


# --- the round trip through diffusers' own loader ----------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_from_single_file_gives_identical_weights_and_pixels(converted, name):
    cls = CASES[name][0]
    pipe, path, config = converted(name)
    loaded = load_single(cls, path, config)
    assert type(loaded) is cls
    assert_same_weights(pipe, loaded)
    assert np.array_equal(generate(pipe, name), generate(loaded, name))


@pytest.mark.parametrize("name", list(CASES))
def test_infer_diffusers_model_type_on_tiny_files(converted, name):
    """What diffusers' key-shape detection makes of each tiny file (only used when no config= is given)."""
    _, path, _ = converted(name)
    assert infer_diffusers_model_type(load_file(path)) == CASES[name][2]


@pytest.mark.parametrize("name", list(CASES))
def test_diffusers_converters_invert_ours_exactly(converted, name):
    """Each of diffusers' conversion functions, fed our file, gives back exactly the model's state dict."""
    pipe, path, _ = converted(name)
    ckpt = load_file(path)
    unet = convert_ldm_unet_checkpoint(ckpt, dict(pipe.unet.config))
    vae = convert_ldm_vae_checkpoint(ckpt, dict(pipe.vae.config))
    if pipe.text_encoder.config.hidden_act == "quick_gelu":
        text = convert_ldm_clip_checkpoint(ckpt)
    else:
        text = convert_open_clip_checkpoint(pipe.text_encoder, ckpt)
    text = {k.removeprefix("text_model."): v for k, v in text.items()}  # transformers 5: no text_model.
    for converted_back, module in ((unet, pipe.unet), (vae, pipe.vae), (text, pipe.text_encoder)):
        original = module.state_dict()
        assert converted_back.keys() == original.keys()
        assert all(torch.equal(converted_back[k], original[k]) for k in original)
    # Nothing in the file is left over: every tensor belongs to one of the three models.
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")
    assert all(k.startswith(prefixes) for k in ckpt)


# --- the layout itself --------------------------------------------------------------------------


def test_sd1_keys_are_the_real_ones(converted):
    pipe, path, _ = converted("sd1")
    sd = load_file(path)
    for key in (
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.2.0.op.weight",
        "model.diffusion_model.input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.middle_block.2.out_layers.3.weight",
        "model.diffusion_model.output_blocks.1.2.conv.weight",  # upsampler after an attention block
        "model.diffusion_model.output_blocks.3.0.skip_connection.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.decoder.conv_in.weight",
        "first_stage_model.encoder.down.0.block.0.norm1.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.decoder.up.3.block.0.conv1.weight",
        "first_stage_model.decoder.up.1.upsample.conv.weight",
        "first_stage_model.encoder.mid.block_1.conv1.weight",
        "first_stage_model.decoder.norm_out.weight",
        "first_stage_model.post_quant_conv.weight",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ):
        assert key in sd, key
    # LDM's decoder counts levels from the lowest resolution: diffusers' up_blocks.0 is up.3.
    assert torch.equal(sd["first_stage_model.decoder.up.3.block.0.conv1.weight"],
                       pipe.vae.state_dict()["decoder.up_blocks.0.resnets.0.conv1.weight"])
    # The VAE's attention as the real checkpoints store it: 1x1 conv weights.
    channels = pipe.vae.config.block_out_channels[-1]
    for side in ("encoder", "decoder"):
        for part in ("q", "k", "v", "proj_out"):
            assert sd[f"first_stage_model.{side}.mid.attn_1.{part}.weight"].shape == (channels, channels, 1, 1)
            assert sd[f"first_stage_model.{side}.mid.attn_1.{part}.bias"].shape == (channels,)
        assert f"first_stage_model.{side}.mid.attn_1.norm.weight" in sd


def test_openclip_keys_are_the_real_ones(converted):
    pipe, path, _ = converted("sd2-v")
    sd = load_file(path)
    width = pipe.text_encoder.config.hidden_size
    assert sd["cond_stage_model.model.token_embedding.weight"].shape == (49408, width)
    assert sd["cond_stage_model.model.positional_embedding"].shape == (77, width)
    assert "cond_stage_model.model.ln_final.weight" in sd
    layers = pipe.text_encoder.config.num_hidden_layers
    for n in range(layers):
        block = f"cond_stage_model.model.transformer.resblocks.{n}."
        assert sd[block + "attn.in_proj_weight"].shape == (3 * width, width)
        assert sd[block + "attn.in_proj_bias"].shape == (3 * width,)
        for part in ("attn.out_proj.weight", "ln_1.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_proj.bias"):
            assert block + part in sd
    assert f"cond_stage_model.model.transformer.resblocks.{layers}.ln_1.weight" not in sd
    # q, k, v stacked in that order
    text = pipe.text_encoder.state_dict()
    fused = sd["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
    assert torch.equal(fused[width:2 * width], text["encoder.layers.0.self_attn.k_proj.weight"])
    # CLIPTextModel has no projection, so there is none to write
    assert "cond_stage_model.model.text_projection" not in sd
    assert not any(k.startswith("cond_stage_model.transformer.") for k in sd)


def test_upscaler_keys(converted):
    pipe, path, _ = converted("x4-upscaler")
    sd = load_file(path)
    assert torch.equal(sd["model.diffusion_model.label_emb.weight"], pipe.unet.state_dict()["class_embedding.weight"])
    assert sd["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 7
    assert "model.diffusion_model.input_blocks.10.0.skip_connection.bias" in sd
    # three VAE levels: down.0..2 / up.0..2, the last encoder level without a downsampler
    assert "first_stage_model.encoder.down.1.downsample.conv.weight" in sd
    assert "first_stage_model.encoder.down.2.downsample.conv.weight" not in sd
    assert "first_stage_model.decoder.up.2.upsample.conv.weight" in sd
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in sd
    assert not any(".down.3." in k or ".up.3." in k for k in sd)


def test_ckpt_output_loads_with_weights_only(converted, tmp_path):
    pipe, path, config = converted("sd1")
    ckpt = save_single_file(pipe, tmp_path / "model.ckpt")
    data = torch.load(ckpt, weights_only=True)
    assert set(data) == {"state_dict"}
    reference = load_file(path)
    assert data["state_dict"].keys() == reference.keys()
    assert all(torch.equal(data["state_dict"][k], reference[k]) for k in reference)
    assert_same_weights(pipe, load_single(StableDiffusionPipeline, ckpt, config))


def test_same_file_and_config_load_as_img2img(converted):
    pipe, path, config = converted("sd1")
    loaded = load_single(StableDiffusionImg2ImgPipeline, path, config)
    assert type(loaded) is StableDiffusionImg2ImgPipeline
    assert_same_weights(pipe, loaded)


def test_ldm_state_dict_matches_the_file(converted):
    pipe, path, _ = converted("sd2-v")
    sd = ldm_state_dict(pipe)
    on_disk = load_file(path)
    assert sd.keys() == on_disk.keys()
    assert all(torch.equal(sd[k], on_disk[k]) for k in sd)


def test_sd2_penultimate_text_encoder_writes_the_layers_it_has():
    """SD 2.x diffusers configs hold 23 of OpenCLIP's 24 layers: we write 23, and they load back."""
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, hidden_size=8, intermediate_size=12,
                            num_attention_heads=2, num_hidden_layers=23, hidden_act="gelu")
    encoder = CLIPTextModel(config).eval()
    sd = {"cond_stage_model.model." + k: v for k, v in open_clip_to_ldm(encoder.state_dict()).items()}
    assert "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight" in sd
    assert not any(".resblocks.23." in k for k in sd)
    back = {k.removeprefix("text_model."): v for k, v in convert_open_clip_checkpoint(encoder, sd).items()}
    original = encoder.state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_unknown_weights_are_refused_not_dropped():
    pipe = tiny_pipeline(Family.SD1, 0)
    unet = dict(pipe.unet.state_dict())
    unet["encoder_hid_proj.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="encoder_hid_proj"):
        unet_to_ldm(unet)
    vae = dict(pipe.vae.state_dict())
    vae["decoder.mid_block.attentions.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="extra"):
        vae_to_ldm(vae)
    text = dict(pipe.text_encoder.state_dict())
    text["encoder.layers.0.self_attn.rotary.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="rotary"):
        open_clip_to_ldm(text)


def test_real_sized_models_are_recognised_by_diffusers():
    """At the released sizes (weights on the meta device: no memory, no time) diffusers' key-shape
    detection names every family correctly, so the layout matches the real files."""
    from accelerate import init_empty_weights

    sd2_unet = dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
    with init_empty_weights():
        unets = {
            "v1": UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8),
            "v2": UNet2DConditionModel(**sd2_unet),
            "inpainting_v2": UNet2DConditionModel(in_channels=9, **sd2_unet),
            "upscale": UNet2DConditionModel(
                in_channels=7, out_channels=4, block_out_channels=(256, 512, 512, 1024), layers_per_block=2,
                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
                up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
                only_cross_attention=(True, True, True, False), cross_attention_dim=1024, attention_head_dim=8,
                use_linear_projection=True, num_class_embeds=1000),
        }
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2)
    for expected, unet in unets.items():
        ldm = {"model.diffusion_model." + k: v for k, v in unet_to_ldm(unet.state_dict()).items()}
        ldm.update({"first_stage_model." + k: v for k, v in vae_to_ldm(vae.state_dict()).items()})
        assert infer_diffusers_model_type(ldm) == expected
        if expected == "v1":
            # v1-5-pruned-emaonly holds 686 UNet and 248 VAE tensors
            assert len(ldm) == 686 + 248
