"""`/sdapi/v1/*` on FastAPI: A1111's routes over the Engine, HTTP Basic auth, JSON errors.

Every route waits on the same Engine and job queue as the web UI, so a client's job takes its
turn with everyone else's, and the same seed gives the same picture as the page.
"""

import logging
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api import convert
from app.api.networks import add_network_routes
from app.api.schemas import (
    ErrorResponse,
    ExtraSingleImageRequest,
    ExtraSingleImageResponse,
    GenerationResponse,
    Img2ImgRequest,
    PngInfoRequest,
    PngInfoResponse,
    ProgressResponse,
    ProgressState,
    PromptStyle,
    Sampler,
    Scheduler,
    SdModel,
    Txt2ImgRequest,
    Upscaler,
)
from app.auth import Access, LoginLimiter, too_many_attempts_message
from app.engine import Engine
from app.errors import (
    AccessDenied,
    EaselError,
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    NoModelAvailable,
    QueueFull,
    TooManyAttempts,
)

log = logging.getLogger(__name__)
PREFIX = "/sdapi/v1"
AUTOMATIC_VAE = "Automatic"  # A1111's sd_vae value for "the checkpoint's own VAE"
# Status for each error a request can meet; anything else is Easel's fault (500).
_STATUS = {
    InvalidRequest: 422,
    ModelNotFound: 404,
    ModelLoadError: 422,   # the client chose a checkpoint that cannot be used
    NoModelAvailable: 503,
    QueueFull: 503,
    TooManyAttempts: 429,
    AccessDenied: 401,
}
_ERRORS = {status: name for name, status in
           (("Unauthorized", 401), ("Not Found", 404), ("Bad Request", 400), ("Unprocessable Entity", 422), ("Too Many Requests", 429),
            ("Service Unavailable", 503), ("Payload Too Large", 413))}


def error_response(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": _ERRORS.get(status, "Error"), "detail": detail}, status_code=status, headers=headers)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def install_api(app: FastAPI, engine: Engine, access: Access, limiter: LoginLimiter) -> None:
    """Add the routes and the JSON error format to `app` (the server's top-level FastAPI)."""
    app.include_router(api_router(engine, access, limiter))

    @app.exception_handler(EaselError)
    async def easel_error(request: Request, error: EaselError):
        status = next((code for kind, code in _STATUS.items() if isinstance(error, kind)), 500)
        headers = None
        if isinstance(error, QueueFull):
            headers = {"Retry-After": "30"}
        elif isinstance(error, TooManyAttempts):
            headers = {"Retry-After": str(max(1, round(error.seconds)))}
        elif status == 401:
            headers = {"WWW-Authenticate": 'Basic realm="Easel"'}
        return error_response(status, error.message, headers)

    @app.exception_handler(RequestValidationError)
    async def bad_fields(request: Request, error: RequestValidationError):
        return error_response(422, _validation_message(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        detail = str(error.detail)
        if error.status_code == 400 and "parsing the body" in detail:
            detail = "The request body could not be read as JSON. Send a JSON object with the fields in /docs."
        return error_response(error.status_code, detail, getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception):
        log.exception("API request %s failed", request.url.path)
        return error_response(500, f"Something went wrong inside Easel ({type(error).__name__}). "
                                   "The server keeps running; the terminal shows the details for a bug report.")


def _validation_message(error: RequestValidationError) -> str:
    problems = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "the request body"
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    return "Some fields are not right: " + "; ".join(problems) + ". Check their types against /docs."


def api_router_dependency(access: Access, limiter: LoginLimiter):
    """A FastAPI dependency: who is asking (their user name, or their address when the API needs
    no password). Raises AccessDenied (401) or TooManyAttempts (429)."""
    basic = HTTPBasic(auto_error=False)

    def caller(request: Request, credentials: HTTPBasicCredentials | None = Depends(basic)) -> str:
        address = client_address(request)
        if access.api is None:
            return f"guest@{address}"
        wait = limiter.wait_seconds(address)
        if wait > 0:
            raise TooManyAttempts(too_many_attempts_message(wait), wait)
        if credentials is None:
            raise AccessDenied("This Easel needs a user name and password (HTTP Basic).")
        if not access.api.check(credentials.username, credentials.password):
            limiter.failed(address)
            raise AccessDenied("Wrong user name or password.")
        limiter.succeeded(address)
        return credentials.username

    return caller


def api_router(engine: Engine, access: Access, limiter: LoginLimiter) -> APIRouter:
    caller = api_router_dependency(access, limiter)
    router = APIRouter(prefix=PREFIX, dependencies=[Depends(caller)], responses={
        401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
        429: {"model": ErrorResponse}, 503: {"model": ErrorResponse},
    })

    def generate(request, owner: str, body) -> GenerationResponse:
        job = engine.submit(request, owner=owner)
        result = job.wait()
        if result is None:
            raise InvalidRequest("The job was cancelled before it started.")
        images = convert.images_of(result) if body.send_images else []
        parameters = body.model_dump(exclude={"init_images", "mask"})
        model = result.model.name if result.model else None
        return GenerationResponse(images=images, parameters=parameters,
                                  info=convert.generation_info(result, job.request, model, body.styles))

    @router.post("/txt2img", response_model=GenerationResponse)
    def txt2img(body: Txt2ImgRequest, owner: str = Depends(caller)):
        """Pictures from a prompt. Waits its turn in the shared queue, then answers with every image."""
        return generate(convert.generation_request(body), owner, body)

    @router.post("/img2img", response_model=GenerationResponse)
    def img2img(body: Img2ImgRequest, owner: str = Depends(caller)):
        """Pictures from `init_images[0]` and a prompt; with `mask`, only the light part is repainted."""
        return generate(convert.img2img_request(body), owner, body)

    @router.post("/extra-single-image", response_model=ExtraSingleImageResponse)
    def extra_single_image(body: ExtraSingleImageRequest, owner: str = Depends(caller)):
        """One picture upscaled with `upscaler_1` (a name from /upscalers; "None" is Lanczos)."""
        done = engine.submit_upscale(convert.upscale_request(body), owner=owner).wait()
        return ExtraSingleImageResponse(image=convert.upscaled_image(done), html_info=done.parameters)

    @router.post("/png-info", response_model=PngInfoResponse)
    def read_png_info(body: PngInfoRequest):
        """The A1111 parameters written in a picture, as text and as fields."""
        info = engine.read_png_info(convert.decoded_image(body.image))
        return PngInfoResponse(info=info.parameters or "", items={"parameters": info.parameters} if info.parameters else {},
                               parameters={key: _plain(value) for key, value in info.fields.items()})

    @router.get("/sd-models", response_model=list[SdModel])
    def sd_models():
        """The checkpoints that can make pictures (titles are what `sd_model_checkpoint` takes)."""
        return [_sd_model(entry) for entry in engine.selectable_checkpoints()]

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        """Scan the models folder again for added or removed files."""
        engine.refresh_models()

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        """The active checkpoint and VAE, as A1111 names them."""
        active = engine.active_checkpoint()
        return {
            "sd_model_checkpoint": active.a1111_title if active else None,
            "sd_checkpoint_hash": active.model_hash if active else None,
            "sd_vae": engine.vae_choice() or AUTOMATIC_VAE,
            "samples_format": "png",
            "CLIP_stop_at_last_layers": 1,
        }

    @router.post("/options")
    def set_options(body: dict[str, Any]) -> None:
        """Setting `sd_model_checkpoint` swaps the checkpoint (after the job running now); `sd_vae`
        chooses a VAE ("Automatic" or "None": the checkpoint's own). Other keys are ignored."""
        if "sd_vae" in body:
            vae = body["sd_vae"]
            if vae is not None and not isinstance(vae, str):
                raise InvalidRequest("sd_vae must be a VAE's file name, or \"Automatic\".")
            engine.select_vae(None if vae in (None, "", AUTOMATIC_VAE, "None") else vae)
        if "sd_model_checkpoint" in body:
            title = body["sd_model_checkpoint"]
            if not isinstance(title, str) or not title.strip():
                raise InvalidRequest("sd_model_checkpoint must be a checkpoint title from /sdapi/v1/sd-models.")
            engine.select_checkpoint(title)

    @router.get("/prompt-styles", response_model=list[PromptStyle])
    def prompt_styles():
        """The saved styles (styles.csv); their names go in `styles` of txt2img and img2img."""
        return [PromptStyle(name=style.name, prompt=style.prompt, negative_prompt=style.negative_prompt)
                for style in engine.styles()]

    @router.get("/samplers", response_model=list[Sampler])
    def samplers():
        return [Sampler(name=name, aliases=[], options={}) for name in engine.sampler_names()]

    @router.get("/schedulers", response_model=list[Scheduler])
    def schedulers():
        return [Scheduler(name=name.lower(), label=name) for name in engine.schedule_names()]

    @router.get("/upscalers", response_model=list[Upscaler])
    def upscalers():
        listed = [Upscaler(name=convert.NO_UPSCALER, model_name=None, model_path=None, scale=4)]
        for choice in engine.upscalers():
            listed.append(Upscaler(name=choice.name, model_name=choice.architecture,
                                   model_path=choice.path.name if choice.path else None, scale=choice.scale or 4))
        return listed

    @router.get("/progress", response_model=ProgressResponse)
    def progress(owner: str = Depends(caller), skip_current_image: bool = False):
        """The caller's own job: how far it is, and its live preview (never a colleague's picture)."""
        jobs = engine.jobs_of(owner)
        running = next((job for job in jobs if job in engine.running_jobs()), None)
        waiting = [job for job in jobs if job is not running]
        state = ProgressState(job_count=len(jobs), queue_position=engine.position(waiting[0]) if waiting else 0)
        if running is None:
            eta = engine.seconds_left(waiting[0]) if waiting else None
            return ProgressResponse(progress=0.0, eta_relative=eta or 0.0, state=state, current_image=None,
                                    textinfo=f"Waiting: position {state.queue_position}" if waiting else None)
        p = running.progress
        state.job = running.id
        state.sampling_step, state.sampling_steps = p.step, p.steps
        state.job_no = p.batch
        state.interrupted, state.skipped = running.cancelled, running.skipping
        image = None
        if not skip_current_image:
            running.watch()  # the client reads previews: the job makes them while it asks
        if p.preview is not None and not skip_current_image:
            image = convert.encoded_png(p.preview, None)
        return ProgressResponse(progress=p.fraction, eta_relative=engine.seconds_left(running) or 0.0, state=state,
                                current_image=image)

    @router.post("/interrupt")
    def interrupt(owner: str = Depends(caller)) -> None:
        """Stops the caller's jobs: the running one keeps what it made, waiting ones never start.
        A colleague's jobs run on."""
        engine.interrupt(owner)

    @router.post("/skip")
    def skip(owner: str = Depends(caller)) -> None:
        """Ends the current batch of the caller's running job; its next batch goes on."""
        engine.skip(owner)

    add_network_routes(router, engine)
    return router


def _sd_model(entry) -> SdModel:
    return SdModel(title=entry.a1111_title, model_name=entry.name, hash=entry.model_hash, sha256=None,
                   filename=str(entry.path.name), config=None)


def _plain(value):
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
