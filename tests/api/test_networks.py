"""`/sdapi/v1/loras`, `/refresh-loras` and `/embeddings` in A1111's shapes, and a LoRA tag through
txt2img recorded as A1111 records it."""

import base64
import io

import numpy as np
from PIL import Image

from app.models.families import Family
from tools.tiny_models import tiny_pipeline
from tools.tiny_networks import (
    embedding_vectors,
    kohya_lora,
    save_a1111_embedding,
    save_emb_params_embedding,
    save_lora,
)


def _picture(response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))))


def test_loras_appear_after_a_refresh_and_their_tag_changes_the_picture(server, ann):
    models = server.root / "models"
    save_lora(models / "Lora" / "api-lora.safetensors", kohya_lora(tiny_pipeline(Family.SD1), seed=7),
              metadata={"ss_output_name": "api-alias", "ss_network_dim": "4"})
    assert ann.post("/sdapi/v1/refresh-loras").status_code == 200
    listed = ann.get("/sdapi/v1/loras").json()
    (lora,) = [item for item in listed if item["name"] == "api-lora"]
    assert lora == {"name": "api-lora", "alias": "api-alias", "path": "Lora/api-lora.safetensors",
                    "metadata": {"ss_output_name": "api-alias", "ss_network_dim": "4"}}

    body = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "seed": 3, "save_images": False}
    plain = ann.post("/sdapi/v1/txt2img", json=body)
    tagged = ann.post("/sdapi/v1/txt2img", json={**body, "prompt": "a fox <lora:api-alias:1>"})
    assert plain.status_code == tagged.status_code == 200
    assert not np.array_equal(_picture(plain), _picture(tagged))
    info = tagged.json()["info"]
    assert "<lora:api-alias:1>" in info and "Lora hashes" in info


def test_embeddings_are_split_into_loaded_and_skipped_for_the_active_model(server, ann):
    folder = server.root / "models" / "embeddings"
    save_a1111_embedding(folder / "api-tok.pt", embedding_vectors(32, 3), step=42)
    save_emb_params_embedding(folder / "api-wide.safetensors", embedding_vectors(1024, 1))
    answer = ann.get("/sdapi/v1/embeddings")
    assert answer.status_code == 200
    body = answer.json()
    assert body["loaded"]["api-tok"] == {"step": 42, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "tiny",
                                         "shape": 32, "vectors": 3}
    assert body["skipped"]["api-wide"] == {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                           "shape": 1024, "vectors": 1}
