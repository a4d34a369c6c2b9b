"""Test-wide setup: offline, one torch thread; fixtures with tiny models of the real architectures.

`import app` first: it sets the offline/telemetry switches before anything imports the hub.
"""

# isort: off
import app  # noqa: F401  (side effect: offline switches, before torch/diffusers/gradio)
import torch
# isort: on

# On 2 cores, torch with 2 threads was ~200x slower than with 1 on tiny ops.
torch.set_num_threads(1)

import weakref
from pathlib import Path

import pytest

from app.engine import Engine, model_manager
from app.hardware import HardwareFacts
from app.images.store import OutputStore
from app.memory import freeze_imports
from app.models.families import Family
from app.models.manager import ModelManager
from app.settings import load_settings
from tools.tiny_models import save_tiny_configs, save_tiny_model


def pytest_collection_finish(session):
    """As launch.py does: the imports' objects out of the collector's sight, so the many model swaps
    in the tests do not each walk them (no model exists yet at this point)."""
    freeze_imports()


TINY_SD1 = "tiny-sd15"
TINY_SD2_V = "tiny-sd21-v"
CPU_ONLY = HardwareFacts(cpu_name="test", cpu_threads=1)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A models folder as a user has it: two diffusers checkpoints (tiny, random, real architectures)."""
    models = tmp_path_factory.mktemp("models")
    save_tiny_model(models / "Stable-diffusion" / TINY_SD1, Family.SD1, seed=0)
    save_tiny_model(models / "Stable-diffusion" / TINY_SD2_V, Family.SD2_V, seed=1)
    return models


@pytest.fixture(scope="session")
def tiny_configs_dir(tmp_path_factory) -> Path:
    """Config folders like configs/models/, for the tiny architectures: the real single-file
    loading code runs unchanged with tiny checkpoints when pointed here."""
    return save_tiny_configs(tmp_path_factory.mktemp("model-configs"))


def make_settings(tmp_path: Path, models_dir: Path, **overrides):
    return load_settings(
        {
            "models_dir": str(models_dir),
            "outputs_dir": str(tmp_path / "outputs"),
            "cache_dir": str(tmp_path / "cache"),
            "styles_file": str(tmp_path / "styles.csv"),  # never the app folder's own
            "device": "cpu",
            "open_browser": False,
            "torch_compile": False,  # minutes per model: only the tests of compiling turn it on
            **overrides,
        }
    )


_MODELS: "weakref.WeakKeyDictionary[Engine, ModelManager]" = weakref.WeakKeyDictionary()


def make_engine(settings, facts: HardwareFacts = CPU_ONLY) -> Engine:
    """An Engine as app.engine.create_engine makes it, whose model manager a test may look inside
    (`models_of`): the UI and the API only ever see the Engine."""
    return engine_over(settings, model_manager(settings, facts))


def engine_over(settings, models: ModelManager) -> Engine:
    """An Engine over a model manager the test made itself."""
    engine = Engine(settings, models, OutputStore(settings.outputs_dir))
    _MODELS[engine] = models
    return engine


def models_of(engine: Engine) -> ModelManager:
    return _MODELS[engine]


@pytest.fixture
def engine(tiny_models_dir, tiny_configs_dir, tmp_path):
    """An Engine over the tiny models, CPU only, writing outputs under tmp_path/outputs."""
    settings = make_settings(tmp_path, tiny_models_dir, model_configs_dir=str(tiny_configs_dir))
    engine: Engine = make_engine(settings)
    engine.select_checkpoint(TINY_SD1)
    yield engine
    engine.close()
