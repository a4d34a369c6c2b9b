"""Fast mode (`easel_fast`): fewer steps for people without a GPU, at some cost in quality.

A fast job runs the checkpoint with the LCM-LoRA added at weight 1 (a file in `models/Lora/`, applied
by the LoRA support like any other, but never written into the prompt), the LCM sampler, 4-8 steps
and CFG 1-2; the tiny autoencoder (TAESD) decodes it when present. The PNG records it as A1111 users
would read it (`Sampler: LCM`, `Lora hashes`) plus `Fast mode`, which turns it back on when pasted.
"""

from __future__ import annotations

from app.errors import InvalidRequest
from app.generation.lora_patch import ActiveLora
from app.generation.samplers import AUTOMATIC
from app.models.families import Family
from app.models.network_library import NetworkLibrary
from app.models.safe_weights import UnreadableWeights

FAST_SAMPLER = "LCM"
FAST_STEPS = (4, 8)
# 4 steps: the LCM-LoRA card's own choice, and what keeps a 512 px picture within seconds on a CPU.
DEFAULT_FAST_STEPS = 4
FAST_CFG = (1.0, 2.0)
# CFG 1 runs no negative branch: half the UNet work per step. The negative prompt is then unused.
DEFAULT_FAST_CFG = 1.0
INFOTEXT_KEY = "Fast mode"
LABEL = ("Fast mode: trades quality for speed (LCM-LoRA, 4-8 steps at CFG 1-2; steps or CFG outside those "
         "become 4 and 1; the tiny decoder when downloaded).")

# The LoRA name (its file name in models/Lora/; the catalog download `lcm-lora-sd15` saves it so), by family.
_LCM_LORAS = {Family.SD1: "lcm-lora-sdv1-5"}
_SD1_PAGE = "https://huggingface.co/latent-consistency/lcm-lora-sdv1-5"


def fast_fields(steps: int, cfg_scale: float) -> dict[str, object]:
    """The request fields fast mode sets: the LCM sampler, and steps and CFG kept when in its ranges,
    its defaults otherwise (a normal run's 20 steps and CFG 7 would waste the speed or burn the picture)."""
    return dict(
        sampler=FAST_SAMPLER,
        schedule=AUTOMATIC,
        steps=steps if FAST_STEPS[0] <= steps <= FAST_STEPS[1] else DEFAULT_FAST_STEPS,
        cfg_scale=cfg_scale if FAST_CFG[0] <= cfg_scale <= FAST_CFG[1] else DEFAULT_FAST_CFG,
    )


def infotext_value(taesd: bool) -> str:
    """`Fast mode: LCM-LoRA, TAESD` (or just LCM-LoRA when the full VAE decoded it)."""
    return "LCM-LoRA, TAESD" if taesd else "LCM-LoRA"


def taesd_note(problem: str | None) -> str:
    """Why a fast picture was decoded by the full VAE, and how to make the next one faster."""
    return problem or ("Fast mode decoded with the full VAE: download \"TAESD (tiny autoencoder)\" from the "
                       "Download list (into models/taesd/) for a faster decode.")


def read_fast(value: object) -> bool | None:
    """An infotext's `Fast mode` value: any text turns fast mode on."""
    return True if isinstance(value, str) and value.strip() else None


def lcm_lora(library: NetworkLibrary, family: Family) -> tuple[ActiveLora, str]:
    """The LCM-LoRA for a checkpoint of `family`, at weight 1, and its `Lora hashes` item.
    InvalidRequest, with the sentence that says what to download, when it is not there."""
    name = _LCM_LORAS.get(_base_family(family))
    if name is None:
        raise InvalidRequest(
            f"Fast mode needs an LCM-LoRA made for {family.label} models, and there is none for SD 2 "
            "(latent-consistency published them for SD 1.5 and SDXL only). Use an SD 1.5 checkpoint "
            "for fast mode, or turn fast mode off.")
    entry = library.find_lora(name)
    if entry is None:
        library.refresh_loras()  # downloaded or copied in since the last look
        entry = library.find_lora(name)
    if entry is None or entry.problem:
        raise InvalidRequest(_missing_sentence(library, name, entry.problem if entry else None))
    try:
        parsed = library.lora_file(entry)
    except (UnreadableWeights, OSError) as error:
        reason = error.reason if isinstance(error, UnreadableWeights) else str(error)
        raise InvalidRequest(_missing_sentence(library, name, reason)) from error
    return ActiveLora(name, parsed, 1.0, 1.0), f"{name}: {library.lora_hash(entry)}"


def _missing_sentence(library: NetworkLibrary, name: str, problem: str | None) -> str:
    why = f"the file there cannot be used ({problem})" if problem else "it is not there"
    return (f"Fast mode needs the LCM-LoRA for SD 1.5 in {library.lora_dirs[0]}, and {why}. Download "
            f"\"LCM-LoRA for SD 1.5 (fast mode)\" from the Download list, or save pytorch_lora_weights.safetensors "
            f"from {_SD1_PAGE} as {library.lora_dirs[0] / (name + '.safetensors')}; or turn fast mode off.")


def _base_family(family: Family) -> Family:
    """Inpainting models take their base model's LoRA."""
    return Family.SD1 if family in (Family.SD1, Family.SD1_INPAINT) else family
