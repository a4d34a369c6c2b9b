"""The server: the web UI and the A1111 HTTP API on one FastAPI app, who may use them, and which
files a browser may read.

- The page signs in through Gradio's login form; `/sdapi/v1` takes HTTP Basic. Both read the same
  credentials (app.auth), and wrong passwords from one address are slowed down on both.
- Only the outputs folder is served as files; models, settings and password files are blocked.
- Request bodies (uploads, API JSON) are limited in size before they are read.
"""

import re
import socket
import threading
import time
import webbrowser
from dataclasses import dataclass

import anyio
import gradio as gr
import psutil
import uvicorn
from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.docs import docs_html
from app.api.routes import PREFIX, api_router_dependency, error_response, install_api
from app.auth import Access, LoginLimiter, too_many_attempts_message
from app.engine import Engine
from app.settings import Settings
from ui.app import PAGE_JS

# Generation handlers only wait on the engine's own queue, which runs one job at a time and takes
# turns between users; let many of them wait at once so every user sees their position and progress.
WAITING_HANDLERS = 64
_LOGIN_PATHS = ("/login", "/login/")


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


class BodyLimit:
    """Refuses a request body over `max_bytes` with 413, whether it declares its length or streams."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = (f"The request is larger than this server accepts ({self.max_bytes // 2**20} MB). "
                   "Send a smaller picture.")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await error_response(413, message)(scope, receive, send)
        seen = 0
        too_large = False

        async def counted_receive():
            nonlocal seen, too_large
            event = await receive()
            if event["type"] == "http.request":
                seen += len(event.get("body", b""))
                if seen > self.max_bytes:
                    # Stop reading: the app sees the end of the body, and its answer is replaced below.
                    too_large = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return event

        async def replaced_send(event):
            if not too_large:
                return await send(event)
            if event["type"] == "http.response.start":
                refusal = error_response(413, message)
                await send({"type": "http.response.start", "status": 413, "headers": refusal.raw_headers})
                await send({"type": "http.response.body", "body": refusal.body})

        await self.app(scope, counted_receive, replaced_send)


class LoginThrottle:
    """Gradio's login form (`POST /login`) through the same limiter as the API's HTTP Basic."""

    def __init__(self, app: ASGIApp, limiter: LoginLimiter):
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in _LOGIN_PATHS:
            return await self.app(scope, receive, send)
        address = scope["client"][0] if scope.get("client") else "unknown"
        wait = self.limiter.wait_seconds(address)
        if wait > 0:
            response = error_response(429, too_many_attempts_message(wait), {"Retry-After": str(max(1, round(wait)))})
            return await response(scope, receive, send)
        status = 0

        async def watched_send(event):
            nonlocal status
            if event["type"] == "http.response.start":
                status = event["status"]
            await send(event)

        await self.app(scope, receive, watched_send)
        if status == 200:
            self.limiter.succeeded(address)
        else:
            self.limiter.failed(address)


class SignInPageGuard:
    """Gradio 6 embeds its API description (endpoint names, the checkpoint list as defaults) in
    the sign-in page it shows a visitor who is not signed in. Strip it from that page."""

    _INFO = re.compile(rb"<script>window\.gradio_api_info = .*?;</script>", re.DOTALL)
    _EMPTY = b'<script>window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}};</script>'

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in ("/", ""):
            return await self.app(scope, receive, send)
        start: dict = {}
        body = bytearray()

        async def buffered_send(event):
            if event["type"] == "http.response.start":
                start.update(event)
                return
            body.extend(event.get("body", b""))
            if event.get("more_body"):
                return
            page = bytes(body)
            if b'"auth_required":true' in page or b'"auth_required": true' in page:
                page = self._INFO.sub(self._EMPTY, page)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(page)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, buffered_send)


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
        webbrowser.open(url)
    return running
