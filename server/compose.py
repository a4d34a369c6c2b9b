"""The server: the web UI (Gradio) and the A1111 HTTP API on one FastAPI app, who may use them, and
which files a browser may read. The one place that puts the UI, the API and sign-in together.

- The page signs in through Gradio's login form; `/sdapi/v1` takes HTTP Basic. Both read the same
  credentials (app.auth), and wrong passwords from one address are slowed down on both.
- Only the outputs folder is served as files; models, settings and password files are blocked.
- Request bodies (uploads, API JSON) are limited in size before they are read.
"""

import socket
import threading
import time
import urllib.error
import urllib.request
import webbrowser
from dataclasses import dataclass

import anyio
import gradio as gr
import psutil
import uvicorn
from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse

from app.api.docs import docs_html
from app.api.routes import PREFIX, api_router_dependency, install_api
from app.auth import Access, LoginLimiter
from app.engine import Engine
from app.settings import Settings
from server.middleware import BodyLimit, LoginThrottle, SignInPageGuard
from ui.app import PAGE_JS

# Generation handlers only wait on the engine's own queue, which runs one job at a time and takes
# turns between users; let many of them wait at once so every user sees their position and progress.
WAITING_HANDLERS = 64


@dataclass
class RunningServer:
    url: str                  # for this computer: http://127.0.0.1:<port>/
    lan_urls: list[str]       # for other computers, when listening on every interface
    _server: uvicorn.Server
    _thread: threading.Thread

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def lan_urls(host: str, port: int) -> list[str]:
    """Addresses other computers can open: every non-loopback IPv4 address when listening on all."""
    if host not in ("0.0.0.0", "::"):
        return []
    addresses = sorted({
        address.address
        for interface in psutil.net_if_addrs().values()
        for address in interface
        if address.family == socket.AF_INET and not address.address.startswith("127.")
    })
    return [f"http://{address}:{port}/" for address in addresses]


def build_server(blocks: gr.Blocks, engine: Engine, settings: Settings, access: Access,
                 limiter: LoginLimiter | None = None) -> FastAPI:
    """The one FastAPI app: /sdapi/v1 and its docs, then the Gradio page at /."""
    limiter = limiter or LoginLimiter()
    app = FastAPI(title="Easel API", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  description="A1111-compatible: the same routes and fields as AUTOMATIC1111's /sdapi/v1.")
    install_api(app, engine, access, limiter)
    signed_in = api_router_dependency(access, limiter)

    @app.get(f"{PREFIX}/openapi.json", include_in_schema=False, dependencies=[Depends(signed_in)])
    def openapi():
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(signed_in)], response_class=HTMLResponse)
    def docs():
        return docs_html(app.openapi(), f"{PREFIX}/openapi.json")

    blocks.queue(default_concurrency_limit=WAITING_HANDLERS, max_size=settings.queue_size)
    private = [settings.models_dir, settings.cache_dir, settings.access_file, settings.preferences_file,
               settings.model_configs_dir, *([settings.auth_file] if settings.auth_file else [])]

    async def page_auth(user: str, password: str) -> bool:
        # The password hash takes a moment: off the event loop, so other users are not held up.
        return await anyio.to_thread.run_sync(access.page.check, user, password)

    gr.mount_gradio_app(
        app, blocks, path="",
        auth=page_auth if access.page else None,
        auth_message="This Easel is shared on the network. Sign in with the user name and password you were given.",
        # The browser may read the outputs and nothing else on disk (models, settings stay private).
        allowed_paths=[str(settings.outputs_dir)],
        blocked_paths=[str(path) for path in private],
        max_file_size=f"{settings.max_upload_mb}mb",
        footer_links=[],
        run_history=False,
        show_error=True,
        js=PAGE_JS,
    )
    app.add_middleware(SignInPageGuard)
    app.add_middleware(LoginThrottle, limiter=limiter)
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_mb * 2**20)
    return app


def serve(blocks: gr.Blocks, engine: Engine, settings: Settings, access: Access | None = None,
          limiter: LoginLimiter | None = None) -> RunningServer:
    """Start serving in a background thread; returns once it is listening."""
    settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    app = build_server(blocks, engine, settings, access or Access(page=None, api=None), limiter)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            timeout_graceful_shutdown=2, ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="easel-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise OSError(f"Easel could not listen on {settings.host}:{settings.port}. Is the port in use? "
                          "Choose another with --port.")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    running = RunningServer(url=url, lan_urls=lan_urls(settings.host, port), _server=server, _thread=thread)
    if settings.open_browser:
        threading.Thread(target=open_when_answering, args=(url,), name="easel-browser", daemon=True).start()
    return running


def open_when_answering(url: str, open_page=webbrowser.open, timeout: float = 120) -> bool:
    """Open the page in the browser once it answers, so the first thing a user sees is the page, not an error.

    Any HTTP answer counts (a sign-in page says 401); returns whether the browser was asked to open.
    """
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a user's proxy must not see localhost
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with direct.open(url, timeout=10):
                pass
        except urllib.error.HTTPError as error:
            if error.code >= 500:
                time.sleep(0.25)
                continue
        except OSError:
            time.sleep(0.25)
            continue
        open_page(url)
        return True
    return False
