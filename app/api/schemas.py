"""A1111's `/sdapi/v1` request and response shapes, field names as its clients send them.

Fields a client may send that Easel does not act on are accepted and ignored when they do not
change the picture (`extra="allow"`); `convert.unsupported` refuses the ones that would.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    # Unknown keys are kept (A1111 clients send many); types are checked as pydantic does by default.
    model_config = ConfigDict(extra="allow")


class Txt2ImgRequest(_Lenient):
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    sampler_name: str | None = None
    sampler_index: str | None = None       # older clients put the sampler here
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50                        # A1111's API default
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    denoising_strength: float | None = None
    restore_faces: bool | None = None
    tiling: bool | None = None
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None         # None: "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_sampler_name: str | None = None     # None or "Use same sampler": the first pass's
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    script_name: str | None = None
    alwayson_scripts: dict[str, Any] | None = None
    send_images: bool = True
    save_images: bool = False
    easel_fast: bool = Field(False, description=(
        "Easel's fast mode (not in A1111): trades quality for speed. Adds the LCM-LoRA (models/Lora/"
        "lcm-lora-sdv1-5.safetensors, from the Download list) at weight 1 and runs the LCM sampler; steps "
        "outside 4-8 become 4 and cfg_scale outside 1-2 becomes 1. TAESD (models/taesd/) decodes the picture "
        "when downloaded. SD 1.x checkpoints only. Without the LoRA: 422 saying what to download. The PNG "
        "records it as 'Fast mode: LCM-LoRA[, TAESD]'."))


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] | None = None
    denoising_strength: float = 0.75
    resize_mode: int = 0
    mask: str | None = None
    mask_blur: int | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_fill: int = 0
    inpaint_full_res: bool | int = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    include_init_images: bool = False


class GenerationResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs, each with its A1111 `parameters` text")
    parameters: dict[str, Any]
    info: str = Field(description="JSON: seed, all_seeds, prompt, infotexts, ...")


class ExtraSingleImageRequest(_Lenient):
    image: str = ""
    resize_mode: int = 0                  # 0: scale by upscaling_resize, 1: to upscaling_resize_w x _h
    show_extras_results: bool = True
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    upscale_first: bool = False


class ExtraSingleImageResponse(BaseModel):
    image: str
    html_info: str


class PngInfoRequest(_Lenient):
    image: str = ""


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class SdModel(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None = None


class PromptStyle(BaseModel):
    name: str
    prompt: str | None
    negative_prompt: str | None


class Lora(BaseModel):
    name: str
    alias: str
    path: str          # relative to the models folder: the server's own folders are not the client's business
    metadata: dict[str, Any]


class Embedding(BaseModel):
    step: int | None
    sd_checkpoint: str | None
    sd_checkpoint_name: str | None
    shape: int         # the vector width: 768 SD 1.x, 1024 SD 2.x
    vectors: int       # how many tokens it stands for


class Embeddings(BaseModel):
    loaded: dict[str, Embedding]
    skipped: dict[str, Embedding]


class Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class Scheduler(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class Upscaler(BaseModel):
    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None = None
    scale: float | None


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    queue_position: int = 0               # Easel: where the caller's next job waits (0: running or none)


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None
    textinfo: str | None = None
    current_task: str | None = None


class ErrorResponse(BaseModel):
    error: str
    detail: str
