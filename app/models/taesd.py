"""The tiny autoencoder (TAESD) held beside the checkpoint: fast mode's decoder, and every job's live
preview decoder, when its folder is there. Never fetched by itself (it is optional): the catalog's
`taesd` helper downloads it into `models/taesd/` (diffusers' AutoencoderTiny layout, safetensors).

SD 1 and SD 2 share one latent space, so one TAESD serves both.
"""

import logging
import threading
from pathlib import Path

import torch

from app.models.safe_weights import load_failure

log = logging.getLogger(__name__)

TAESD_ID = "taesd"
TAESD_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


class TaesdSlot:
    def __init__(self, folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.folder = Path(folder)
        self._device, self._dtype = device, dtype
        self._lock = threading.Lock()
        self._decoder: torch.nn.Module | None = None
        self._failed: tuple[float, ...] | None = None  # the files' mtimes when loading them failed
        self.problem: str | None = None                # why the files there could not be loaded

    def present(self) -> bool:
        return all((self.folder / name).is_file() for name in TAESD_FILES)

    def decoder(self) -> torch.nn.Module | None:
        """The AutoencoderTiny, loaded once; None when it is not there (any more) or cannot be loaded
        (`problem` says why; a changed file is tried again)."""
        with self._lock:
            if not self.present():
                self._decoder = None  # deleted since: the full VAE and the approximation again
            elif self._decoder is None:
                stamp = tuple((self.folder / name).stat().st_mtime for name in TAESD_FILES)
                if stamp != self._failed:
                    self._decoder = self._loaded(stamp)
            return self._decoder

    def release(self) -> None:
        with self._lock:
            self._decoder = None

    def _loaded(self, stamp: tuple[float, ...]) -> torch.nn.Module | None:
        from diffusers import AutoencoderTiny

        try:
            model = AutoencoderTiny.from_pretrained(self.folder, local_files_only=True, use_safetensors=True,
                                                    dtype=self._dtype)
        except Exception as error:  # diffusers raises many types for a damaged or foreign folder
            self._failed = stamp
            self.problem = (f"The tiny decoder (TAESD) in {self.folder} could not be loaded: {load_failure(error)} "
                            "Delete the folder and download it again; the full VAE is used meanwhile.")
            log.warning("%s", self.problem)
            return None
        self._failed, self.problem = None, None
        return model.to(self._device).eval()
