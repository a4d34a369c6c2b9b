"""One Easel server with passwords for the HTTP tests: the tiny models, a tiny ESRGAN upscaler,
served for real on a free port (uvicorn in a thread), reached over real HTTP with httpx."""

import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from safetensors.torch import save_file

from app.auth import Access, Credentials, LoginLimiter, hash_password
from app.engine import Engine, create_engine
from app.settings import Settings
from tests.conftest import CPU_ONLY, TINY_SD1, make_settings
from tools.tiny_models import tiny_esrgan_state_dict

USERS = {"ann": "ann-pw", "bob": "bob-pw", "heavy": "heavy-pw", **{f"user{i}": f"pw{i}" for i in range(7)}}
ESRGAN = "4x-tiny"


@dataclass
class Server:
    url: str
    engine: Engine
    settings: Settings
    limiter: LoginLimiter
    root: Path

    def client(self, user: str | None = "ann", **kwargs) -> httpx.Client:
        auth = (user, USERS[user]) if user in USERS else None
        return httpx.Client(base_url=self.url, auth=auth, timeout=120, **kwargs)


@pytest.fixture(scope="session")
def server(tiny_models_dir, tiny_configs_dir, tmp_path_factory):
    from server.compose import serve
    from ui.app import build_ui

    root = tmp_path_factory.mktemp("api-server")
    models = root / "models"
    shutil.copytree(tiny_models_dir / "Stable-diffusion", models / "Stable-diffusion")
    (models / "ESRGAN").mkdir()
    save_file(tiny_esrgan_state_dict(4, seed=1), str(models / "ESRGAN" / f"{ESRGAN}.safetensors"))
    settings = make_settings(root, models, host="127.0.0.1", port=0, model_configs_dir=str(tiny_configs_dir),
                             queue_per_user=4, max_upload_mb=8, preferences_file=str(root / "prefs.json"),
                             access_file=str(root / "access-password.txt"))
    settings.access_file.write_text("easel:secret-file-content\n")
    page = Credentials({name: hash_password(password, iterations=1000) for name, password in USERS.items()})
    access = Access(page=page, api=page)
    limiter = LoginLimiter(free_failures=3, first_wait=1.0, max_wait=2.0)
    engine = create_engine(settings, CPU_ONLY)
    engine.select_checkpoint(TINY_SD1)
    running = serve(build_ui(engine), engine, settings, access, limiter)
    try:
        yield Server(url=running.url, engine=engine, settings=settings, limiter=limiter, root=root)
    finally:
        running.close()
        engine.close()


@pytest.fixture
def ann(server):
    with server.client("ann") as client:
        yield client
