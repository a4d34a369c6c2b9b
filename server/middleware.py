"""The server's own layers around the app: request size limits, slowing down password guessing on
Gradio's login form, and keeping the API description off the sign-in page."""

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.routes import error_response
from app.auth import LoginLimiter, too_many_attempts_message

_LOGIN_PATHS = ("/login", "/login/")


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
