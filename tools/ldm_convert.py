"""diffusers -> original LDM single-file layout (the `.safetensors`/`.ckpt` layout A1111 reads).

Written as the exact inverse of diffusers 0.42's own single-file loader
(`diffusers.loaders.single_file_utils`: `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
`convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`), so that
`Pipeline.from_single_file(path, config=<diffusers config folder>)` gives back the very same tensors.

Every mapping is derived from the model's own state-dict keys (number of blocks, resnets per block,
which blocks carry attention or a resampler), never from the sizes of the released models, so it
works for any size, the tiny test models included. A key that has no LDM counterpart raises
`ConversionError` instead of being dropped.

Layout written:
- UNet          -> "model.diffusion_model.*"  (input_blocks / middle_block / output_blocks / out)
- VAE           -> "first_stage_model.*"      (encoder.down / mid / decoder.up, attention q/k/v/proj_out
                                               as 1x1 conv weights [C, C, 1, 1] like the real files)
- text encoder  -> SD 1.x, OpenAI CLIP (quick_gelu): "cond_stage_model.transformer.text_model.*"
                   SD 2.x and the x4 upscaler, OpenCLIP (gelu): "cond_stage_model.model.*" with fused
                   `attn.in_proj_weight/bias`, `transformer.resblocks.N`, `token_embedding`,
                   `positional_embedding`, `ln_final` (and `text_projection`, [width, dim] as OpenCLIP
                   stores it, only when the text encoder has one: `CLIPTextModel` has none).

SD 2.x note: diffusers builds the "penultimate layer" text encoder with 23 layers, the OpenCLIP
checkpoint holds 24 (the last one unused by SD 2.x). We write the layers we have; diffusers loads
that back unchanged, and an OpenCLIP loader that builds 24 layers finds resblocks.23 missing, which
SD 2.x never runs (it stops at the penultimate layer).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # + "text_model.*"
OPEN_CLIP_PREFIX = "cond_stage_model.model."

CLIP = "clip"            # OpenAI CLIP ViT-L/14 (SD 1.x)
OPEN_CLIP = "open_clip"  # OpenCLIP ViT-H/14 (SD 2.x, x4 upscaler)


class ConversionError(ValueError):
    """The model has a weight or a block structure that the LDM layout cannot hold."""


# --------------------------------------------------------------------------------------- UNet

_UNET_FIXED = {  # inverse of DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    "time_embedding.linear_1.weight": "time_embed.0.weight",
    "time_embedding.linear_1.bias": "time_embed.0.bias",
    "time_embedding.linear_2.weight": "time_embed.2.weight",
    "time_embedding.linear_2.bias": "time_embed.2.bias",
    "conv_in.weight": "input_blocks.0.0.weight",
    "conv_in.bias": "input_blocks.0.0.bias",
    "conv_norm_out.weight": "out.0.weight",
    "conv_norm_out.bias": "out.0.bias",
    "conv_out.weight": "out.2.weight",
    "conv_out.bias": "out.2.bias",
    # Upscaler (num_class_embeds): nn.Embedding, read back from "label_emb.weight".
    "class_embedding.weight": "label_emb.weight",
    # class_embed_type "timestep"/"projection" and addition_embed_type "text_time" (SDXL).
    "class_embedding.linear_1.weight": "label_emb.0.0.weight",
    "class_embedding.linear_1.bias": "label_emb.0.0.bias",
    "class_embedding.linear_2.weight": "label_emb.0.2.weight",
    "class_embedding.linear_2.bias": "label_emb.0.2.bias",
    "add_embedding.linear_1.weight": "label_emb.0.0.weight",
    "add_embedding.linear_1.bias": "label_emb.0.0.bias",
    "add_embedding.linear_2.weight": "label_emb.0.2.weight",
    "add_embedding.linear_2.bias": "label_emb.0.2.bias",
}

# diffusers ResnetBlock2D -> LDM ResBlock (inverse of update_unet_resnet_ldm_to_diffusers)
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

_BLOCK_KEY = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_MID_KEY = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _resnet_rest(rest: str, table: dict[str, str], where: str) -> str:
    head, _, tail = rest.partition(".")
    if head not in table:
        raise ConversionError(f"no LDM name for resnet weight {where!r}")
    return f"{table[head]}.{tail}"


def _unet_structure(keys) -> tuple[int, dict[int, bool]]:
    """layers_per_block, and for each up block whether it carries attention (decides the upsampler slot)."""
    down: dict[int, set[int]] = {}
    up: dict[int, set[int]] = {}
    up_attention: dict[int, bool] = {}
    for key in keys:
        m = _BLOCK_KEY.match(key)
        if not m:
            continue
        kind, block, part, index = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        if part == "resnets":
            (down if kind == "down_blocks" else up).setdefault(block, set()).add(index)
        if kind == "up_blocks":
            up_attention[block] = up_attention.get(block, False) or part == "attentions"
    if not down:
        raise ConversionError("the UNet state dict has no down_blocks.*.resnets.*")
    layers = {len(v) for v in down.values()}
    if len(layers) != 1 or any(v != set(range(len(v))) for v in down.values()):
        raise ConversionError(f"the LDM layout needs the same number of resnets in every down block, got {down}")
    layers_per_block = layers.pop()
    if any(v != set(range(layers_per_block + 1)) for v in up.values()):
        raise ConversionError(f"the LDM layout needs layers_per_block + 1 resnets in every up block, got {up}")
    return layers_per_block, up_attention


def _unet_key(key: str, layers_per_block: int, up_attention: dict[int, bool]) -> str:
    if key in _UNET_FIXED:
        return _UNET_FIXED[key]
    n = layers_per_block + 1  # LDM blocks per diffusers block: the layers, then the resampler
    m = _BLOCK_KEY.match(key)
    if m:
        kind, block, part, index, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "down_blocks":
            if part == "resnets":
                return f"input_blocks.{1 + block * n + index}.0.{_resnet_rest(rest, _UNET_RESNET, key)}"
            if part == "attentions":
                return f"input_blocks.{1 + block * n + index}.1.{rest}"
            if part == "downsamplers" and index == 0 and rest.startswith("conv."):
                return f"input_blocks.{1 + block * n + layers_per_block}.0.op.{rest[len('conv.'):]}"
        else:
            if part == "resnets":
                return f"output_blocks.{block * n + index}.0.{_resnet_rest(rest, _UNET_RESNET, key)}"
            if part == "attentions":
                return f"output_blocks.{block * n + index}.1.{rest}"
            if part == "upsamplers" and index == 0 and rest.startswith("conv."):
                slot = 2 if up_attention.get(block) else 1
                return f"output_blocks.{block * n + layers_per_block}.{slot}.{rest}"
    m = _MID_KEY.match(key)
    if m:
        part, index, rest = m.group(1), int(m.group(2)), m.group(3)
        # LDM middle_block = ResBlock, SpatialTransformer, ResBlock; diffusers reads them back as
        # resnets.0, attentions.0, resnets.1 (one transformer layer, as in every SD model).
        if part == "resnets" and index in (0, 1):
            return f"middle_block.{2 * index}.{_resnet_rest(rest, _UNET_RESNET, key)}"
        if part == "attentions" and index == 0:
            return f"middle_block.1.{rest}"
    raise ConversionError(f"no LDM name for UNet weight {key!r}")


def unet_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel state dict in the LDM layout (keys without "model.diffusion_model.")."""
    layers_per_block, up_attention = _unet_structure(state_dict)
    if any(k.startswith("mid_block.") for k in state_dict) and not any(
        k.startswith("mid_block.attentions.") for k in state_dict
    ):
        raise ConversionError("diffusers reads the LDM middle block back only with its attention layer")
    return _rename(state_dict, lambda k: _unet_key(k, layers_per_block, up_attention), "UNet")


# ---------------------------------------------------------------------------------------- VAE

_VAE_FIXED = {  # inverse of DIFFUSERS_TO_LDM_MAPPING["vae"]
    "encoder.conv_in.weight": "encoder.conv_in.weight",
    "encoder.conv_in.bias": "encoder.conv_in.bias",
    "encoder.conv_out.weight": "encoder.conv_out.weight",
    "encoder.conv_out.bias": "encoder.conv_out.bias",
    "encoder.conv_norm_out.weight": "encoder.norm_out.weight",
    "encoder.conv_norm_out.bias": "encoder.norm_out.bias",
    "decoder.conv_in.weight": "decoder.conv_in.weight",
    "decoder.conv_in.bias": "decoder.conv_in.bias",
    "decoder.conv_out.weight": "decoder.conv_out.weight",
    "decoder.conv_out.bias": "decoder.conv_out.bias",
    "decoder.conv_norm_out.weight": "decoder.norm_out.weight",
    "decoder.conv_norm_out.bias": "decoder.norm_out.bias",
    "quant_conv.weight": "quant_conv.weight",
    "quant_conv.bias": "quant_conv.bias",
    "post_quant_conv.weight": "post_quant_conv.weight",
    "post_quant_conv.bias": "post_quant_conv.bias",
}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {  # inverse of update_vae_attentions_ldm_to_diffusers
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_VAE_DOWN = re.compile(r"^encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.+)$")
_VAE_UP = re.compile(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)$")
_VAE_MID = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _vae_key(key: str, up_blocks: int) -> str:
    if key in _VAE_FIXED:
        return _VAE_FIXED[key]
    m = _VAE_DOWN.match(key)
    if m:
        block, part, index, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        if part == "resnets":
            return f"encoder.down.{block}.block.{index}.{_resnet_rest(rest, _VAE_RESNET, key)}"
        if index == 0 and rest.startswith("conv."):
            return f"encoder.down.{block}.downsample.{rest}"
    m = _VAE_UP.match(key)
    if m:
        block, part, index, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        ldm_block = up_blocks - 1 - block  # LDM numbers decoder levels from the lowest resolution up
        if part == "resnets":
            return f"decoder.up.{ldm_block}.block.{index}.{_resnet_rest(rest, _VAE_RESNET, key)}"
        if index == 0 and rest.startswith("conv."):
            return f"decoder.up.{ldm_block}.upsample.{rest}"
    m = _VAE_MID.match(key)
    if m:
        side, part, index, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        if part == "resnets" and index in (0, 1):
            return f"{side}.mid.block_{index + 1}.{_resnet_rest(rest, _VAE_RESNET, key)}"
        if part == "attentions" and index == 0:
            for name, ldm in _VAE_ATTENTION.items():
                if rest.startswith(name + ".") and rest.count(".") == name.count(".") + 1:
                    return f"{side}.mid.attn_1.{ldm}.{rest[len(name) + 1:]}"
    raise ConversionError(f"no LDM name for VAE weight {key!r}")


def vae_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in the LDM layout (keys without "first_stage_model.").

    The mid-block attention's q/k/v/proj_out become 1x1 conv weights [C, C, 1, 1], as in the real
    checkpoints (diffusers squeezes them back to linear weights on load).
    """
    up_blocks = len({int(m.group(1)) for m in map(_VAE_UP.match, state_dict) if m})
    out = _rename(state_dict, lambda k: _vae_key(k, up_blocks), "VAE")
    for key, value in out.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            out[key] = value[:, :, None, None]
    return out


# ------------------------------------------------------------------------------- text encoders

def clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenAI-CLIP CLIPTextModel state dict in the SD 1.x layout (keys without "cond_stage_model.transformer.").

    transformers 5 `CLIPTextModel` has no `text_model.` level; the checkpoint keeps it.
    """
    def rename(key: str) -> str:
        if key.startswith(("text_model.", "text_projection.")):
            return key
        return "text_model." + key

    return _rename(state_dict, rename, "text encoder")


_OPEN_CLIP_FIXED = {  # inverse of DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"] (without "text_model.")
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_CLIP_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_QKV = re.compile(r"^self_attn\.([qkv])_proj$")


def open_clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPTextModel state dict in OpenCLIP's layout (keys without "cond_stage_model.model.").

    q/k/v projections are fused into `attn.in_proj_weight`/`in_proj_bias` (q, k, v stacked along the
    output dimension, which diffusers splits at the hidden size); `text_projection`, when there is
    one, is stored transposed ([width, embed_dim]) as OpenCLIP multiplies `x @ text_projection`.
    """
    sd = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key in _OPEN_CLIP_FIXED:
            _put(out, _OPEN_CLIP_FIXED[key], value, key)
            continue
        if key == "text_projection.weight":
            _put(out, "text_projection", value.T.contiguous(), key)
            continue
        m = _CLIP_LAYER_KEY.match(key)
        if m:
            layer, module, kind = int(m.group(1)), m.group(2), m.group(3)
            q = _QKV.match(module)
            if q:
                fused.setdefault((layer, kind), {})[q.group(1)] = value
                continue
            if module in _OPEN_CLIP_LAYER:
                _put(out, f"transformer.resblocks.{layer}.{_OPEN_CLIP_LAYER[module]}.{kind}", value, key)
                continue
        raise ConversionError(f"no OpenCLIP name for text-encoder weight {'text_model.' + key!r}")
    for (layer, kind), parts in sorted(fused.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ConversionError(f"layer {layer} lacks some of q/k/v {kind}")
        _put(out, f"transformer.resblocks.{layer}.attn.in_proj_{kind}",
             torch.cat([parts["q"], parts["k"], parts["v"]], dim=0), f"layer {layer} q/k/v {kind}")
    return out


def text_encoder_layout(text_encoder) -> str:
    """OpenAI CLIP (SD 1.x) uses quick_gelu; OpenCLIP ViT-H (SD 2.x, x4 upscaler) uses gelu."""
    act = getattr(text_encoder.config, "hidden_act", None)
    if act == "quick_gelu":
        return CLIP
    if act == "gelu":
        return OPEN_CLIP
    raise ConversionError(f"cannot tell CLIP from OpenCLIP: text encoder hidden_act={act!r}")


# ---------------------------------------------------------------------------------------- API

def ldm_state_dict(pipe, text_layout: str | None = None) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder as one state dict in the original LDM layout.

    Works for StableDiffusion{,Img2Img,Inpaint}Pipeline (SD 1.x and 2.x) and
    StableDiffusionUpscalePipeline. `text_layout` ("clip"/"open_clip") overrides the choice made
    from the text encoder's activation. The tensors are the models' own (no copies) where the
    layout allows: clone before changing them.
    """
    for name in ("unet", "vae", "text_encoder"):
        if getattr(pipe, name, None) is None:
            raise ConversionError(f"the pipeline has no {name}")
    layout = text_layout or text_encoder_layout(pipe.text_encoder)
    if layout not in (CLIP, OPEN_CLIP):
        raise ConversionError(f"unknown text-encoder layout {layout!r}")

    out: dict[str, torch.Tensor] = {}
    parts = [
        (UNET_PREFIX, unet_to_ldm(pipe.unet.state_dict())),
        (VAE_PREFIX, vae_to_ldm(pipe.vae.state_dict())),
    ]
    text = pipe.text_encoder.state_dict()
    if layout == CLIP:
        parts.append((CLIP_PREFIX, clip_to_ldm(text)))
    else:
        parts.append((OPEN_CLIP_PREFIX, open_clip_to_ldm(text)))
    for prefix, sd in parts:
        for key, value in sd.items():
            out[prefix + key] = value.detach().contiguous()
    return out


def save_single_file(pipe, path: Path, text_layout: str | None = None) -> Path:
    """Write the pipeline as one LDM-layout file: safetensors, or a `.ckpt` ({"state_dict": ...})."""
    path = Path(path)
    sd = ldm_state_dict(pipe, text_layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".ckpt":
        torch.save({"state_dict": sd}, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path), metadata={"format": "pt"})
    return path


# ------------------------------------------------------------------------------------ helpers

def _put(out: dict, key: str, value: torch.Tensor, source: str) -> None:
    if key in out:
        raise ConversionError(f"two weights map to {key!r} (the second from {source!r})")
    out[key] = value


def _rename(state_dict: dict[str, torch.Tensor], rename, what: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        _put(out, rename(key), value, f"{what} {key}")
    return out
