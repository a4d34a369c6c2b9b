"""The depth estimator that SD 2 depth models are conditioned with, when the user uploads no depth map.

It is a DPT (MiDaS) model in transformers' layout, `DPTForDepthEstimation` with its
`DPTImageProcessor`: Intel/dpt-hybrid-midas, the one Stability's SD 2 depth repository ships as
`depth_estimator/`. Easel looks for it in a diffusers depth folder's own `depth_estimator/` and
`feature_extractor/`, then in `models/<folder>/` as the catalog's `depth-estimator` helper names it.
Safetensors only, offline: pickled weights are never opened. The MiDaS weights a single-file
`512-depth-ema` checkpoint may carry (`depth_model.*`) are not used.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from app.errors import ModelLoadError
from app.models.catalog import HelperEntry, load_helpers
from app.models.registry import Layout, ModelEntry
from app.models.safe_weights import LOAD_ERRORS, load_failure

DEPTH_ESTIMATOR_ID = "depth-estimator"
MODEL_CONFIG = "config.json"
PROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass(frozen=True)
class EstimatorFolders:
    model: Path      # config.json and *.safetensors
    processor: Path  # preprocessor_config.json


def estimator_helper() -> HelperEntry:
    return next(helper for helper in load_helpers() if helper.id == DEPTH_ESTIMATOR_ID)


def estimator_folders(entry: ModelEntry, models_dir: Path) -> EstimatorFolders | None:
    """Where the estimator for `entry` is: its diffusers folder's own, else the models folder's; None: nowhere."""
    shared = Path(models_dir) / estimator_helper().folder
    candidates = [EstimatorFolders(shared, shared)]
    if entry.layout is Layout.DIFFUSERS:
        candidates.insert(0, EstimatorFolders(entry.path / "depth_estimator", entry.path / "feature_extractor"))
    for folders in candidates:
        if (folders.model / MODEL_CONFIG).is_file() and (folders.processor / PROCESSOR_CONFIG).is_file():
            return folders
    return None


def load_estimator(folders: EstimatorFolders):
    """(DPTForDepthEstimation, DPTImageProcessor) from the folders, in float32 on the CPU."""
    from transformers import DPTForDepthEstimation, DPTImageProcessor

    if not any(folders.model.glob("*.safetensors")):
        raise ModelLoadError(
            f"The depth estimator in {folders.model} holds no .safetensors weights. Easel does not open pickled "
            "weights (they can run code); get model.safetensors of Intel/dpt-hybrid-midas."
        )
    try:
        model = DPTForDepthEstimation.from_pretrained(folders.model, local_files_only=True, use_safetensors=True)
        processor = DPTImageProcessor.from_pretrained(folders.processor, local_files_only=True)
    except LOAD_ERRORS as error:
        raise ModelLoadError(f"Could not load the depth estimator in {folders.model}: {load_failure(error)}") from error
    return model.to(torch.float32).eval(), processor


def attach_estimator(pipe, entry: ModelEntry, models_dir: Path) -> bool:
    """Give a depth pipeline its estimator when there is one; True when it was added now (the caller
    then places the pipeline again, so the estimator follows the device plan)."""
    if getattr(pipe, "depth_estimator", None) is not None:
        return False
    folders = estimator_folders(entry, models_dir)
    if folders is None:
        return False
    model, processor = load_estimator(folders)
    pipe.register_modules(depth_estimator=model, feature_extractor=processor)
    return True


def missing_estimator() -> str:
    """What to do when a depth model has neither an uploaded depth map nor an estimator."""
    helper = estimator_helper()
    return (
        f"This SD 2 depth model needs a depth map: upload one as the depth map (lighter is nearer), or download "
        f"the depth estimator '{helper.title}' under \"Download a model\" at the top of the page, or save "
        f"{', '.join(helper.files)} from https://huggingface.co/{helper.repository} into the folder '{helper.folder}' inside the models folder "
        f"(beside 'Stable-diffusion'), then run it again."
    )
