"""One variant of the speed bench, measured in this process (bench/speed.py starts one child per variant).

The four variants make the same picture (same model file, size, sampler, CFG, seed and prompt):

- `easel`: Easel's Engine in process (`create_engine`, `engine.generate`), as the page and scripts use it;
- `easel-http`: Easel's real server (`server.compose.serve`) in this process, over HTTP (`POST /sdapi/v1/txt2img`);
- `diffusers-fp32`: plain diffusers as its docs show it, in float32 (its default);
- `diffusers-easel-dtype`: plain diffusers with `torch_dtype` set to the dtype Easel picks on this machine.

What is measured, identically for all four: the UNet's seconds per step (timestamps of the step
callbacks, median of the steps after the first), text encoding (every `CLIPTextModel` call of the job)
and VAE decode (every `AutoencoderKL.decode` call), wrapped at class level so neither Easel nor
diffusers needs to know; end to end from the request to a PNG on disk; the peak RSS of the process.

    python bench/speed_variants.py JSON_SPEC   # prints one JSON line per variant of the spec
"""

from __future__ import annotations

import base64
import dataclasses
import json
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import app  # noqa: E402,F401  (offline switches before torch/diffusers)

VARIANTS = ("easel", "easel-http", "diffusers-fp32", "diffusers-easel-dtype")
PROMPT = "a lighthouse on a cliff at dusk, oil painting, detailed"
# Another prompt for the warm-up job: a cache of text encodings must not make the timed job's free.
WARMUP_PROMPT = "warm-up: a red bicycle leaning on a wall"
SEED = 1234
CFG = 7.0
SAMPLER, SCHEDULE = "DPM++ 2M", "Karras"


@dataclasses.dataclass
class Spec:
    """One child's job (JSON from bench/speed.py)."""
    variants: list[str]
    model: str                 # single file, or a diffusers folder (the --tiny models)
    config: str                # the diffusers config folder of the model's architecture
    size: int
    steps: int
    warmup_steps: int
    workdir: str               # Easel's settings folders live under it
    threads: int | None = None  # None: one per physical core, as Easel's launcher sets (use_physical_cores)
    tiny: bool = False         # build the tiny model (tools/tiny_models.py) at `model` when missing
    compile: bool = True       # Easel's torch_compile setting (its background compiled mode)


@dataclasses.dataclass
class Measured:
    variant: str
    dtype: str = ""
    threads: int = 0
    load_s: float = 0.0
    warmup_s: float = 0.0
    until_fast_s: float = 0.0
    step_s: float | None = None       # median UNet step after the first (CFG: a batch of 2)
    steps_seen: int = 0
    text_s: float = 0.0
    decode_s: float | None = None     # None: no AutoencoderKL.decode call was seen
    end_to_end_s: float = 0.0
    png_bytes: int = 0
    peak_rss: int = 0                 # ru_maxrss of this process, bytes
    note: str = ""                    # Easel: what its page says about the compiled mode after the job
    error: str = ""


# ------------------------------------------------------------------------------------- hooks

def wait_until_fast(engine) -> None:
    """HOOK for the background torch.compile: return once the engine runs its compiled graphs for the
    shapes the timed job uses (the warm-up job, of the same size, asked for them), so the bench times
    Easel as a user sees it after the one-off preparation (kept on disk: once per model and size)."""
    engine.wait_until_compiled()


def easel_dtype():
    """The dtype Easel picks on this machine (bfloat16 on CPUs with AVX-512 BF16 or AMX)."""
    from app.devices import plan_device
    from app.hardware import probe_hardware

    return plan_device(probe_hardware(), "cpu").dtype


# ---------------------------------------------------------------------------------- timing

class PhaseClock:
    """Seconds spent in text encoding and VAE decoding, whoever calls them: the classes' own
    methods wrapped once per process (the compiled UNet is never touched)."""

    def __init__(self):
        self.text = 0.0
        self.decode = 0.0
        self.decodes = 0
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel

        AutoencoderKL.decode = self._timed(AutoencoderKL.decode, "decode")
        CLIPTextModel.forward = self._timed(CLIPTextModel.forward, "text")
        self.steps: dict[str, list[tuple[int, float]]] = {}  # Easel's jobs: prompt -> [(step done, time)]
        self._stamp_job_steps()

    def _stamp_job_steps(self) -> None:
        """Easel's step times, from `Job.report` (the one call every watcher of a job hears from), the
        same for the Engine and the HTTP variant."""
        from app.jobs import Job

        report, steps = Job.report, self.steps

        def stamped(job, **changes):
            report(job, **changes)
            if changes.get("step"):
                steps.setdefault(getattr(job.request, "prompt", ""), []).append((changes["step"], time.perf_counter()))

        Job.report = stamped

    def _timed(self, method, phase: str):
        def timed(module, *args, **kwargs):
            started = time.perf_counter()
            try:
                return method(module, *args, **kwargs)
            finally:
                setattr(self, phase, getattr(self, phase) + time.perf_counter() - started)
                if phase == "decode":
                    self.decodes += 1
        return timed

    def reset(self) -> None:
        self.text = self.decode = 0.0
        self.decodes = 0


def step_seconds(stamps: list[tuple[int, float]]) -> float | None:
    """Median seconds per step from (step done, time) pairs, leaving out the first step (it carries
    the sampler's set-up). Steps reported in one go count as one interval divided by their number."""
    later = [(step, at) for step, at in stamps if step >= 1]
    per_step = [(b_at - a_at) / (b_step - a_step)
                for (a_step, a_at), (b_step, b_at) in zip(later, later[1:]) if b_step > a_step]
    return statistics.median(per_step) if per_step else None


# -------------------------------------------------------------------------------- variants

def easel_settings(spec: Spec):
    from app.settings import load_settings

    work = Path(spec.workdir)
    return load_settings({
        "models_dir": str(Path(spec.model).parents[1]),  # <models>/Stable-diffusion/<file>
        "outputs_dir": tempfile.mkdtemp(prefix="outputs-", dir=work),
        "cache_dir": str(work / "easel-cache"),  # kept: a file's hash is computed once
        "styles_file": str(work / "styles.csv"),
        "preferences_file": str(work / "preferences.json"),
        "device": "cpu",
        "open_browser": False,
        "port": 0,
        "torch_compile": spec.compile,
    })


def model_title(engine, model: str) -> str:
    for entry in engine.checkpoints():
        if Path(entry.path).name == Path(model).name:
            if entry.problem:
                raise RuntimeError(f"Easel cannot use {model}: {entry.problem}")
            return entry.title
    raise RuntimeError(f"Easel's registry does not list {model}")


def run_easel(spec: Spec, clock: PhaseClock, over_http: bool) -> Measured:
    import torch

    from app.engine import create_engine
    from app.generation.requests import GenerationRequest

    measured = Measured("easel-http" if over_http else "easel")
    started = time.perf_counter()
    settings = easel_settings(spec)
    engine = create_engine(settings)
    title = model_title(engine, spec.model)
    client = server = None
    if over_http:
        import httpx

        from server.compose import serve
        from ui.app import build_ui

        server = serve(build_ui(engine), engine, settings)
        client = httpx.Client(base_url=server.url, timeout=3600)
        client.post("/sdapi/v1/options", json={"sd_model_checkpoint": title}).raise_for_status()
    else:
        engine.select_checkpoint(title)
    measured.load_s = time.perf_counter() - started
    png = Path(spec.workdir) / f"{measured.variant}.png"

    def job(prompt: str, steps: int) -> float:
        clock.steps.pop(prompt, None)
        started = time.perf_counter()
        if over_http:
            body = {"prompt": prompt, "negative_prompt": "", "steps": steps, "cfg_scale": CFG, "width": spec.size,
                    "height": spec.size, "seed": SEED, "sampler_name": SAMPLER, "scheduler": SCHEDULE}
            response = client.post("/sdapi/v1/txt2img", json=body)
            response.raise_for_status()
            png.write_bytes(base64.b64decode(response.json()["images"][0]))  # what the client keeps
        else:
            request = GenerationRequest(prompt=prompt, steps=steps, cfg_scale=CFG, width=spec.size,
                                        height=spec.size, seed=SEED, sampler=SAMPLER, schedule=SCHEDULE)
            result = engine.generate(request)
            measured.png_bytes = result.images[0].path.stat().st_size  # Easel saved it, infotext and all
        return time.perf_counter() - started

    try:
        measured.warmup_s = job(WARMUP_PROMPT, spec.warmup_steps)
        started = time.perf_counter()
        wait_until_fast(engine)
        measured.until_fast_s = time.perf_counter() - started
        clock.reset()
        measured.end_to_end_s = job(PROMPT, spec.steps)
        stamps = clock.steps.get(PROMPT, [])
        measured.step_s, measured.steps_seen = step_seconds(stamps), len(stamps)
        measured.text_s = clock.text
        measured.decode_s = clock.decode if clock.decodes else None
        if over_http:
            measured.png_bytes = png.stat().st_size
        measured.dtype = str(easel_dtype()).removeprefix("torch.")  # the plan Easel makes with device "cpu"
        measured.threads = torch.get_num_threads()
        measured.note = engine.status().compiling
    finally:
        if client is not None:
            client.close()
            server.close()
        engine.close()
    return measured


def tokenizer_of(config: str):
    from app.models.loader import CONFIG_FOLDERS, tokenizer_for

    family = next(family for family, name in CONFIG_FOLDERS.items() if name == Path(config).name)
    return tokenizer_for(family)


def run_diffusers(spec: Spec, clock: PhaseClock, easel_precision: bool) -> Measured:
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    dtype = easel_dtype() if easel_precision else torch.float32
    measured = Measured("diffusers-easel-dtype" if easel_precision else "diffusers-fp32")
    started = time.perf_counter()
    if Path(spec.model).is_dir():
        pipe = StableDiffusionPipeline.from_pretrained(spec.model, torch_dtype=dtype, local_files_only=True,
                                                       safety_checker=None, requires_safety_checker=False)
    else:
        # The config folder stands in for the hub repo a user would name; it has no tokenizer files (the
        # real CLIP tokenizer ships once, in configs/tokenizer), so it is passed as a hub user gets it.
        pipe = StableDiffusionPipeline.from_single_file(spec.model, config=spec.config, torch_dtype=dtype,
                                                        local_files_only=True, tokenizer=tokenizer_of(spec.config))
    # DPM++ 2M Karras as diffusers' docs map A1111's name.
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++",
                                                             solver_order=2, use_karras_sigmas=True)
    pipe.set_progress_bar_config(disable=True)
    measured.load_s = time.perf_counter() - started
    png = Path(spec.workdir) / f"{measured.variant}.png"

    def job(prompt: str, steps: int) -> tuple[float, list]:
        stamps: list[tuple[int, float]] = []

        def on_step(pipeline, index, timestep, tensors):
            stamps.append((index + 1, time.perf_counter()))
            return {}

        started = time.perf_counter()
        image = pipe(prompt, num_inference_steps=steps, guidance_scale=CFG, width=spec.size, height=spec.size,
                     generator=torch.Generator("cpu").manual_seed(SEED), callback_on_step_end=on_step).images[0]
        image.save(png)
        return time.perf_counter() - started, stamps

    measured.warmup_s, _ = job(WARMUP_PROMPT, spec.warmup_steps)
    clock.reset()
    measured.end_to_end_s, stamps = job(PROMPT, spec.steps)
    measured.step_s, measured.steps_seen = step_seconds(stamps), len(stamps)
    measured.text_s = clock.text
    measured.decode_s = clock.decode if clock.decodes else None
    measured.png_bytes = png.stat().st_size
    measured.dtype = str(dtype).removeprefix("torch.")
    measured.threads = torch.get_num_threads()
    return measured


def run(spec: Spec, variant: str, clock: PhaseClock) -> Measured:
    try:
        if variant in ("easel", "easel-http"):
            measured = run_easel(spec, clock, over_http=variant == "easel-http")
        else:
            measured = run_diffusers(spec, clock, easel_precision=variant == "diffusers-easel-dtype")
    except Exception as error:  # one variant failing still leaves the others' figures
        traceback.print_exc()  # the child's stderr: bench/speed.py shows its last line
        measured = Measured(variant, error=f"{type(error).__name__}: {error}"[:300])
    measured.peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return measured


def main() -> None:
    import torch
    from diffusers.utils import logging as diffusers_logging

    from app.hardware import use_physical_cores
    from app.memory import one_heap_for_all_threads

    diffusers_logging.disable_progress_bar()
    spec = Spec(**json.loads(sys.argv[1]))
    if spec.threads:
        torch.set_num_threads(spec.threads)
    else:
        use_physical_cores()  # what launch.py does for Easel; the plain diffusers variants get the same
    one_heap_for_all_threads()  # as launch.py does (and harmless to the single-threaded plain variants)
    if spec.tiny:
        from tools.tiny_models import save_tiny_model

        save_tiny_model(Path(spec.model))  # kept when already there
    clock = PhaseClock()
    for variant in spec.variants:
        print("RESULT " + json.dumps(dataclasses.asdict(run(spec, variant, clock))), flush=True)


if __name__ == "__main__":
    main()
