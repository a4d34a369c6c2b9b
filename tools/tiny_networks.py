"""Tiny LoRA and textual-inversion files, with random weights in the real key layouts (kohya with a
LoCon conv layer, PEFT, A1111's `.pt` embeddings, `emb_params` safetensors), sized for the tiny
models of tools/tiny_models.py: for the tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

# Layers of the tiny SD 1.x model a LoRA touches: text encoder attention, UNet cross-attention,
# a 1x1 projection and a 3x3 resnet conv (LoCon).
TEXT_LAYERS = ("text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.1.mlp.fc1")
UNET_LAYERS = (
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
    "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0",
    "mid_block.attentions.0.proj_in",
)
CONV_LAYER = "down_blocks.0.resnets.0.conv1"


def _shapes(pipe) -> dict[tuple[str, str], tuple[int, ...]]:
    shapes = {}
    text = dict(pipe.text_encoder.named_modules())
    for name in TEXT_LAYERS:
        module = text.get(name) or text[name.removeprefix("text_model.")]
        shapes[("te", name)] = tuple(module.weight.shape)
    unet = dict(pipe.unet.named_modules())
    for name in (*UNET_LAYERS, CONV_LAYER):
        shapes[("unet", name)] = tuple(unet[name].weight.shape)
    return shapes


def kohya_lora(pipe, rank: int = 4, seed: int = 0, strength: float = 1.0, widen: int = 0) -> dict[str, torch.Tensor]:
    """A kohya-layout LoRA for `pipe`'s layers (`widen` > 0: inputs too wide, as for another family)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for (component, name), shape in _shapes(pipe).items():
        prefix = ("lora_te_" if component == "te" else "lora_unet_") + name.replace(".", "_")
        out_features, in_features = shape[0], shape[1] + widen
        kernel = shape[2:] if len(shape) == 4 and shape[2] > 1 else ()
        down_shape = (rank, in_features, *kernel) if kernel else (rank, in_features)
        up_shape = (out_features, rank, 1, 1) if kernel else (out_features, rank)
        if len(shape) == 4 and not kernel:  # a 1x1 conv: kohya saves conv-shaped factors
            down_shape, up_shape = (rank, in_features, 1, 1), (out_features, rank, 1, 1)
        tensors[f"{prefix}.lora_down.weight"] = torch.randn(down_shape, generator=generator) * strength
        tensors[f"{prefix}.lora_up.weight"] = torch.randn(up_shape, generator=generator) * strength
        tensors[f"{prefix}.alpha"] = torch.tensor(float(rank) / 2)
    return tensors


def peft_lora(pipe, rank: int = 4, seed: int = 0, strength: float = 1.0) -> dict[str, torch.Tensor]:
    """A diffusers/PEFT-layout LoRA (`unet.` / `text_encoder.` prefixes, `lora_A` / `lora_B`), linear layers."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for (component, name), shape in _shapes(pipe).items():
        if len(shape) != 2:
            continue
        prefix = ("text_encoder." if component == "te" else "unet.") + name
        tensors[f"{prefix}.lora_A.weight"] = torch.randn((rank, shape[1]), generator=generator) * strength
        tensors[f"{prefix}.lora_B.weight"] = torch.randn((shape[0], rank), generator=generator) * strength
    return tensors


def save_lora(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path), metadata=metadata)
    return path


def embedding_vectors(width: int, count: int, seed: int = 0, strength: float = 1.0) -> torch.Tensor:
    return torch.randn((count, width), generator=torch.Generator().manual_seed(seed)) * strength


def save_a1111_embedding(path: Path, vectors: torch.Tensor, step: int = 100) -> Path:
    """A1111's own `.pt` format: `string_to_param` with a `*` term, and its training facts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.nn.Parameter(vectors.clone())},
        "name": path.stem,
        "step": step,
        "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "tiny",
    }, path)
    return path


def save_emb_params_embedding(path: Path, vectors: torch.Tensor) -> Path:
    """The `emb_params` safetensors format (one tensor)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": vectors.contiguous()}, str(path))
    return path


def lcm_lora(pipe, rank: int = 4, seed: int = 0, strength: float = 1.0) -> dict[str, torch.Tensor]:
    """A LoRA laid out as latent-consistency's LCM-LoRA files (pytorch_lora_weights.safetensors) are, as
    far as could be checked here (no copy of the file was reachable: the layout is from memory of the
    diffusers LCM-LoRA training and conversion code): kohya key names over diffusers module paths
    (`lora_unet_<path>.lora_down.weight` / `.lora_up.weight` / `.alpha`), UNet layers only (attention
    projections and resnet convs alike), no text encoder. Were the file in diffusers/PEFT keys instead,
    Easel reads those too (tests/integration/test_lora_embeddings.py)."""
    return {key: value for key, value in kohya_lora(pipe, rank, seed, strength).items() if key.startswith("lora_unet_")}
