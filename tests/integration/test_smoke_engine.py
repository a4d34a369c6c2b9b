from PIL import Image

from app.generation.requests import GenerationRequest
from app.images.metadata import read_parameters


def test_txt2img_writes_png_with_parameters(engine):
    result = engine.generate(GenerationRequest(prompt="a red fox", steps=2, width=64, height=64, seed=5))
    (image,) = result.images
    saved = Image.open(image.path)
    assert saved.size == (64, 64)
    assert "Seed: 5" in read_parameters(saved)
