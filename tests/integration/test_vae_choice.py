"""A VAE from models/VAE/ replaces the checkpoint's own, is named in the PNG, and can be switched back."""

import numpy as np
import pytest
from safetensors.torch import save_file

from app.errors import ModelLoadError, ModelNotFound
from app.generation.requests import GenerationRequest
from app.images.metadata import parse_infotext
from app.models.families import Family
from tests.conftest import TINY_SD1
from tools.ldm_convert import vae_to_ldm
from tools.tiny_models import tiny_pipeline


def pixels(engine, seed=3):
    result = engine.generate(GenerationRequest(prompt="a boat", steps=2, width=64, height=64, seed=seed))
    (image,) = result.images
    return np.asarray(image.image), image.parameters


@pytest.fixture
def vae_engine(engine, tiny_models_dir):
    vae_dir = tiny_models_dir / "VAE"
    vae_dir.mkdir(exist_ok=True)
    other = tiny_pipeline(Family.SD1, seed=42).vae  # same architecture, other weights
    save_file({k: v.contiguous() for k, v in vae_to_ldm(other.state_dict()).items()}, vae_dir / "other-vae.safetensors")
    (vae_dir / "broken-vae.safetensors").write_bytes(b"not a safetensors file")
    engine.refresh_models()
    yield engine
    for path in vae_dir.iterdir():
        path.unlink()


def test_a_chosen_vae_changes_the_picture_and_is_written_in_the_png(vae_engine):
    own, own_parameters = pixels(vae_engine)
    vae_engine.select_vae("other-vae.safetensors")
    other, parameters = pixels(vae_engine)
    assert not np.array_equal(own, other)
    assert parse_infotext(parameters)["VAE"] == "other-vae"
    assert "VAE" not in parse_infotext(own_parameters)

    vae_engine.select_vae(None)
    back, _ = pixels(vae_engine)
    assert np.array_equal(own, back)


def test_the_chosen_vae_follows_a_checkpoint_swap(vae_engine):
    vae_engine.select_vae("other-vae.safetensors")
    vae_engine.select_checkpoint("tiny-sd21-v")
    vae_engine.select_checkpoint(TINY_SD1)
    _, parameters = pixels(vae_engine)
    assert parse_infotext(parameters)["VAE"] == "other-vae"


def test_unknown_or_broken_vae_is_a_clear_error_and_changes_nothing(vae_engine):
    before, _ = pixels(vae_engine)
    with pytest.raises(ModelNotFound, match="no VAE named"):
        vae_engine.select_vae("missing.safetensors")
    with pytest.raises(ModelLoadError, match="broken-vae"):
        vae_engine.select_vae("broken-vae.safetensors")
    assert vae_engine.vae_choice() is None
    after, _ = pixels(vae_engine)
    assert np.array_equal(before, after)
