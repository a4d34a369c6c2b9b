"""The diffusers-layout config folders in configs/models/ build the real architectures.

Each folder is what `Pipeline.from_single_file(ckpt, config=<folder>, tokenizer=...)` reads to load an
A1111-style checkpoint offline (see configs/models/README.md). Building a model with the wrong shape
only fails at load time, on a multi-GB file the tests don't have, so here every unet/vae/text encoder
is built on the meta device (no memory, no init cost) and its parameter count is compared with the
real model's.

Where the counts come from:
- SD 1.5 UNet 859,520,964, SD 2.x UNet 865,910,724, SD VAE 83,653,863, CLIP ViT-L/14 text encoder
  123,060,480: the published sizes of these models.
- Inpainting UNets: the base UNet plus 5 more conv_in input channels, 320 * 5 * 3 * 3 = 14,400.
- SD 2 depth UNet (512-depth-ema): the SD 2 UNet plus 1 more conv_in input channel (the depth map), 2,880.
- SD 2.x / x4 text encoder (OpenCLIP ViT-H as a 23-layer CLIPTextModel, "penultimate layer"):
  340,387,840, derived by hand: 23 layers * 12,596,224 + token 49408 * 1024 + position 77 * 1024
  + final LayerNorm 2048. (The 24th OpenCLIP layer and the text projection are not part of it.)
- x4 upscaler UNet 473,398,020 and 3-level VAE 55,325,927: no published figure found. The values are
  what these configs give, and `_ldm_unet_params` / `_ldm_vae_params` below (written from the
  original LDM architecture in Stability-AI's x4-upscaling.yaml, not from diffusers) give the same
  numbers -- the same counter also reproduces every published count above.
"""

import json
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

MODELS = Path(__file__).resolve().parents[2] / "configs" / "models"

SD1_UNET = 859_520_964
SD2_UNET = 865_910_724
INPAINT_EXTRA = 320 * 5 * 3 * 3  # conv_in: 5 more input channels (mask + masked-image latents)
DEPTH_EXTRA = 320 * 1 * 3 * 3    # conv_in: 1 more input channel (the depth map)
SD_VAE = 83_653_863
CLIP_L = 123_060_480
OPENCLIP_H_23 = 340_387_840
X4_UNET = 473_398_020  # computed from the config; cross-checked by the LDM counter below
X4_VAE = 55_325_927  # idem

# folder: (pipeline class, scheduler class, prediction_type, unet, vae, text encoder, flags)
FAMILIES = {
    "sd15": (StableDiffusionPipeline, PNDMScheduler, "epsilon", SD1_UNET, SD_VAE, CLIP_L,
             dict(in_channels=4, cross_attention_dim=768, upcast_attention=False, sample_size=64,
                  use_linear_projection=False, hidden_act="quick_gelu", layers=12, scaling_factor=0.18215)),
    "sd15-inpainting": (StableDiffusionInpaintPipeline, DDIMScheduler, "epsilon", SD1_UNET + INPAINT_EXTRA, SD_VAE,
                        CLIP_L,
                        dict(in_channels=9, cross_attention_dim=768, upcast_attention=False, sample_size=64,
                             use_linear_projection=False, hidden_act="quick_gelu", layers=12,
                             scaling_factor=0.18215)),
    "sd21": (StableDiffusionPipeline, DDIMScheduler, "v_prediction", SD2_UNET, SD_VAE, OPENCLIP_H_23,
             dict(in_channels=4, cross_attention_dim=1024, upcast_attention=True, sample_size=96,
                  use_linear_projection=True, hidden_act="gelu", layers=23, scaling_factor=0.18215)),
    "sd21-base": (StableDiffusionPipeline, PNDMScheduler, "epsilon", SD2_UNET, SD_VAE, OPENCLIP_H_23,
                  dict(in_channels=4, cross_attention_dim=1024, upcast_attention=False, sample_size=64,
                       use_linear_projection=True, hidden_act="gelu", layers=23, scaling_factor=0.18215)),
    "sd2-inpainting": (StableDiffusionInpaintPipeline, PNDMScheduler, "epsilon", SD2_UNET + INPAINT_EXTRA, SD_VAE,
                       OPENCLIP_H_23,
                       dict(in_channels=9, cross_attention_dim=1024, upcast_attention=False, sample_size=64,
                            use_linear_projection=True, hidden_act="gelu", layers=23, scaling_factor=0.18215)),
    # Read by StableDiffusionPipeline.from_single_file; the loader assembles the depth pipeline.
    "sd2-depth": (StableDiffusionPipeline, PNDMScheduler, "epsilon", SD2_UNET + DEPTH_EXTRA, SD_VAE, OPENCLIP_H_23,
                  dict(in_channels=5, cross_attention_dim=1024, upcast_attention=False, sample_size=64,
                       use_linear_projection=True, hidden_act="gelu", layers=23, scaling_factor=0.18215)),
    "x4-upscaler": (StableDiffusionUpscalePipeline, DDIMScheduler, "v_prediction", X4_UNET, X4_VAE, OPENCLIP_H_23,
                    dict(in_channels=7, cross_attention_dim=1024, upcast_attention=False, sample_size=128,
                         use_linear_projection=True, hidden_act="gelu", layers=23, scaling_factor=0.08333)),
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def built():
    """{folder: (unet, vae, text_encoder)}, all on the meta device."""
    out = {}
    with torch.device("meta"):
        for name in FAMILIES:
            folder = MODELS / name
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
            text_encoder = CLIPTextModel(CLIPTextConfig.from_json_file(folder / "text_encoder" / "config.json"))
            out[name] = (unet, vae, text_encoder)
    return out


def test_the_seven_families_are_there():
    assert sorted(p.name for p in MODELS.iterdir() if p.is_dir()) == sorted(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_parameter_counts_match_the_real_models(built, name):
    unet, vae, text_encoder = built[name]
    _, _, _, n_unet, n_vae, n_text, _ = FAMILIES[name]
    assert next(unet.parameters()).device.type == "meta"
    assert _count(unet) == n_unet
    assert _count(vae) == n_vae
    assert _count(text_encoder) == n_text


@pytest.mark.parametrize("name", FAMILIES)
def test_family_flags(built, name):
    unet, vae, text_encoder = built[name]
    _, _, _, _, _, _, flags = FAMILIES[name]
    for key in ("in_channels", "cross_attention_dim", "upcast_attention", "sample_size", "use_linear_projection"):
        assert unet.config[key] == flags[key], key
    assert unet.config.out_channels == 4
    assert vae.config.scaling_factor == flags["scaling_factor"]
    assert text_encoder.config.hidden_act == flags["hidden_act"]
    assert text_encoder.config.num_hidden_layers == flags["layers"]
    assert text_encoder.config.vocab_size == 49408 and text_encoder.config.max_position_embeddings == 77


def test_sd2_and_upscaler_specifics(built):
    for name in ("sd21", "sd21-base", "sd2-inpainting", "sd2-depth"):
        unet, vae, text_encoder = built[name]
        assert unet.config.attention_head_dim == [5, 10, 20, 20]
        assert text_encoder.config.hidden_size == 1024 and text_encoder.config.projection_dim == 512
    assert built["sd21"][1].config.sample_size == 768
    unet, vae, _ = built["x4-upscaler"]
    assert unet.config.num_class_embeds == 1000
    assert list(unet.config.block_out_channels) == [256, 512, 512, 1024]
    assert list(unet.config.only_cross_attention) == [True, True, True, False]
    assert len(vae.config.block_out_channels) == 3  # latent scale 4: 128 px in -> 512 px out


@pytest.mark.parametrize("name", FAMILIES)
def test_schedulers_load_from_the_folder(name):
    """As from_single_file loads them: `Cls.from_pretrained(folder, subfolder=...)`, offline."""
    folder = MODELS / name
    _, scheduler_cls, prediction_type, *_ = FAMILIES[name]
    scheduler = scheduler_cls.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    assert scheduler.config.prediction_type == prediction_type
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.config.beta_schedule == "scaled_linear"
    if name == "x4-upscaler":
        assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.0001, 0.02)
        low = DDPMScheduler.from_pretrained(folder, subfolder="low_res_scheduler", local_files_only=True)
        assert (low.config.beta_start, low.config.beta_end) == (0.0001, 0.02)
    else:
        assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)


@pytest.mark.parametrize("name", FAMILIES)
def test_folder_has_what_from_single_file_reads(name):
    """model_index.json names every required component; each has its config; no tokenizer, no weights."""
    folder = MODELS / name
    pipeline_cls = FAMILIES[name][0]
    index = pipeline_cls.load_config(folder)
    assert index["_class_name"] == pipeline_cls.__name__
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    for optional in ("safety_checker", "feature_extractor"):
        assert index[optional] == [None, None]
    if pipeline_cls is StableDiffusionUpscalePipeline:
        assert index["max_noise_level"] == 350 and index["watermarker"] == [None, None]
    else:
        assert index["requires_safety_checker"] is False

    # Components from_single_file must load (tokenizer excepted: it is passed in as a kwarg).
    classes = [pipeline_cls] + ([StableDiffusionImg2ImgPipeline] if pipeline_cls is StableDiffusionPipeline else [])
    for cls in classes:  # the same folder also serves img2img
        expected, _ = cls._get_signature_keys(cls)
        required = set(expected) - set(cls._optional_components)
        for component in required:
            library, class_name = index[component]
            assert library in ("diffusers", "transformers"), component
            if component == "tokenizer":
                continue
            config_name = "scheduler_config.json" if "scheduler" in component else "config.json"
            assert (folder / component / config_name).is_file(), component

    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert not (folder / "tokenizer").exists()
    assert all(f.endswith(".json") for f in files), files
    for f in files:
        json.loads((folder / f).read_text())
    # from_single_file reads the text encoder config this way (create_diffusers_clip_model_from_ldm).
    config = CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder", local_files_only=True)
    assert config.num_hidden_layers == FAMILIES[name][6]["layers"]


@pytest.fixture(scope="module")
def stub_checkpoint(tmp_path_factory):
    """A one-tensor .safetensors: from_single_file needs a file, the models are passed in (meta)."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("ckpt") / "stub.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.bias": torch.zeros(320)}, str(path))
    return path


@pytest.mark.parametrize("name", FAMILIES)
def test_from_single_file_builds_the_pipeline_from_the_folder(built, stub_checkpoint, name):
    """The call the app makes, with the weights-bearing models passed in so no checkpoint is needed:
    model_index.json, the scheduler(s) and the null optional components all come from the folder,
    the tokenizer from the `tokenizer=` kwarg (the folder has none)."""
    from transformers import CLIPTokenizer

    unet, vae, text_encoder = built[name]
    pipeline_cls, scheduler_cls, prediction_type, *_ = FAMILIES[name]
    sd2 = text_encoder.config.num_hidden_layers == 23
    tokenizer = CLIPTokenizer.from_pretrained(MODELS.parent / "tokenizer", **({"pad_token": "!"} if sd2 else {}))
    pipe = pipeline_cls.from_single_file(
        str(stub_checkpoint), config=str(MODELS / name), tokenizer=tokenizer, local_files_only=True,
        unet=unet, vae=vae, text_encoder=text_encoder,
    )
    assert type(pipe) is pipeline_cls
    assert pipe.tokenizer is tokenizer and len(pipe.tokenizer) == 49408
    assert type(pipe.scheduler) is scheduler_cls and pipe.scheduler.config.prediction_type == prediction_type
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    if pipeline_cls is StableDiffusionUpscalePipeline:
        assert type(pipe.low_res_scheduler) is DDPMScheduler and pipe.config.max_noise_level == 350
        assert pipe.vae_scale_factor == 4
    else:
        assert pipe.config.requires_safety_checker is False and pipe.vae_scale_factor == 8


# --- An independent count, written from the original LDM modules (openaimodel.UNetModel with
# SpatialTransformer; autoencoder Encoder/Decoder), to check the configs against the LDM yaml. ---

def _conv(i, o, k):
    return i * o * k * k + o


def _lin(i, o, bias=True):
    return i * o + (o if bias else 0)


def _resblock(cin, cout, temb):
    n = 2 * cin + _conv(cin, cout, 3) + 2 * cout + _conv(cout, cout, 3)
    n += _lin(temb, cout) if temb else 0
    return n + (_conv(cin, cout, 1) if cin != cout else 0)


def _transformer(c, context_dim, disable_self_attn):
    def attn(kv_dim):
        return _lin(c, c, False) + 2 * _lin(kv_dim, c, False) + _lin(c, c)

    block = attn(context_dim if disable_self_attn else c) + attn(context_dim)
    block += _lin(c, 8 * c) + _lin(4 * c, c) + 3 * 2 * c  # GEGLU feed-forward, 3 LayerNorms
    return 2 * c + _lin(c, c) + block + _lin(c, c)  # GroupNorm, proj_in, proj_out


def _ldm_unet_params(in_ch, mc, mult, attn_res, context_dim, num_classes=None, disable_sa=None):
    disable_sa = disable_sa or [False] * len(mult)
    temb = 4 * mc
    n = _lin(mc, temb) + _lin(temb, temb) + (num_classes * temb if num_classes else 0) + _conv(in_ch, mc, 3)
    chans, ch, ds = [mc], mc, 1
    for level, m in enumerate(mult):
        for _ in range(2):
            n += _resblock(ch, m * mc, temb)
            ch = m * mc
            n += _transformer(ch, context_dim, disable_sa[level]) if ds in attn_res else 0
            chans.append(ch)
        if level != len(mult) - 1:
            n += _conv(ch, ch, 3)
            chans.append(ch)
            ds *= 2
    n += 2 * _resblock(ch, ch, temb) + _transformer(ch, context_dim, False)
    for level, m in reversed(list(enumerate(mult))):
        for i in range(3):
            n += _resblock(ch + chans.pop(), m * mc, temb)
            ch = m * mc
            n += _transformer(ch, context_dim, disable_sa[level]) if ds in attn_res else 0
            if level and i == 2:
                n += _conv(ch, ch, 3)
                ds //= 2
    return n + 2 * ch + _conv(ch, 4, 3)


def _ldm_vae_params(mult, ch=128, z=4):
    def mid(b):
        return 2 * _resblock(b, b, 0) + 2 * b + 4 * _conv(b, b, 1)

    n, ins = _conv(3, ch, 3), (1, *mult)
    for i, m in enumerate(mult):
        b_in, b_out = ch * ins[i], ch * m
        n += _resblock(b_in, b_out, 0) + _resblock(b_out, b_out, 0)
        n += _conv(b_out, b_out, 3) if i != len(mult) - 1 else 0
    b = ch * mult[-1]
    n += mid(b) + 2 * b + _conv(b, 2 * z, 3) + _conv(z, b, 3) + mid(b)
    for i in reversed(range(len(mult))):
        for _ in range(3):
            n += _resblock(b, ch * mult[i], 0)
            b = ch * mult[i]
        n += _conv(b, b, 3) if i else 0
    return n + 2 * b + _conv(b, 3, 3) + _conv(2 * z, 2 * z, 1) + _conv(z, z, 1)


def test_independent_ldm_count_agrees():
    sd = dict(mc=320, mult=[1, 2, 4, 4], attn_res=[4, 2, 1])  # v1-inference.yaml / v2-inference*.yaml
    assert _ldm_unet_params(4, context_dim=768, **sd) == SD1_UNET
    assert _ldm_unet_params(9, context_dim=768, **sd) == SD1_UNET + INPAINT_EXTRA
    assert _ldm_unet_params(4, context_dim=1024, **sd) == SD2_UNET
    assert _ldm_unet_params(9, context_dim=1024, **sd) == SD2_UNET + INPAINT_EXTRA
    assert _ldm_unet_params(5, context_dim=1024, **sd) == SD2_UNET + DEPTH_EXTRA  # v2-midas-inference.yaml
    assert _ldm_vae_params([1, 2, 4, 4]) == SD_VAE
    # x4-upscaling.yaml: model_channels 256, channel_mult [1,2,2,4], attention_resolutions [2,4,8],
    # num_classes 1000, disable_self_attentions [T,T,T,F], context_dim 1024; VAE ch_mult [1,2,4].
    x4 = _ldm_unet_params(7, 256, [1, 2, 2, 4], [2, 4, 8], 1024, num_classes=1000,
                          disable_sa=[True, True, True, False])
    assert x4 == X4_UNET
    assert _ldm_vae_params([1, 2, 4]) == X4_VAE
