"""Measured speed on this machine: where every estimate before and during a job comes from.

`SpeedMeter` keeps, for the active checkpoint on its device plan (a swap or a step down the memory
ladder starts afresh), three figures that scale to any size, batch and CFG:
- seconds per UNet image-pixel: a step runs the UNet on batch x 2 latents with CFG (1 without,
  at CFG 1 or less, as diffusers skips the unconditional pass), so its time is that many times
  the pixels times this figure;
- VAE decode seconds per pixel (and TAESD's, fast mode's decoder, once a fast job used it);
- seconds a batch spends outside both (text encoding, sampler set-up, saving).
A short calibration when a model loads (`calibrate`: one UNet call, one small decode, one text
encoding as the overhead's first figure) seeds them;
every job's own measured steps and decodes then replace them, as an average weighted to recent jobs.
The clock is injected so that a test can run a job on a fake one.
"""

import threading
import time
from dataclasses import dataclass
from typing import Callable, Hashable

import torch

from app.generation.hires import second_pass, second_pass_steps
from app.generation.requests import GenerationRequest

Clock = Callable[[], float]

RECENT_WEIGHT = 0.5       # each new measurement's share of the running average
CALIBRATION_DECODE = 256  # px: the calibration's decode is small (a full one takes seconds on a CPU)
TEXT_TOKENS = 77


def unet_passes(cfg_scale: float) -> int:
    """UNet evaluations per latent per step: diffusers runs the unconditional pass only above CFG 1."""
    return 2 if cfg_scale > 1 else 1


def steps_run(request: GenerationRequest) -> int:
    """The denoising steps the pipeline runs: img2img runs `steps * strength` of them."""
    return second_pass_steps(request) if request.is_img2img else request.steps


@dataclass(frozen=True)
class Pass:
    """One denoising pass of a batch: `steps` at `width` x `height` on `latents` UNet inputs per step."""

    steps: int
    width: int
    height: int
    latents: int


@dataclass(frozen=True)
class BatchEstimate:
    steps_seconds: float    # all the passes' denoising steps
    decode_seconds: float
    overhead_seconds: float

    @property
    def total(self) -> float:
        return self.steps_seconds + self.decode_seconds + self.overhead_seconds


def batch_seconds_left(batch: BatchEstimate, progress) -> float:
    """Seconds left of the batch running now (`progress`: its JobProgress): its own measured step rate
    once it has one, else the estimate's share of the steps left."""
    if not progress.steps:
        return batch.total
    left = max(0, progress.steps - progress.step)
    steps = left * progress.step_seconds if progress.step_seconds else batch.steps_seconds * left / progress.steps
    return steps + batch.decode_seconds


def passes_of(request: GenerationRequest) -> list[Pass]:
    """The denoising passes one batch of `request` runs (hires fix: two)."""
    latents = request.batch_size * unet_passes(request.cfg_scale)
    first = Pass(steps_run(request), request.width, request.height, latents)
    if not request.enable_hr:
        return [first]
    second = second_pass(request)
    return [first, Pass(second_pass_steps(second), second.width, second.height,
                        request.batch_size * unet_passes(second.cfg_scale))]


def speed_key(entry, plan) -> tuple:
    """What the figures hold for: a checkpoint (a ModelEntry) on a device plan (a DevicePlan)."""
    return entry.path, entry.family, plan.device, plan.dtype, plan.memory_mode


class SpeedMeter:
    """The measured speed of the active checkpoint on its device plan. Thread-safe: the worker
    writes, the page and the API read."""

    def __init__(self, clock: Clock = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._key: Hashable = None
        self._unet: float | None = None     # seconds per UNet image-pixel
        self._decode: float | None = None   # seconds per decoded pixel
        self._tiny_decode: float | None = None  # the same with TAESD (fast mode), once measured
        self._overhead: float | None = None  # seconds per batch outside the steps and the decode
        self._provisional: set[str] = set()  # figures from the calibration, no job's yet

    def follow(self, key: Hashable) -> bool:
        """Measure `key` (`speed_key`: checkpoint and device plan) from now on: a new key starts afresh,
        the old figures no longer hold. Returns whether it still needs a calibration."""
        with self._lock:
            if key != self._key:
                self._key, self._unet, self._decode, self._overhead = key, None, None, None
                self._tiny_decode = None
                self._provisional = set()
            return self._unet is None or self._decode is None

    # --- measurements ---------------------------------------------------------------------

    def learn_step(self, seconds: float, width: int, height: int, latents: int, calibration: bool = False) -> None:
        self._learn("_unet", seconds / (width * height * max(1, latents)), calibration)

    def learn_decode(self, seconds: float, width: int, height: int, images: int, calibration: bool = False,
                     tiny: bool = False) -> None:
        """`tiny`: TAESD decoded (fast mode), not the VAE."""
        self._learn("_tiny_decode" if tiny else "_decode", seconds / (width * height * max(1, images)), calibration)

    def learn_overhead(self, seconds: float, calibration: bool = False) -> None:
        self._learn("_overhead", max(0.0, seconds), calibration)

    def _learn(self, name: str, value: float, calibration: bool) -> None:
        with self._lock:
            previous = getattr(self, name)
            # A calibration is one cold sample: a job's first real figure replaces it outright.
            fresh = previous is None or calibration or name in self._provisional
            setattr(self, name, value if fresh else (1 - RECENT_WEIGHT) * previous + RECENT_WEIGHT * value)
            (self._provisional.add if calibration else self._provisional.discard)(name)

    # --- estimates ------------------------------------------------------------------------

    def batch(self, request: GenerationRequest) -> BatchEstimate | None:
        """One batch of `request`; None before anything was measured."""
        with self._lock:  # one consistent set of figures: the page may ask while a swap starts afresh
            unet, decode, tiny_decode, overhead = self._unet, self._decode, self._tiny_decode, self._overhead
        if unet is None or decode is None:
            return None
        passes = passes_of(request)
        steps = sum(p.steps * unet * p.width * p.height * p.latents for p in passes)
        last = passes[-1]
        # Fast mode decodes with TAESD (as the runner does), once a fast job measured it; else the VAE's figure.
        if request.easel_fast and not request.enable_hr and tiny_decode is not None:
            decode = tiny_decode
        return BatchEstimate(steps, decode * last.width * last.height * request.batch_size, overhead or 0.0)

    def job_seconds(self, request: GenerationRequest) -> float | None:
        """The whole job: every batch."""
        batch = self.batch(request)
        return None if batch is None else batch.total * request.batch_count


class StepTimer:
    """Times one pass's steps as they happen: the pipeline calls back after each one."""

    def __init__(self, clock: Clock, started: float | None = None):
        self._clock = clock
        self.last = clock() if started is None else started
        self._intervals: list[float] = []
        self._first = True

    def stepped(self) -> float | None:
        """Call after each step; returns the pass's measured seconds per step so far (None: none yet).
        The first step also carries the pass's set-up (latents, timesteps), so it is left out."""
        now = self._clock()
        if not self._first:
            self._intervals.append(now - self.last)
        self._first = False
        self.last = now
        return self.seconds_per_step

    @property
    def seconds_per_step(self) -> float | None:
        return sum(self._intervals) / len(self._intervals) if self._intervals else None


def calibrate(meter: SpeedMeter, unet, vae, size: int, device, text_encoder=None) -> None:
    """One UNet call at the family's size with a CFG batch of 2, one small VAE decode and one text
    encoding of a prompt pair, timed: the estimates' figures until a job measures its own."""
    generator = torch.Generator("cpu").manual_seed(0)
    latent = size // 8
    channels = unet.config.in_channels
    sample = torch.randn((2, channels, latent, latent), generator=generator).to(device, unet.dtype)
    width = unet.config.cross_attention_dim
    text = torch.zeros((2, TEXT_TOKENS, width if isinstance(width, int) else width[0]), device=device, dtype=unet.dtype)
    small = CALIBRATION_DECODE // 8
    latents = torch.randn((1, vae.config.latent_channels, small, small), generator=generator).to(device, vae.dtype)
    with torch.no_grad():
        started = meter.clock()
        unet(sample, torch.tensor(999, device=device), encoder_hidden_states=text, return_dict=False)
        meter.learn_step(meter.clock() - started, size, size, 2, calibration=True)
        started = meter.clock()
        vae.decode(latents, return_dict=False)
        meter.learn_decode(meter.clock() - started, CALIBRATION_DECODE, CALIBRATION_DECODE, 1, calibration=True)
        if text_encoder is not None:
            started = meter.clock()
            text_encoder(torch.zeros((2, TEXT_TOKENS), dtype=torch.long, device=device))
            meter.learn_overhead(meter.clock() - started, calibration=True)


def duration(seconds: float) -> str:
    """A duration as a person says it: "55 s", "4 min"."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def speed_sentence(meter: SpeedMeter, size: int) -> str:
    """The header's line: what one default image takes here, measured."""
    seconds = meter.job_seconds(GenerationRequest(width=size, height=size))
    if seconds is None:
        return "Speed on this machine: measured when a checkpoint loads."
    return f"On this machine: about {duration(seconds)} per {size}x{size} image at 20 steps (measured)."
