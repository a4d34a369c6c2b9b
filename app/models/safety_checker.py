"""The CompVis safety checker held beside the checkpoint: loaded on first use (fetched from the
catalog first when its folder is incomplete), kept once, released on close.

Its folder is `models/safety_checker/`, holding what the catalog's `safety-checker` helper lists
(config.json, preprocessor_config.json, model.safetensors). Safetensors only: pickled weights
are never opened.
"""

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from app.errors import EaselError, HelperModelMissing, ModelLoadError
from app.models.catalog import HelperEntry
from app.models.safe_weights import load_failure

log = logging.getLogger(__name__)

SAFETY_CHECKER_ID = "safety-checker"


@dataclass
class SafetyChecker:
    model: torch.nn.Module      # diffusers' StableDiffusionSafetyChecker
    processor: object           # transformers' CLIPImageProcessor: pictures → the model's input
    device: str
    dtype: torch.dtype


class SafetyCheckerSlot:
    def __init__(self, helper: HelperEntry, folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 fetch: Callable[[HelperEntry, Path], None] | None = None):
        self.helper = helper
        self.folder = Path(folder)
        self._device, self._dtype = device, dtype
        self._fetch = fetch           # downloads the helper's files into the folder (None: never)
        self._lock = threading.Lock()
        self._checker: SafetyChecker | None = None
        self._fetch_failed = False    # offline: not tried again for every job (each try may wait 30 s)

    def checker(self) -> SafetyChecker:
        """The checker, loaded once. Missing: fetched first; still missing, HelperModelMissing (503 in the
        API) saying what to fetch and where."""
        with self._lock:
            if self._checker is None:
                if self._missing() and self._fetch is not None and not self._fetch_failed:
                    self._fetched()
                missing = self._missing()
                if missing:
                    raise HelperModelMissing(self._missing_message(missing))
                self._checker = self._loaded()
            return self._checker

    def release(self) -> None:
        """Free the checker; the next use loads it again (and tries a failed download again)."""
        with self._lock:
            self._checker = None
            self._fetch_failed = False

    def _missing(self) -> list[str]:
        return [name for name in self.helper.files if not (self.folder / name).is_file()]

    def _fetched(self) -> None:
        try:
            self._fetch(self.helper, self.folder)
        except EaselError as error:  # offline, or the download failed: the sentence below says what to do
            self._fetch_failed = True
            log.warning("The safety checker could not be downloaded: %s", error.message)

    def _missing_message(self, missing: list[str]) -> str:
        base = f"https://huggingface.co/{self.helper.repository}/resolve/main/"
        return (
            f"The safety filter is on, but the safety checker is not in {self.folder} and could not be downloaded, "
            f"so nothing was made (no unfiltered picture is returned). Download {', '.join(missing)} from "
            f"{base} (e.g. {base}{missing[0]}) into {self.folder}, or turn the safety filter off."
        )

    def _loaded(self) -> SafetyChecker:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        try:
            model = StableDiffusionSafetyChecker.from_pretrained(
                self.folder, local_files_only=True, use_safetensors=True, dtype=self._dtype
            )
            processor = CLIPImageProcessor.from_pretrained(self.folder, local_files_only=True)
        except Exception as error:  # transformers raises many types for a damaged or foreign folder
            raise ModelLoadError(
                f"The safety checker in {self.folder} could not be loaded: {load_failure(error)} "
                f"Delete the folder to download it again, or turn the safety filter off."
            ) from error
        model.to(self._device).eval()
        return SafetyChecker(model, processor, self._device, self._dtype)
