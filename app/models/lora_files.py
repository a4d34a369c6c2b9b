"""LoRA files: their tensors, read through the safe reader, grouped into one low-rank update per
layer of the UNet or the text encoder, in any of the layouts that circulate.

- kohya / A1111 (and LyCORIS' LoCon and LoHa): `lora_unet_<module>` / `lora_te_<module>` with the
  module path's dots written as underscores (`lora_te_text_model_…` is the same text encoder),
  then `.lora_down.weight` / `.lora_up.weight` / `.alpha` (LoHa: `.hada_w1_a` … `.hada_w2_b`);
- the original (LDM) UNet's module names (`lora_unet_input_blocks_1_1_proj_in`), which A1111 reads
  as well: `ldm_unet_name` gives each diffusers layer's LDM name;
- open_clip's own names for the SD 2.x text encoder (`lora_te_model_transformer_resblocks_…`, with
  q, k and v fused in one `attn_in_proj`, split here into the three layers they are in diffusers);
- diffusers and PEFT: the dotted module path under `unet.` / `text_encoder.`, then `.lora_A.weight` /
  `.lora_B.weight`, or older diffusers' `.lora.down.weight` / `.lora_linear_layer.down.weight` /
  `processor.to_q_lora.down.weight`.

Which model layer a key names is settled against the model itself (app.generation.lora_patch),
so the same file can be checked against any checkpoint. The update follows A1111's
`extensions-builtin/Lora` (`network_lora.py`, `network_hada.py`, `lyco_helpers.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch

from app.models.safe_weights import read_tensors

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")


class Component(str, Enum):
    UNET = "unet"
    TEXT_ENCODER = "text_encoder"


@dataclass(frozen=True)
class LayerKey:
    component: Component
    name: str    # the module path, dotted (diffusers) or with underscores for dots (kohya)
    flat: bool   # kohya's underscores: resolved against the model's own module names


@dataclass
class LoraLayer:
    """The low-rank factors of one layer's update."""

    factors: dict[str, torch.Tensor] = field(default_factory=dict)  # "up", "down", "mid" or LoHa's "w1a"…
    alpha: float | None = None

    @property
    def complete(self) -> bool:
        return {"up", "down"} <= self.factors.keys() or {"w1a", "w1b", "w2a", "w2b"} <= self.factors.keys()

    def delta(self, shape: torch.Size, meta: bool = False) -> torch.Tensor | None:
        """The update (without the user's multiplier) for a weight of `shape`, in float32; None when
        its size does not fit that weight (a LoRA made for another model family). `meta`: only its
        size is worked out (on the "meta" device: no memory, no arithmetic), by the same steps."""
        f = {key: (value.to("meta") if meta else value).float() for key, value in self.factors.items()}
        if "w1a" in f:  # LoHa: the elementwise product of two low-rank products
            rank = f["w1b"].shape[0]
            updown = (f["w1a"] @ f["w1b"]) * (f["w2a"] @ f["w2b"])
        else:
            rank = f["down"].shape[0]
            up, down = f["up"].reshape(f["up"].shape[0], -1), f["down"].reshape(rank, -1)
            if "mid" in f:  # LoCon's CP decomposition of a conv kernel
                updown = torch.einsum("n m k l, i n, m j -> i j k l", f["mid"], up, down)
            else:
                updown = up @ down
        if len(shape) == 4 and shape[1] == 9 and updown.numel() == shape[0] * 4 * shape[2] * shape[3]:
            # An inpainting UNet's conv_in takes 5 more channels (mask, masked picture): A1111 pads with zeros.
            updown = torch.nn.functional.pad(updown.reshape(shape[0], 4, *shape[2:]), (0, 0, 0, 0, 0, 5))
        if updown.numel() != shape.numel() or updown.shape[0] != shape[0]:
            return None
        scale = self.alpha / rank if self.alpha is not None and rank else 1.0
        return updown.reshape(shape) * scale


@dataclass
class LoraFile:
    layers: dict[LayerKey, LoraLayer]
    unknown: list[str]   # keys that name nothing Easel knows how to apply


# Key endings → the factor they hold, longest first so that ".lora.down.weight" wins over ".down.weight".
_FACTORS = sorted({
    ".lora_down.weight": "down", ".lora_up.weight": "up", ".lora_mid.weight": "mid",
    ".lora_A.weight": "down", ".lora_B.weight": "up",
    ".lora_A.default.weight": "down", ".lora_B.default.weight": "up",
    ".lora.down.weight": "down", ".lora.up.weight": "up",
    ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up",
    "_lora.down.weight": "down", "_lora.up.weight": "up",
    ".hada_w1_a": "w1a", ".hada_w1_b": "w1b", ".hada_w2_a": "w2a", ".hada_w2_b": "w2b",
    ".alpha": "alpha",
}.items(), key=lambda item: -len(item[0]))
_PREFIXES = (
    ("lora_unet_", Component.UNET, True),
    ("lora_te_", Component.TEXT_ENCODER, True),
    ("unet.", Component.UNET, False),
    ("text_encoder.", Component.TEXT_ENCODER, False),
)
_UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "time_embedding.")
_OPEN_CLIP = re.compile(r"^model_transformer_resblocks_(\d+)_(attn_in_proj|attn_out_proj|mlp_c_fc|mlp_c_proj)$")
_OPEN_CLIP_LAYERS = {"attn_in_proj": "self_attn_in_proj", "attn_out_proj": "self_attn_out_proj",
                     "mlp_c_fc": "mlp_fc1", "mlp_c_proj": "mlp_fc2"}
# Old diffusers attention processors: `attn1.processor.to_q_lora` is the layer `attn1.to_q`.
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)$")


def read_lora(path: Path) -> LoraFile:
    """The file's layers. Raises UnreadableWeights (with the reason) for a file that cannot be read."""
    return lora_layers(read_tensors(path))


def lora_layers(tensors: dict[str, torch.Tensor]) -> LoraFile:
    layers: dict[LayerKey, LoraLayer] = {}
    unknown: list[str] = []
    for key, tensor in tensors.items():
        parsed = _factor_of(key)
        target = _layer_key(parsed[0]) if parsed else None
        if target is None:
            unknown.append(key)
            continue
        layer = layers.setdefault(target, LoraLayer())
        if parsed[1] == "alpha":
            layer.alpha = float(tensor.float().reshape(-1)[0]) if tensor.numel() else None
        else:
            layer.factors[parsed[1]] = tensor
    incomplete = [key for key, layer in layers.items() if not layer.complete]
    for key in incomplete:
        unknown.append(key.name)
        del layers[key]
    return LoraFile(_unfused(layers), unknown)


def _unfused(layers: dict[LayerKey, LoraLayer]) -> dict[LayerKey, LoraLayer]:
    """open_clip's fused q/k/v update as the three updates of diffusers' q_proj, k_proj, v_proj:
    the rows of `up` are q's, then k's, then v's, and each shares `down` (exact, no approximation)."""
    result: dict[LayerKey, LoraLayer] = {}
    for key, layer in layers.items():
        if not key.name.endswith("_self_attn_in_proj") or "up" not in layer.factors or "mid" in layer.factors:
            result[key] = layer
            continue
        stem = key.name.removesuffix("in_proj")
        for part, up in zip(("q_proj", "k_proj", "v_proj"), layer.factors["up"].chunk(3, dim=0)):
            result[LayerKey(key.component, stem + part, key.flat)] = LoraLayer({**layer.factors, "up": up}, layer.alpha)
    return result


def _factor_of(key: str) -> tuple[str, str] | None:
    for ending, factor in _FACTORS:
        if key.endswith(ending):
            return key[: -len(ending)], factor
    return None


def _layer_key(base: str) -> LayerKey | None:
    for prefix, component, flat in _PREFIXES:
        if base.startswith(prefix):
            name = base[len(prefix):]
            if flat and component is Component.TEXT_ENCODER and (clip := _OPEN_CLIP.match(name)):
                name = f"text_model_encoder_layers_{clip.group(1)}_{_OPEN_CLIP_LAYERS[clip.group(2)]}"
            return LayerKey(component, _processor_layer(name), flat)
    if base.startswith(_UNET_ROOTS):  # the oldest diffusers files: UNet paths with no prefix
        return LayerKey(Component.UNET, _processor_layer(base), False)
    return None


def _processor_layer(path: str) -> str:
    match = _PROCESSOR.search(path)
    if not match:
        return path
    layer = "to_out.0" if match.group(1) == "to_out" else match.group(1)
    return path[: match.start()] + "." + layer


def names_known_layers(keys: list[str]) -> bool:
    """Whether any of a file's keys names a UNet or text-encoder layer in a layout Easel reads."""
    return any((parsed := _factor_of(key)) is not None and _layer_key(parsed[0]) is not None for key in keys)


_RESNET_LAYERS = {"conv1": "in_layers.2", "conv2": "out_layers.3", "norm1": "in_layers.0", "norm2": "out_layers.0",
                  "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_DIFFUSERS_PART = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(attentions|resnets)\.(\d+)\.(.+)$")


def ldm_unet_name(name: str, layers_per_block: int, up_blocks_with_attention: set[int]) -> str | None:
    """The original (LDM) UNet's name of a diffusers UNet layer, A1111's `convert_diffusers_name_to_compvis`
    in general form (any number of layers per block); None for a layer it has no name for."""
    per_block = layers_per_block + 1  # a down block's resnets and its downsampler; an up block's resnets
    if name == "conv_in":
        return "input_blocks.0.0"
    if name == "conv_out":
        return "out.2"
    if name.startswith("time_embedding.linear_"):
        return f"time_embed.{int(name[-1]) * 2 - 2}"
    if match := _DIFFUSERS_PART.match(name):
        kind, block, part, index, rest = match.groups()
        block, index = int(block), int(index)
        rest = _resnet_rest(rest) if part == "resnets" else rest
        slot = 1 if part == "attentions" else 0
        if kind == "down_blocks":
            return f"input_blocks.{1 + block * per_block + index}.{slot}.{rest}"
        return f"output_blocks.{block * per_block + index}.{slot}.{rest}"
    if match := re.match(r"^mid_block\.(attentions|resnets)\.(\d+)\.(.+)$", name):
        part, index, rest = match.groups()
        if part == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{int(index) * 2}.{_resnet_rest(rest)}"
    if match := re.match(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv$", name):
        return f"input_blocks.{(int(match.group(1)) + 1) * per_block}.0.op"
    if match := re.match(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv$", name):
        block = int(match.group(1))
        return f"output_blocks.{block * per_block + layers_per_block}.{2 if block in up_blocks_with_attention else 1}.conv"
    return None


def _resnet_rest(rest: str) -> str:
    return _RESNET_LAYERS.get(rest, rest)
