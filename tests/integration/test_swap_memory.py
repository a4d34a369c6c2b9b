"""Model swaps give memory back (issue "Model manager", item 5; issue "One engine boundary", item 7):
load A, B, A again; the resident size after the third load is within 10% of the first, on the
float32 plan and on the bfloat16 plan a CPU with AVX-512 BF16/AMX gets, through the engine and
through the HTTP API (`POST /sdapi/v1/options`).

The resident size is read as a user sees it (VmRSS, nothing trimmed by the test): Easel must give
memory back by itself. The tiny test models (~1 MB) vanish in the noise of a ~1 GB Python process,
so this test builds two "medium" random models of the SD 1.x architecture (same classes as
tools/tiny_models.py, wider: ~55 M parameters, ~220 MB in float32 each), writes them as A1111-style
single files, and drives the real registry, manager, engine and server over them on the CPU. Run
with `pytest -s` to see the figures. The full-size figures are `bench/swap_memory.py`.
"""

import dataclasses
import time
import weakref
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from app.api.convert import encoded_png
from app.generation.requests import GenerationRequest
from app.kinds import JobKind
from app.memory import free_memory
from app.models import manager as manager_module
from app.models.families import Family
from app.models.loader import CONFIG_FOLDERS, tokenizer_for
from tests.conftest import CPU_ONLY, TINY_SD2_V, make_engine, make_settings, models_of
from tools.ldm_convert import save_single_file, vae_to_ldm

MODEL_A = "medium-a.safetensors"
MODEL_B = "medium-b.safetensors"
VAE = "medium-vae.safetensors"
MIB = 2**20
TIMEOUT = 60.0
BF16_CPU = dataclasses.replace(CPU_ONLY, cpu_bf16=True)  # what a CPU with AVX-512 BF16 or AMX gets: bfloat16


def medium_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64, 64, 64),  # four levels: latents are 1/8 of the image, as in SD
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=256,
        scaling_factor=0.18215,
    ).eval()


def medium_pipeline(seed: int) -> StableDiffusionPipeline:
    """An SD 1.x-architecture pipeline (CLIP text encoder with quick_gelu, epsilon PNDM), random,
    big enough to show in the resident size: UNet ~37 M, text encoder ~16 M parameters."""
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            max_position_embeddings=77,
            hidden_size=256,
            intermediate_size=1024,
            num_attention_heads=4,
            num_hidden_layers=4,
            projection_dim=256,
            hidden_act="quick_gelu",
        )
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(96, 192, 384),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=256,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()
    vae = medium_vae()
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer_for(Family.SD1),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_models(root: Path, file_dtype: torch.dtype) -> tuple[Path, Path]:
    """(models_dir, config_root): two medium single-file checkpoints with weights in `file_dtype`,
    and the config folder of their architecture under config_root/sd15/ (configs only, as
    save_tiny_configs writes them)."""
    models_dir, config_root = root / "models", root / "model-configs"
    for name, seed in ((MODEL_A, 10), (MODEL_B, 11)):
        pipe = medium_pipeline(seed)
        folder = config_root / CONFIG_FOLDERS[Family.SD1]
        if not folder.is_dir():
            pipe.save_pretrained(folder, safe_serialization=True)
            for weights in folder.rglob("*.safetensors"):
                weights.unlink()
        save_single_file(pipe.to(dtype=file_dtype), models_dir / "Stable-diffusion" / name)
        del pipe
    # A VAE of the same architecture in models/VAE/, for the "chosen VAE" case.
    (models_dir / "VAE").mkdir()
    torch.manual_seed(12)
    vae = medium_vae().to(dtype=file_dtype)
    save_file({k: v.contiguous() for k, v in vae_to_ldm(vae.state_dict()).items()}, models_dir / "VAE" / VAE)
    free_memory()
    return models_dir, config_root


def rss_bytes(engine) -> int:
    """This process's resident size (VmRSS) as a user sees it, once the engine is idle: nothing is
    collected or trimmed here, so what Easel does not give back by itself counts."""
    deadline = time.monotonic() + TIMEOUT
    while engine.status().running or engine.status().queued:
        assert time.monotonic() < deadline, "the engine did not go idle"
        time.sleep(0.01)
    time.sleep(0.2)  # the queue's idle trim runs just after the last job's result is out
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def weights_bytes(pipe) -> int:
    return sum(
        tensor.numel() * tensor.element_size()
        for module in (pipe.unet, pipe.vae, pipe.text_encoder)
        for tensor in [*module.parameters(), *module.buffers()]
    )


GREY = Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8))
SQUARE = np.zeros((64, 64), dtype=np.uint8)
SQUARE[16:48, 16:48] = 255


class ThroughEngine:
    """Swaps and jobs as the page makes them: Engine methods."""

    def __init__(self, engine):
        self.engine = engine

    def load(self, title: str) -> None:
        self.engine.select_checkpoint(title)

    def job(self, kind: JobKind = JobKind.TXT2IMG) -> None:
        """One 64x64, 2-step job: runs every UNet and VAE-decoder layer (touches all their weights);
        img2img and inpaint jobs run on the model's sibling pipelines (made on first use)."""
        fields = dict(width=64, height=64)
        if kind is not JobKind.TXT2IMG:
            fields = dict(width=None, height=None, strength=0.5, init_image=GREY)
        if kind is JobKind.INPAINT:
            fields["mask"] = Image.fromarray(SQUARE)
        self.engine.generate(GenerationRequest(prompt="a fox", steps=2, seed=1, **fields), TIMEOUT)

    def close(self) -> None:
        pass


class ThroughApi(ThroughEngine):
    """Swaps and jobs as an A1111 client makes them: `POST /sdapi/v1/options`, txt2img, img2img, over
    HTTP to the real server (the swap then runs in a server thread, the jobs in the queue's)."""

    def __init__(self, engine, settings):
        from server.compose import serve
        from ui.app import build_ui

        super().__init__(engine)
        self.server = serve(build_ui(engine), engine, settings)
        self.client = httpx.Client(base_url=self.server.url, timeout=TIMEOUT)

    def load(self, title: str) -> None:
        self.client.post("/sdapi/v1/options", json={"sd_model_checkpoint": title}).raise_for_status()

    def job(self, kind: JobKind = JobKind.TXT2IMG) -> None:
        body = {"prompt": "a fox", "steps": 2, "seed": 1, "width": 64, "height": 64, "sampler_name": "Euler"}
        if kind is JobKind.TXT2IMG:
            self.client.post("/sdapi/v1/txt2img", json=body).raise_for_status()
            return
        body.update(init_images=[encoded_png(GREY, None)], denoising_strength=0.5)
        if kind is JobKind.INPAINT:
            body["mask"] = encoded_png(Image.fromarray(SQUARE), None)
        self.client.post("/sdapi/v1/img2img", json=body).raise_for_status()

    def close(self) -> None:
        self.client.close()
        self.server.close()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """file dtype -> (models_dir, config_root), written once per dtype for the module."""
    written: dict[torch.dtype, tuple[Path, Path]] = {}

    def get(file_dtype: torch.dtype) -> tuple[Path, Path]:
        if file_dtype not in written:
            written[file_dtype] = write_models(tmp_path_factory.mktemp("swap-memory"), file_dtype)
        return written[file_dtype]

    return get


# float16 files (what most downloads are) are cast to float32 on load: the weights are the process's
# own memory, where a leak shows. float32 files load without a copy: safetensors maps the file and the
# weights are file pages, resident once touched (hence a job after every load before measuring).
# The manager loads the new model before releasing the old one when RAM allows (it does here); the
# other order (unload first, for machines short of RAM) is forced by patching that decision.
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmRSS from /proc (Linux)")
@pytest.mark.parametrize(
    "file_dtype, new_first, chosen_vae, facts, api",
    [
        (torch.float16, None, False, CPU_ONLY, False),
        (torch.float16, False, False, CPU_ONLY, False),
        (torch.float16, None, True, CPU_ONLY, False),
        (torch.float32, None, False, CPU_ONLY, False),
        (torch.float16, None, False, BF16_CPU, False),
        (torch.float16, None, False, BF16_CPU, True),
    ],
    ids=["fp16-file", "fp16-file-unload-first", "fp16-file-chosen-vae", "fp32-file", "bf16-plan", "bf16-plan-api"],
)
def test_swap_a_b_a_gives_memory_back(file_dtype, new_first, chosen_vae, facts, api, model_files, tmp_path,
                                      monkeypatch):
    decisions: list[bool] = []  # what the manager chose at each swap (new model first or not)
    decide = manager_module.load_new_first

    def recorded(available: int, needed: int) -> bool:
        decisions.append(decide(available, needed) if new_first is None else new_first)
        return decisions[-1]

    monkeypatch.setattr(manager_module, "load_new_first", recorded)
    models_dir, config_root = model_files(file_dtype)
    settings = make_settings(tmp_path, models_dir, model_configs_dir=str(config_root), port=0)
    engine = make_engine(settings, facts)
    manager = models_of(engine)
    plan_dtype = torch.bfloat16 if facts.cpu_bf16 else torch.float32
    user = ThroughApi(engine, settings) if api else ThroughEngine(engine)
    loaded_rss, job_rss = {}, {}
    try:
        if chosen_vae:
            manager.select_vae(VAE)  # each checkpoint then holds the chosen VAE and keeps its own aside
        before = rss_bytes(engine)

        # A, with everything a session creates: jobs of each kind, so the img2img and inpaint
        # siblings exist too.
        user.load(MODEL_A)
        loaded_rss["A"] = rss_bytes(engine)
        user.job()
        user.job(JobKind.IMG2IMG)
        user.job(JobKind.INPAINT)
        assert set(manager.loaded.siblings) == {JobKind.IMG2IMG, JobKind.INPAINT}
        assert manager.pipeline_for(JobKind.IMG2IMG) is manager.loaded.siblings[JobKind.IMG2IMG]
        assert (manager.loaded.own_vae is not None) == chosen_vae
        assert manager.loaded.base.unet.dtype == plan_dtype
        model = weights_bytes(manager.loaded.base)
        job_rss["A"] = rss_bytes(engine)

        old = manager.loaded
        watched = {
            "LoadedModel": weakref.ref(old),
            "base pipeline": weakref.ref(old.base),
            "img2img sibling": weakref.ref(old.siblings[JobKind.IMG2IMG]),
            "inpaint sibling": weakref.ref(old.siblings[JobKind.INPAINT]),
            "unet": weakref.ref(old.base.unet),
            "text encoder": weakref.ref(old.base.text_encoder),
            "vae": weakref.ref(old.base.vae),
            **({"checkpoint's own vae (set aside)": weakref.ref(old.own_vae)} if chosen_vae else {}),
        }
        del old

        user.load(MODEL_B)
        loaded_rss["B"] = rss_bytes(engine)
        alive = [name for name, ref in watched.items() if ref() is not None]  # nothing collected by the test
        user.job()
        job_rss["B"] = rss_bytes(engine)

        user.load(MODEL_A)
        loaded_rss["A again"] = rss_bytes(engine)
        user.job()
        job_rss["A again"] = rss_bytes(engine)

        manager.unload()
        unloaded = rss_bytes(engine)
    finally:
        user.close()
        engine.close()

    lines = [
        f"\nswap memory, medium SD 1.x, {str(file_dtype).removeprefix('torch.')} files loaded as "
        f"{str(plan_dtype).removeprefix('torch.')}{' through the HTTP API' if api else ''}, "
        f"{'unload first (forced)' if new_first is False else 'order as the manager decides'}, swaps "
        f"{' '.join('new-first' if d else 'unload-first' for d in decisions)}"
        f"{', chosen VAE' if chosen_vae else ''} "
        f"({model / MIB:.0f} MiB of weights each); VmRSS in MiB:",
        f"  before any load  {before / MIB:6.0f}",
        *(f"  {name:<8} loaded  {loaded_rss[name] / MIB:6.0f}   after a job {job_rss[name] / MIB:6.0f}" for name in job_rss),
        f"  unloaded         {unloaded / MIB:6.0f}",
        f"  third/first load (after a job): {job_rss['A again'] / job_rss['A']:.3f}; "
        f"unload gave back {(job_rss['A again'] - unloaded) / MIB:.0f} MiB",
    ]
    print("\n".join(lines))
    assert not alive, f"still referenced after the swap to B: {', '.join(alive)}"
    assert job_rss["A"] - before > model / 2, "the model does not show in the resident size: the test measures nothing"
    assert job_rss["B"] < job_rss["A"] + 1.5 * model, "loading B kept A's memory (two models resident)"
    assert job_rss["A again"] <= 1.10 * job_rss["A"], "A, B, A again grew the resident size by more than 10%"
    assert loaded_rss["A again"] <= 1.10 * job_rss["A"], "A loaded again (before its job) is already >10% up"
    assert job_rss["A again"] - unloaded >= model / 2, "unload() did not give the model's memory back"


@pytest.mark.parametrize("new_first", [True, False], ids=["new-first", "unload-first"])
def test_the_old_model_is_already_freed_when_the_manager_gives_memory_back(engine, new_first, monkeypatch):
    """The cause of the growth the RSS test above measures: a trim while anything still holds the old
    model gives nothing back, and nothing trims after it is freed. Checked directly, on tiny models."""
    monkeypatch.setattr(manager_module, "load_new_first", lambda available, needed: new_first)
    old_unet = weakref.ref(models_of(engine).loaded.base.unet)
    alive_at_trim: list[bool] = []
    real_free_memory = manager_module.free_memory

    def watched_free_memory():
        alive_at_trim.append(old_unet() is not None)
        real_free_memory()

    monkeypatch.setattr(manager_module, "free_memory", watched_free_memory)
    engine.select_checkpoint(TINY_SD2_V)
    assert alive_at_trim == [False], "the manager trimmed the heap while the old model was still held"
    assert models_of(engine).active.title == TINY_SD2_V
