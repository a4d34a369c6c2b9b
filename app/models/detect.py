"""What a checkpoint file is, read from its weights' names and shapes (no model is built).

SD 1.x and 2.x differ in the text encoder (OpenAI CLIP vs OpenCLIP); inpainting and the x4
upscaler in the UNet's input channels (9 and 7 instead of 4). v-prediction (SD 2.x 768) versus
epsilon (SD 2.x base) is not visible in the weights: A1111's convention is a `.yaml` beside the
checkpoint with `parameterization: "v"`, which we honour, else a per-model choice of the user,
else v-prediction (the 768 model is the one most people have).
"""

import pickle
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError, safe_open

from app.models import families

UNET_INPUT = "model.diffusion_model.input_blocks.0.0.weight"
CLIP_KEYS = "cond_stage_model.transformer."
OPEN_CLIP_KEYS = "cond_stage_model.model."
SDXL_KEYS = "conditioner.embedders."
CROSS_ATTENTION = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


# Pickle opcodes that import or call something: plain tensors need none outside torch's zip format.
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"}


def is_code_refusal(error: BaseException | None) -> bool:
    """Whether torch's weights_only loader refused a file because it names Python code to call
    (an unsafe pickle), as opposed to bytes that are merely damaged ("Unsupported operand").
    Looks through the causes too: diffusers wraps the refusal in an OSError."""
    while error is not None:
        message = str(error)
        if "Weights only load failed" in message and "global" in message.lower():
            return True
        error = error.__cause__ or error.__context__
    return False


def pickle_calls_code(path: Path) -> bool:
    """For a plain (non-zip) pickle that torch stopped reading early: does it call code anywhere?
    Read with pickletools, which lists opcodes and runs nothing."""
    if zipfile.is_zipfile(path):
        return False  # torch's own format: its globals are torch's, and torch read them
    try:
        with open(path, "rb") as handle:
            return any(op.name in _CODE_OPCODES for op, _, _ in pickletools.genops(handle))
    except Exception:  # not a pickle at all: damaged, not dangerous
        return False


class UnreadableCheckpoint(Exception):
    """The file cannot be read as a checkpoint; `reason` is a sentence for the user."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _unsafe() -> UnreadableCheckpoint:
    return UnreadableCheckpoint(
        "it is a pickle that would run Python code when opened, so Easel refuses it. "
        "Use a .safetensors version of this model."
    )


def _damaged() -> UnreadableCheckpoint:
    return UnreadableCheckpoint("the file is damaged or not a checkpoint. Download it again.")
@dataclass(frozen=True)
class Detection:
    family: str
    source: str  # "weights", "sidecar", "override", or "default" (v-prediction assumed)


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor, without loading the data of a .safetensors file."""
    if path.suffix == ".safetensors":
        return _safetensors_shapes(path)
    return _ckpt_shapes(path)


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise UnreadableCheckpoint(
            f"the file is damaged or incomplete (maybe an unfinished download: {error}). Download it again."
        ) from None


def _ckpt_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    # weights_only: a pickle that would run code is refused before any of it runs.
    try:
        data = torch.load(path, map_location="meta", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        if is_code_refusal(error) or pickle_calls_code(path):
            raise _unsafe() from None
        # torch's own text suggests loading unsafely; not advice to pass on.
        raise _damaged() from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise UnreadableCheckpoint(
            f"the file is damaged or incomplete (maybe an unfinished download: {error}). Download it again."
        ) from None
    except Exception:  # torch's safe unpickler meets random bytes with IndexError, KeyError, ...
        raise _damaged() from None
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise UnreadableCheckpoint("it holds no weights Easel knows (not a Stable Diffusion checkpoint).")
    return {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}


def family_from_weights(shapes: dict[str, tuple[int, ...]]) -> str:
    """SD1 / SD1 inpainting / SD2 / SD2 inpainting / x4 upscaler; SD2 is returned as SD2_V
    (the caller settles v versus epsilon). Raises UnreadableCheckpoint for anything else."""
    if any(key.startswith(SDXL_KEYS) for key in shapes):
        raise UnreadableCheckpoint("it is an SDXL checkpoint; Easel runs SD 1.x and 2.x models for now.")
    unet_input = shapes.get(UNET_INPUT)
    if unet_input is None or len(unet_input) != 4:
        raise UnreadableCheckpoint(
            "it is not a full Stable Diffusion checkpoint (no UNet inside: a LoRA, VAE or embedding "
            "goes in another folder)."
        )
    in_channels = unet_input[1]
    sd2 = _uses_open_clip(shapes)
    if in_channels == 7:
        return families.X4_UPSCALER
    if in_channels == 9:
        return families.SD2_INPAINT if sd2 else families.SD1_INPAINT
    if in_channels == 4:
        return families.SD2_V if sd2 else families.SD1
    raise UnreadableCheckpoint(f"its UNet takes {in_channels} input channels, which no SD 1.x/2.x model has.")


def _uses_open_clip(shapes: dict[str, tuple[int, ...]]) -> bool:
    if any(key.startswith(OPEN_CLIP_KEYS) for key in shapes):
        return True
    if any(key.startswith(CLIP_KEYS) for key in shapes):
        return False
    # No text encoder inside: the cross-attention width tells (768 CLIP-L, 1024 OpenCLIP-H).
    return shapes.get(CROSS_ATTENTION, (0, 768))[1] == 1024


def sidecar_prediction(checkpoint: Path) -> str | None:
    """"v" or "epsilon" from an A1111 sidecar `<name>.yaml`, or None without one."""
    sidecar = checkpoint.with_suffix(".yaml")
    if not sidecar.is_file():
        return None
    try:
        config = OmegaConf.to_container(OmegaConf.load(sidecar))
    except Exception:  # an unreadable sidecar is ignored, as A1111 does
        return None
    parameterization = _find_key(config, "parameterization")
    return "v" if parameterization == "v" else "epsilon"


def _find_key(tree, key: str):
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def settle_prediction(family: str, sidecar: str | None, override: str | None) -> Detection:
    """The final family of an SD 2.x checkpoint: the user's choice, then the sidecar, then v."""
    if family != families.SD2_V:
        return Detection(family, "weights")
    # The user's explicit choice in the page wins over a file they may not know is there.
    for choice, source in ((override, "override"), (sidecar, "sidecar")):
        if choice is not None:
            return Detection(families.SD2_V if choice == "v" else families.SD2, source)
    return Detection(families.SD2_V, "default")
