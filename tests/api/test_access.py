"""Nothing is reachable without credentials; signed in, only the outputs are served as files."""

import urllib.parse

import httpx
import pytest

from app.generation.requests import GenerationRequest
from tests.api.conftest import USERS

ANONYMOUS_GETS = [
    "config", "gradio_api/info", "gradio_api/openapi.json", "gradio_api/queue/status",
    "sdapi/v1/sd-models", "sdapi/v1/options", "sdapi/v1/progress", "sdapi/v1/samplers",
    "sdapi/v1/openapi.json", "docs",
]


@pytest.mark.parametrize("path", ANONYMOUS_GETS)
def test_every_route_refuses_a_client_without_credentials(server, path):
    response = httpx.get(server.url + path)
    assert response.status_code == 401, response.text


def test_the_page_itself_gives_away_nothing_before_signing_in(server):
    page = httpx.get(server.url)
    assert page.status_code == 200  # the sign-in form
    for secret in ("tiny-sd15", "Stable-diffusion", str(server.settings.models_dir), "upscale-upscaler"):
        assert secret not in page.text


def test_anonymous_posts_are_refused_too(server):
    for path in ("sdapi/v1/txt2img", "sdapi/v1/interrupt", "sdapi/v1/options", "gradio_api/queue/join",
                 "gradio_api/upload"):
        assert httpx.post(server.url + path, json={}).status_code in (401, 403), path
    assert httpx.post(server.url + "sdapi/v1/txt2img", json={}, auth=("ann", "wrong")).status_code == 401
    assert httpx.get(server.url + "sdapi/v1/sd-models", auth=("nobody", "ann-pw")).status_code == 401


def test_a_made_image_is_served_to_a_signed_in_user_and_nothing_else_on_disk_is(server):
    made = server.engine.generate(GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=3)).images[0]
    client = httpx.Client(base_url=server.url)
    assert client.get(f"gradio_api/file={made.path}").status_code == 401
    assert client.post("login", data={"username": "ann", "password": "ann-pw"}).status_code == 200
    served = client.get(f"gradio_api/file={made.path}")
    assert served.status_code == 200 and served.content[:8] == b"\x89PNG\r\n\x1a\n"
    outputs, models = server.settings.outputs_dir, server.settings.models_dir
    secrets = [
        server.settings.access_file,
        server.settings.preferences_file,
        models / "Stable-diffusion" / "tiny-sd15" / "model_index.json",
        models / "ESRGAN" / "4x-tiny.safetensors",
        server.root / "cache" / "model-facts.json",
    ]
    attempts = [f"gradio_api/file={path}" for path in secrets]
    attempts += [
        f"gradio_api/file={outputs}/../access-password.txt",
        f"gradio_api/file={outputs}/%2e%2e/access-password.txt",
        "gradio_api/file=" + urllib.parse.quote(f"{outputs}/../access-password.txt", safe=""),
        f"gradio_api/file={outputs}/..%2faccess-password.txt",
        "gradio_api/file=../../../../etc/passwd",
        "gradio_api/file=/etc/passwd",
        "gradio_api/file=access-password.txt",
        "gradio_api/file/access-password.txt",
        "gradio_api/file/../access-password.txt",
        "file=/etc/passwd",
        "static/../access-password.txt",
        "assets/../../access-password.txt",
    ]
    for attempt in attempts:
        response = client.get(attempt)
        assert response.status_code in (400, 401, 403, 404, 405), (attempt, response.status_code)
        assert b"secret-file-content" not in response.content and b"root:" not in response.content


def test_wrong_passwords_from_one_address_are_slowed_down_on_the_page_and_the_api(server):
    try:
        for _ in range(4):  # three are free, the fourth starts a wait
            assert httpx.post(server.url + "login", data={"username": "ann", "password": "no"}).status_code == 400
        blocked = httpx.post(server.url + "login", data={"username": "ann", "password": "ann-pw"})
        assert blocked.status_code == 429 and "Wait" in blocked.json()["detail"]
        assert int(blocked.headers["retry-after"]) >= 1
        api = httpx.get(server.url + "sdapi/v1/sd-models", auth=("ann", USERS["ann"]))
        assert api.status_code == 429  # the same address, through the API
    finally:
        server.limiter.succeeded("127.0.0.1")
    assert httpx.get(server.url + "sdapi/v1/sd-models", auth=("ann", USERS["ann"])).status_code == 200
