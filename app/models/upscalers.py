"""ESRGAN-family upscaler files: what each one is, and loading it without ever unpickling code.

Users drop `.pth`/`.safetensors` files (RealESRGAN x4plus, 4x-UltraSharp, SwinIR, ...) into
`models/ESRGAN/` (A1111's folder; `models/RealESRGAN/` and `models/upscalers/` are read too).
spandrel, the library ComfyUI and InvokeAI use, tells the architecture, scale and precision
support from the weights alone. We
read the file ourselves (app.models.safe_weights) and hand spandrel the tensors, so a pickle that
would run code is refused before any of it runs.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from app.models.safe_weights import UnreadableWeights, read_tensors

UPSCALER_SUBFOLDERS = ("ESRGAN", "RealESRGAN", "upscalers")  # the first is where we point users
UPSCALER_SUFFIXES = (".pth", ".safetensors")


@dataclass(frozen=True)
class UpscalerEntry:
    name: str                       # the file name without extension: what A1111 lists and clients send
    path: Path
    scale: int | None = None        # the network's own factor (4 for RealESRGAN x4plus)
    architecture: str | None = None  # spandrel's name for it: "ESRGAN", "SwinIR", ...
    problem: str | None = None      # why it cannot be used, as a sentence


def network_from_state_dict(state_dict: dict[str, torch.Tensor], name: str):
    """spandrel's descriptor of an image-to-image upscaling network, in eval mode on the CPU.

    Raises UnreadableWeights when the weights are no upscaler spandrel knows, or are another
    kind of model (face restoration, inpainting) that does not belong in this folder."""
    import spandrel  # imports torchvision: load it only when an upscaler file is there

    try:
        model = spandrel.ModelLoader().load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError:
        raise UnreadableWeights(
            "its weights are not an upscaler architecture Easel knows (ESRGAN, Real-ESRGAN, SwinIR, "
            "HAT, DAT, OmniSR, ... as read by spandrel). Is it an upscaler model?"
        ) from None
    except Exception as error:  # a known architecture with missing or misshapen tensors
        raise UnreadableWeights(f"its weights are incomplete or damaged ({error}). Download it again.") from None
    if not isinstance(model, spandrel.ImageModelDescriptor) or model.purpose not in ("SR", "Restoration"):
        raise UnreadableWeights(
            f"it is a {model.architecture.name} model for {model.purpose}, not an upscaler. "
            f"Remove '{name}' from the upscaler folder."
        )
    if model.input_channels != 3 or model.output_channels != 3:
        raise UnreadableWeights("it works on greyscale or other non-RGB pictures; Easel needs an RGB upscaler.")
    return model.eval()


def described(path: Path) -> UpscalerEntry:
    """The entry for an upscaler file, its architecture and scale read from the weights."""
    entry = UpscalerEntry(name=path.stem, path=path)
    try:
        network = network_from_state_dict(read_tensors(path), path.name)
    except UnreadableWeights as unreadable:
        return UpscalerEntry(name=entry.name, path=path, problem=f"Easel cannot use '{path.name}': {unreadable.reason}")
    return UpscalerEntry(name=entry.name, path=path, scale=network.scale, architecture=network.architecture.name)


def network_dtype(plan_dtype: torch.dtype, supports_half: bool, supports_bfloat16: bool) -> torch.dtype:
    """The network runs in the plan's half precision when its architecture allows, else float32."""
    if plan_dtype == torch.float16 and supports_half:
        return torch.float16
    if plan_dtype == torch.bfloat16 and supports_bfloat16:
        return torch.bfloat16
    return torch.float32


def load_network(entry: UpscalerEntry, device: str, plan_dtype: torch.dtype):
    """The entry's network on `device`, in the precision the plan and the architecture allow."""
    network = network_from_state_dict(read_tensors(entry.path), entry.path.name)
    dtype = network_dtype(plan_dtype, network.supports_half, network.supports_bfloat16)
    return network.to(torch.device(device), dtype=dtype)
