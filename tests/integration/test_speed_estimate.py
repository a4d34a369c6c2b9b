"""The honest estimate: measured on this machine (a calibration, then the jobs' own steps), checked
against a tiny model whose UNet and VAE advance a fake clock; and nothing done twice per batch or
per step (text encodings once per job, previews only while someone watches)."""

import threading

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.routes import install_api
from app.auth import Access, LoginLimiter
from app.engine import Engine, model_manager
from app.generation.requests import GenerationRequest
from app.images.store import OutputStore
from tests.conftest import CPU_ONLY, TINY_SD1, make_settings

TIMEOUT = 120
UNET_SECONDS = 2e-5    # fake seconds per UNet latent-pixel (one latent through the UNet once)
DECODE_SECONDS = 1e-4  # fake seconds per decoded latent-pixel


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Costs:
    """The fake speed of the tiny model: what each UNet call and each decode adds to the clock."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.unet = UNET_SECONDS
        self.decode = DECODE_SECONDS
        self.unet_calls = 0
        self.text_calls = 0
        self.hold_at: int | None = None  # block the UNet call with this number until `release`
        self.held = threading.Event()
        self.release = threading.Event()


def timed(models, costs: Costs) -> None:
    """Wrap the loaded model's UNet, VAE decode and text encoder (shared by every sibling pipeline)."""
    base = models.loaded.base
    unet_forward, decode, text_forward = base.unet.forward, base.vae.decode, base.text_encoder.forward

    def unet(sample, *args, **kwargs):
        costs.unet_calls += 1
        if costs.unet_calls == costs.hold_at:
            costs.held.set()
            costs.release.wait(TIMEOUT)
        costs.clock.advance(costs.unet * sample.shape[0] * sample.shape[2] * sample.shape[3])
        return unet_forward(sample, *args, **kwargs)

    def vae_decode(latents, *args, **kwargs):
        costs.clock.advance(costs.decode * latents.shape[0] * latents.shape[2] * latents.shape[3])
        return decode(latents, *args, **kwargs)

    def text(*args, **kwargs):
        costs.text_calls += 1
        return text_forward(*args, **kwargs)

    base.unet.forward, base.vae.decode, base.text_encoder.forward = unet, vae_decode, text


@pytest.fixture
def timed_engine(tiny_models_dir, tiny_configs_dir, tmp_path):
    settings = make_settings(tmp_path, tiny_models_dir, model_configs_dir=str(tiny_configs_dir), preview_every=1)
    clock = FakeClock()
    models = model_manager(settings, CPU_ONLY)
    engine = Engine(settings, models, OutputStore(settings.outputs_dir), clock=clock)
    models.load(TINY_SD1)
    costs = Costs(clock)
    timed(models, costs)
    engine.select_checkpoint(TINY_SD1)  # already loaded: only the calibration runs, on the fake clock
    yield engine, costs
    costs.release.set()
    engine.close()


def request(**fields) -> GenerationRequest:
    values = dict(prompt="a red fox in the snow", steps=20, width=128, height=128, seed=1, save=False)
    values.update(fields)
    return GenerationRequest(**values)


def elapsed(engine: Engine, clock: FakeClock, job_request: GenerationRequest) -> float:
    started = clock()
    engine.generate(job_request, TIMEOUT)
    return clock() - started


def test_the_estimate_comes_from_measured_speed_and_follows_it(timed_engine):
    engine, costs = timed_engine
    twenty = request()
    before = engine.estimate_seconds(twenty)  # from the calibration alone: no job has run
    assert before is not None
    took = elapsed(engine, costs.clock, twenty)
    assert took == pytest.approx(20 * 2 * 16 * 16 * UNET_SECONDS + 16 * 16 * DECODE_SECONDS)
    assert before == pytest.approx(took, rel=0.3)
    # Another size, a batch of 2, CFG 1 (one UNet pass per step), and 8 steps: the figures scale.
    other = request(width=192, height=128, batch_size=2, cfg_scale=1.0, steps=8, seed=2)
    assert engine.estimate_seconds(other) == pytest.approx(elapsed(engine, costs.clock, other), rel=0.3)
    assert engine.estimate_seconds(request(batch_count=3)) == pytest.approx(3 * took, rel=0.3)
    # The machine gets slower (another program, a hot CPU): the next job measures it, the estimate follows.
    costs.unet *= 3
    slower = elapsed(engine, costs.clock, twenty)
    assert engine.estimate_seconds(twenty) > 1.5 * before  # weighted to recent jobs: one moves it
    elapsed(engine, costs.clock, twenty)
    assert engine.estimate_seconds(twenty) == pytest.approx(slower, rel=0.3)  # a second one settles it


def test_the_header_and_the_progress_eta_come_from_the_measured_speed(timed_engine):
    from ui.header import model_status
    from ui.runner import progress_line

    engine, costs = timed_engine
    default = engine.estimate_seconds(GenerationRequest(width=512, height=512))
    assert f"On this machine: about {default:.0f} s per 512x512 image at 20 steps (measured)." in model_status(engine)
    assert "minute" not in engine.status().device

    app = FastAPI()
    install_api(app, engine, Access(page=None, api=None), LoginLimiter())
    client = TestClient(app)
    costs.hold_at = costs.unet_calls + 5  # the fifth step's UNet call waits: four steps are done
    job = engine.submit(request(), owner="guest@testclient")
    assert costs.held.wait(TIMEOUT)
    step = 16 * 16 * 2 * UNET_SECONDS
    left = 16 * step + 16 * 16 * DECODE_SECONDS  # from the measured step rate, not elapsed / fraction
    assert job.progress.step == 4
    assert engine.seconds_left(job) == pytest.approx(left, rel=0.3)
    progress = client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()
    assert progress["eta_relative"] == pytest.approx(engine.seconds_left(job))
    assert progress["state"]["sampling_step"] == 4
    assert not job.watched  # a client that skips the picture does not ask for previews
    client.get("/sdapi/v1/progress")
    assert job.watched
    assert f"about {engine.seconds_left(job):.0f} s left" in progress_line(engine, job)
    # A job waiting behind it has an ETA before any job of its kind finished: the running one's rest.
    waiting = engine.submit(request(seed=9), owner="someone else")
    assert engine.eta_seconds(waiting) == pytest.approx(engine.seconds_left(job))
    assert engine.seconds_left(waiting) == pytest.approx(engine.seconds_left(job) + engine.estimate_seconds(request()))
    costs.release.set()
    job.wait(TIMEOUT)
    waiting.wait(TIMEOUT)


def test_a_model_swap_starts_the_measurements_afresh(timed_engine):
    engine, _ = timed_engine
    before = engine.estimate_seconds(request())
    assert before > 0
    # Calibrated again: this model is not wrapped, so its calls take no fake time at all.
    engine.select_checkpoint("tiny-sd21-v")
    assert engine.estimate_seconds(request()) == pytest.approx(0.0, abs=before / 100)
    assert "per 768x768 image at 20 steps (measured)" in engine.status().speed


def test_previews_are_made_only_while_someone_watches(timed_engine, monkeypatch):
    from ui.runner import followed

    engine, _ = timed_engine
    made = []
    import app.generation.runner as runner

    original = runner.latent_preview
    monkeypatch.setattr(runner, "latent_preview", lambda *args: made.append(1) or original(*args))
    alone = engine.submit(request(steps=4))
    alone.wait(TIMEOUT)
    assert made == [] and alone.progress.preview is None  # nobody watched: no preview work at all
    followed_job = engine.submit(request(steps=4, seed=3))
    for _ in followed(followed_job):  # the page's poll
        pass
    assert len(made) >= 1 and followed_job.progress.preview is not None


def test_a_batch_count_encodes_the_prompts_once(timed_engine):
    engine, costs = timed_engine
    before = costs.text_calls  # the calibration's own
    engine.generate(request(steps=2, batch_count=1), TIMEOUT)
    once = costs.text_calls - before
    assert once >= 1
    result = engine.generate(request(steps=2, batch_count=3, seed=5), TIMEOUT)
    assert len(result.images) == 3
    assert costs.text_calls - before - once == once  # three batches, one encoding of the same prompts
