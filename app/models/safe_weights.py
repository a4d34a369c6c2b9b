"""Reading weight files without ever running code: the one place Easel opens them.

Checkpoints, VAEs, upscalers, LoRAs and embeddings come as `.safetensors`, which hold
nothing but tensors, or as pickles (`.ckpt`, `.pth`, `.pt`, `.bin`), which can hold code that runs
when the file is opened. Pickles are read with torch's weights-only unpickler, which refuses such a
file before any of it runs. Every failure becomes `UnreadableWeights` with a sentence for the user
that tells a dangerous file from a merely damaged one.
"""

import pickle
import pickletools
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

UNSAFE_PICKLE = (
    "it is a pickle that would run Python code when opened, so Easel refuses it. "
    "Use a .safetensors version of this model."
)
NOT_WEIGHTS = "the file is damaged or not a model. Download it again."
# Pickle opcodes that import or call something: plain tensors need none outside torch's zip format.
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"}
# Wrappers that training tools put around the weights, the averaged (EMA) ones first as their
# authors recommend: BasicSR's `params_ema`/`params`, Lightning's `state_dict`, others' `model`.
WRAPPERS = ("params_ema", "params", "state_dict", "model")


class UnreadableWeights(Exception):
    """The file cannot be read as weights; `reason` is a sentence for the user."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def damaged(error: BaseException) -> str:
    return f"the file is damaged or incomplete (maybe an unfinished download: {error}). Download it again."


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor in the file, on the CPU, unwrapped from a training tool's wrapper.

    Raises UnreadableWeights with the reason."""
    if Path(path).suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise UnreadableWeights(damaged(error)) from None
    tensors = unwrapped(_unpickled(Path(path), map_location="cpu"))
    if not tensors:
        raise UnreadableWeights("it holds no weights.")
    return tensors


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor, without reading the tensors' data."""
    if Path(path).suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as error:
            raise UnreadableWeights(damaged(error)) from None
    tensors = unwrapped(_unpickled(Path(path), map_location="meta"), wrappers=("state_dict",))
    return {key: tuple(value.shape) for key, value in tensors.items()}


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The free-text `__metadata__` of a .safetensors file (training facts), without its tensors.

    Raises UnreadableWeights with the reason."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise UnreadableWeights(damaged(error)) from None


def read_pickled(path: Path) -> object:
    """A pickled file's contents (dicts, tensors, numbers, strings) through the weights-only
    unpickler, for files whose structure matters (A1111 embeddings: `string_to_param`, `step`).

    Raises UnreadableWeights with the reason."""
    return _unpickled(Path(path), map_location="cpu")


def unwrapped(data: object, wrappers: tuple[str, ...] = WRAPPERS) -> dict[str, torch.Tensor]:
    """The tensors of a loaded pickle: the first wrapper found, else the top level ({} if none)."""
    if isinstance(data, dict):
        for wrapper in wrappers:
            if isinstance(data.get(wrapper), dict):
                data = data[wrapper]
                break
    if not isinstance(data, dict):
        return {}
    return {key: value for key, value in data.items() if isinstance(value, torch.Tensor)}


def _unpickled(path: Path, map_location: str) -> object:
    """A pickle read by torch's weights-only loader (memory-mapped when it is torch's zip format)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        if is_code_refusal(error) or pickle_calls_code(path):
            raise UnreadableWeights(UNSAFE_PICKLE) from None
        # torch's own text suggests loading unsafely: not advice to pass on.
        raise UnreadableWeights(NOT_WEIGHTS) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise UnreadableWeights(damaged(error)) from None
    except Exception:  # torch's safe unpickler meets random bytes with IndexError, KeyError, ...
        raise UnreadableWeights(NOT_WEIGHTS) from None


def is_code_refusal(error: BaseException | None) -> bool:
    """Whether torch's weights-only loader refused a file because it names Python code to call
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


# Errors diffusers' own loaders raise for a file that is damaged, incomplete or of another model.
LOAD_ERRORS = (pickle.UnpicklingError, OSError, ValueError, KeyError, RuntimeError, EOFError, SafetensorError)


def load_failure(error: BaseException) -> str:
    """Why diffusers could not load a weights file (one of LOAD_ERRORS), as a sentence: diffusers
    reads single files itself, through the same weights-only unpickler."""
    if is_code_refusal(error):
        return UNSAFE_PICKLE
    if isinstance(error, pickle.UnpicklingError):
        return NOT_WEIGHTS
    return damaged(error)
