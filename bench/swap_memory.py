"""Model-swap memory with full-size models: load SD 1.5 (A), SD 2.1-768 (B), A again, B again, unload.

Issues "Model manager" (item 5) and "One engine boundary" (item 7): a swap releases everything the
old model held, so the resident size after the third load is within 2% of the first (the tests
allow 10%), on every plan Easel picks on a CPU and whichever way the swap is asked for:

- plans: float32 (CPUs without bfloat16 hardware, or `--precision full`) and bfloat16 (CPUs with
  AVX-512 BF16 or AMX, where Easel picks it by itself);
- paths: the Engine (what the page calls) and the HTTP API (`POST /sdapi/v1/options`, then
  `/sdapi/v1/txt2img`, to the real server in this process).

The models are full-size, randomly initialised SD 1.5 and SD 2.1-768 (the real architectures from
configs/models/sd15 and configs/models/sd21; random weights load exactly like trained ones), saved as
float16 A1111-style single files (~2.0 and ~2.4 GiB), built once, each in a child process, and kept
in the workdir. Each plan and path runs in a fresh child process.

    .venv/bin/python bench/swap_memory.py [--plan fp32|bf16] [--path engine|api] [--quick]
                                          [--workdir DIR] [--threads N] [--no-job] [--unload-first]

Each step: load (timed), then (unless --no-job) one 256x256, 1-step txt2img job, plus an img2img and
an inpaint job on A's first load so its sibling pipelines exist; then the resident size (VmRSS) as a
user sees it: once the engine is idle, with nothing collected or trimmed by the bench. The first
two loads are cold (the files are evicted from the OS page cache first with posix_fadvise), the
next two warm; then A and B once more with their files evicted again (`--quick`: A, B, A only).
The A1111 hashes are computed before the loads and timed on their own line.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# The ML libraries' own progress bars and notices, as launch.py silences them.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import app  # noqa: E402,F401  (offline switches before torch/diffusers)

GIB = 2**30
MIB = 2**20
MODELS = {  # key: (config folder, file name); A and B of the "load A, B, A again"
    "A": ("sd15", "sd15-random-fp16.safetensors"),
    "B": ("sd21", "sd21-768-random-fp16.safetensors"),
}
LABELS = {"sd15": "SD 1.5", "sd21": "SD 2.1-768"}
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "easel-swap-bench"


# ------------------------------------------------------------------------------ process facts

def proc_status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, VmHWM (bytes) of this process."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def reset_peak() -> None:
    """Start VmHWM again from the current resident size (Linux: `echo 5 > clear_refs`)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class PeakSampler:
    """Samples RssAnon and RssFile every 20 ms in a thread: the peak of each, which VmHWM (their
    peak sum) does not tell apart. File pages are the mapped checkpoint: clean, reclaimable."""

    def __init__(self):
        import threading

        self._stop = threading.Event()
        self.anon = self.file = self.total = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            status = proc_status()
            self.anon = max(self.anon, status["RssAnon"])
            self.file = max(self.file, status["RssFile"])
            self.total = max(self.total, status["VmRSS"])
            if self._stop.wait(0.02):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def settled() -> dict[str, int]:
    from app.memory import free_memory

    gc.collect()
    free_memory()
    return proc_status()


def resident(engine) -> dict[str, int]:
    """The process's memory as a user sees it, once the engine is idle: nothing collected or trimmed
    here, so what Easel does not give back by itself counts."""
    while engine.status().running or engine.status().queued:
        time.sleep(0.01)
    time.sleep(0.3)  # the queue's idle trim runs just after the last job's result is out
    return proc_status()


def evict(path: Path) -> None:
    """Drop the file's pages from the OS page cache (no root needed for clean pages)."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def cached_fraction(path: Path) -> float | None:
    """How much of the file is in the page cache, from util-linux `fincore`; None without it."""
    if not shutil.which("fincore"):
        return None
    result = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], capture_output=True, text=True
    )
    try:
        return int(result.stdout.split()[0]) / path.stat().st_size
    except (ValueError, IndexError):
        return None


# ------------------------------------------------------------------------------------ building

def build_one(config_name: str, target: Path, seed: int) -> None:
    """(child process) A full-size random model of the config folder's architecture, as a float16
    single file: UNet, VAE and text encoder from their configs, default (random) init."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from app.models.families import Family
    from app.models.loader import CONFIG_FOLDERS, MODEL_CONFIGS_DIR, tokenizer_for
    from tools.ldm_convert import save_single_file

    folder = MODEL_CONFIGS_DIR / config_name
    family = next(f for f, name in CONFIG_FOLDERS.items() if name == config_name)
    assert family in (Family.SD1, Family.SD2_V), family
    started = time.monotonic()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")).half().eval()
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")).half().eval()
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")).half().eval()
    scheduler_class = json.loads((folder / "model_index.json").read_text())["scheduler"][1]
    scheduler = getattr(diffusers, scheduler_class).from_pretrained(folder, subfolder="scheduler")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer_for(family), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    built = time.monotonic()
    partial = target.with_name(target.name + ".partial")
    save_single_file(pipe, partial)
    os.replace(partial, target)  # a file under the final name is always complete
    params = sum(p.numel() for m in (unet, vae, text_encoder) for p in m.parameters())
    print(
        f"  built {target.name}: {params / 1e6:.0f} M parameters in {built - started:.0f} s, "
        f"saved {target.stat().st_size / GIB:.2f} GiB in {time.monotonic() - built:.0f} s, "
        f"peak {proc_status()['VmHWM'] / GIB:.1f} GiB"
    , flush=True)


def ensure_models(checkpoints: Path, rebuild: bool) -> None:
    checkpoints.mkdir(parents=True, exist_ok=True)
    for seed, (config_name, file_name) in enumerate(MODELS.values()):
        target = checkpoints / file_name
        if target.is_file() and not rebuild:
            print(f"  {file_name}: already built ({target.stat().st_size / GIB:.2f} GiB), kept", flush=True)
            continue
        # A child process: the build's memory is gone before anything is measured.
        subprocess.run([sys.executable, __file__, "--build-one", config_name, str(target), str(seed)], check=True)


# ----------------------------------------------------------------------------------- measuring

@dataclasses.dataclass
class Step:
    name: str                 # "load A", ...
    model: str
    cached_before: float | None
    order: str                # new-first / unload-first / first load
    load_s: float
    job_s: float | None
    rss: int                  # VmRSS after the load (and job), settled
    anon: int
    file: int
    peak: int                 # VmHWM during the step
    peak_anon: int            # sampled peaks during the load itself
    peak_file: int
    before_rss: int           # VmRSS and RssAnon before the step (the old model, if any)
    before_anon: int
    available_before: int     # MemAvailable before the step


class EngineUser:
    """Swaps and jobs through Engine methods, as the page makes them. `picture` and `mask` are what the
    img2img and inpaint jobs start from."""

    def __init__(self, engine, picture, mask):
        self.engine, self.picture, self.mask = engine, picture, mask

    def load(self, title: str) -> None:
        self.engine.select_checkpoint(title)

    def job(self, kind: str = "txt2img") -> None:
        from app.generation.requests import GenerationRequest

        fields = dict(width=256, height=256)
        if kind != "txt2img":
            fields = dict(width=None, height=None, strength=0.5, init_image=self.picture)
        if kind == "inpaint":
            fields["mask"] = self.mask
        self.engine.generate(GenerationRequest(prompt="a fox", steps=1, seed=1, **fields), 1200)

    def close(self) -> None:
        pass


class ApiUser(EngineUser):
    """Swaps and jobs as an A1111 client makes them, over HTTP to the real server in this process."""

    def __init__(self, engine, picture, mask, settings):
        import httpx

        from server.compose import serve
        from ui.app import build_ui

        super().__init__(engine, picture, mask)
        self.server = serve(build_ui(engine), engine, settings)
        self.client = httpx.Client(base_url=self.server.url, timeout=1200)

    def load(self, title: str) -> None:
        self.client.post("/sdapi/v1/options", json={"sd_model_checkpoint": title}).raise_for_status()

    def job(self, kind: str = "txt2img") -> None:
        from app.api.convert import encoded_png

        body = {"prompt": "a fox", "steps": 1, "seed": 1, "width": 256, "height": 256,
                "sampler_name": "DPM++ 2M", "scheduler": "Karras"}
        if kind == "txt2img":
            self.client.post("/sdapi/v1/txt2img", json=body).raise_for_status()
            return
        body.update(init_images=[encoded_png(self.picture, None)], denoising_strength=0.5)
        if kind == "inpaint":
            body["mask"] = encoded_png(self.mask, None)
        self.client.post("/sdapi/v1/img2img", json=body).raise_for_status()

    def close(self) -> None:
        self.client.close()
        self.server.close()


def measure(args, checkpoints: Path) -> tuple[list[Step], dict]:
    import numpy as np
    import torch
    from diffusers.utils import logging as diffusers_logging
    from PIL import Image

    from app.engine import Engine, model_manager
    from app.hardware import probe_hardware
    from app.images.store import OutputStore
    from app.kinds import JobKind
    from app.models import manager as manager_module
    from app.models.file_facts import file_sha256
    from app.models.manager import _SWAP_HEADROOM, model_bytes
    from app.settings import load_settings

    diffusers_logging.disable_progress_bar()  # as launch.py: the bench prints its own lines
    if args.threads:
        torch.set_num_threads(args.threads)
    grey = Image.fromarray(np.full((256, 256, 3), 128, dtype=np.uint8))
    square = np.zeros((256, 256), dtype=np.uint8)
    square[64:192, 64:192] = 255
    mask = Image.fromarray(square)
    workdir = Path(args.workdir)
    settings = load_settings({
        "models_dir": str(workdir / "models"),
        "outputs_dir": str(workdir / "outputs"),
        "cache_dir": str(workdir / "cache"),
        "device": "cpu",
        "open_browser": False,
        "watermark": False,
        "port": 0,
    })
    # The plan asked for, whatever this CPU has (bfloat16 runs, only slower, on a CPU without it).
    facts = dataclasses.replace(probe_hardware(), cpu_bf16=args.plan == "bf16")
    manager = model_manager(settings, facts)
    engine = Engine(settings, manager, OutputStore(settings.outputs_dir))
    dtype = torch.bfloat16 if args.plan == "bf16" else torch.float32
    assert manager.plan.dtype == dtype, manager.plan
    paths = {key: checkpoints / file_name for key, (_, file_name) in MODELS.items()}
    titles = {key: manager.registry.find(path.name).title for key, path in paths.items()}
    for key, title in titles.items():
        entry = manager.registry.find(title)
        assert entry.problem is None and entry.family, entry

    # The A1111 hash, once per file (cached on disk like in the app), so the loads below time loading.
    hash_s = {}
    for key, title in titles.items():
        evict(paths[key])
        started = time.monotonic()
        file_sha256(paths[key])  # what the registry does once per file (timed here even when cached)
        hash_s[key] = time.monotonic() - started
        manager.registry.with_hash(manager.registry.find(title))

    decisions: list[str] = []
    decide = manager_module.load_new_first

    def recorded(available: int, needed: int) -> bool:
        choice = False if args.unload_first else decide(available, needed)
        decisions.append("new-first" if choice else "unload-first")
        return choice

    manager_module.load_new_first = recorded  # records the manager's own choice (forced by --unload-first)

    for path in paths.values():
        evict(path)
    user = ApiUser(engine, grey, mask, settings) if args.path == "api" else EngineUser(engine, grey, mask)
    baseline = resident(engine)
    steps: list[Step] = []
    plan = [  # (step, model, evict its file from the page cache first)
        ("load A", "A", False), ("load B", "B", False), ("load A again", "A", False),
    ]
    if not args.quick:
        plan += [
            ("load B again", "B", False),
            # Cold again, with every code path already run once: tells disk time from first-call costs.
            ("load A, file evicted", "A", True), ("load B, file evicted", "B", True),
        ]
    for number, (name, key, evict_first) in enumerate(plan):
        if evict_first:
            evict(paths[key])
        cached = cached_fraction(paths[key])
        available = mem_available()
        before_decisions = len(decisions)
        before = proc_status()
        reset_peak()
        with PeakSampler() as sampled:
            started = time.monotonic()
            user.load(titles[key])
            load_s = time.monotonic() - started
        job_s = None
        if not args.no_job:
            started = time.monotonic()
            user.job()
            if number == 0:  # the img2img and inpaint siblings exist too, as after a session on A
                user.job("img2img")
                user.job("inpaint")
                assert set(manager.loaded.siblings) == {JobKind.IMG2IMG, JobKind.INPAINT}
            job_s = time.monotonic() - started
        peak = proc_status()["VmHWM"]
        status = resident(engine)
        order = decisions[-1] if len(decisions) > before_decisions else "first load"
        steps.append(Step(
            name, key, cached, order, load_s, job_s,
            status["VmRSS"], status["RssAnon"], status["RssFile"], peak, sampled.anon, sampled.file,
            before["VmRSS"], before["RssAnon"],
            available,
        ))
        print(f"  {steps[-1].name}: {load_s:.1f} s, VmRSS {status['VmRSS'] / GIB:.2f} GiB", flush=True)

    weights = {key: model_bytes(manager.registry.find(titles[key]), dtype) for key in titles}
    reset_peak()
    manager.unload()
    unloaded = resident(engine)
    user.close()
    engine.close()
    overall_peak = max(s.peak for s in steps)
    return steps, dict(
        baseline=baseline, unloaded=unloaded, hash_s=hash_s, weights=weights, peak=overall_peak,
        threads=torch.get_num_threads(), headroom=_SWAP_HEADROOM, plan=args.plan, path=args.path,
    )


# ------------------------------------------------------------------------------------ reporting

PLAN_WORDS = {"fp32": "float32", "bf16": "bfloat16"}
PATH_WORDS = {"engine": "through the Engine", "api": "through the HTTP API (/sdapi/v1/options)"}


def report(steps: list[Step], extra: dict) -> str:
    gib = lambda n: f"{n / GIB:6.2f}"  # noqa: E731
    lines = [
        f"#### {PLAN_WORDS[extra['plan']]} plan, {PATH_WORDS[extra['path']]}",
        "",
        "| step | model | file in page cache | swap order | load s | job s | VmRSS GiB | anon GiB | file GiB "
        "| peak GiB | load peak anon / file GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| start (engine, no model) | - | - | - | - | - | {gib(extra['baseline']['VmRSS'])} "
        f"| {gib(extra['baseline']['RssAnon'])} | {gib(extra['baseline']['RssFile'])} | - | - |",
    ]
    for s in steps:
        cached = "-" if s.cached_before is None else f"{s.cached_before:.0%}"
        job = "-" if s.job_s is None else f"{s.job_s:.1f}"
        lines.append(
            f"| {s.name} | {LABELS[MODELS[s.model][0]]} | {cached} | {s.order} | {s.load_s:.1f} | {job} "
            f"| {gib(s.rss)} | {gib(s.anon)} | {gib(s.file)} | {gib(s.peak)} | {gib(s.peak_anon)} / {gib(s.peak_file)} |"
        )
    u = extra["unloaded"]
    lines.append(f"| unload | - | - | - | - | - | {gib(u['VmRSS'])} | {gib(u['RssAnon'])} | {gib(u['RssFile'])} | - | - |")
    first, b, third = steps[:3]
    lines += [
        "",
        f"- RSS(third load, A again) / RSS(first load, A): **{third.rss / first.rss:.3f}** (target <= 1.02); "
        f"RssAnon {third.anon / first.anon:.3f}",
    ]
    if len(steps) == 6:
        fourth, a_cold, b_cold = steps[3:]
        lines += [
            f"- RSS(fourth load, B again) / RSS(second load, B): {fourth.rss / b.rss:.3f}",
            f"- swap time A->B: {b.load_s:.1f} s (first, cold), {fourth.load_s:.1f} s (warm), "
            f"{b_cold.load_s:.1f} s (file evicted); B->A: {third.load_s:.1f} s (warm), {a_cold.load_s:.1f} s (file evicted)",
        ]
    lines += [
        f"- model in memory ({PLAN_WORDS[extra['plan']]}), from the manager's estimate: "
        f"A {extra['weights']['A'] / GIB:.2f} GiB, B {extra['weights']['B'] / GIB:.2f} GiB; measured: "
        f"A {(first.rss - extra['baseline']['VmRSS']) / GIB:.2f} GiB over the start, "
        f"B {(b.rss - extra['baseline']['VmRSS']) / GIB:.2f} GiB",
        f"- unload gave back {(steps[-1].rss - u['VmRSS']) / GIB:.2f} GiB "
        f"(VmRSS {u['VmRSS'] / GIB:.2f} GiB after, start was {extra['baseline']['VmRSS'] / GIB:.2f} GiB)",
        f"- A1111 hash (sha256) of a file the first time it is loaded, read cold; cached on disk after: "
        f"A {extra['hash_s']['A']:.1f} s, B {extra['hash_s']['B']:.1f} s (not in the load times above)",
        f"- peak VmHWM of the run: {extra['peak'] / GIB:.2f} GiB; torch threads: {extra['threads']}",
    ]
    return "\n".join(lines)


def run_one(args, checkpoints: Path) -> dict:
    """One plan and path, measured in this process; the report and the ratio as JSON-able values."""
    print(f"measuring: {PLAN_WORDS[args.plan]} plan, {PATH_WORDS[args.path]}", flush=True)
    steps, extra = measure(args, checkpoints)
    return {"plan": args.plan, "path": args.path, "ratio": steps[2].rss / steps[0].rss, "report": report(steps, extra)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR),
                        help=f"where the models, cache and outputs go (default {DEFAULT_WORKDIR})")
    parser.add_argument("--plan", choices=("fp32", "bf16"), help="one plan only (default: both)")
    parser.add_argument("--path", choices=("engine", "api"), help="one path only (default: both)")
    parser.add_argument("--quick", action="store_true", help="A, B, A only (no warm B again, no evicted loads)")
    parser.add_argument("--rebuild", action="store_true", help="build the model files again")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-job", action="store_true", help="only load; no job after each load")
    parser.add_argument("--unload-first", action="store_true",
                        help="always release the old model before loading (default: as the manager decides)")
    parser.add_argument("--build-one", nargs=3, metavar=("CONFIG", "PATH", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--json-out", help=argparse.SUPPRESS)  # a child's result, for the parent
    args = parser.parse_args()
    if args.build_one:
        config_name, target, seed = args.build_one
        build_one(config_name, Path(target), int(seed))
        return
    checkpoints = Path(args.workdir) / "models" / "Stable-diffusion"
    if args.json_out:  # a child: one plan and path
        Path(args.json_out).write_text(json.dumps(run_one(args, checkpoints)))
        return

    command = shlex.join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else
                          sys.executable, "bench/swap_memory.py", *sys.argv[1:]])
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    flags = Path("/proc/cpuinfo").read_text()
    bf16 = ", ".join(flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags) or "no bfloat16 hardware"
    header = [
        f"reproduce: cd {shlex.quote(str(REPO))} && {command}",
        f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; CPU: {cpu} ({bf16}), {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB RAM; torch {torch.__version__}; "
        f"MemAvailable {mem_available() / GIB:.1f} GiB at start, load average {os.getloadavg()[0]:.1f}",
    ]
    print("\n".join(header), flush=True)
    print("building (once):", flush=True)
    started = time.monotonic()
    ensure_models(checkpoints, args.rebuild)
    print(f"  ({time.monotonic() - started:.0f} s)", flush=True)
    results = []
    for plan in [args.plan] if args.plan else ["fp32", "bf16"]:
        for path in [args.path] if args.path else ["engine", "api"]:
            out = Path(args.workdir) / f"result-{plan}-{path}.json"
            child = [sys.executable, __file__, "--workdir", args.workdir, "--plan", plan, "--path", path,
                     "--json-out", str(out), *(["--quick"] if args.quick else []),
                     *(["--threads", str(args.threads)] if args.threads else []),
                     *(["--no-job"] if args.no_job else []), *(["--unload-first"] if args.unload_first else [])]
            subprocess.run(child, check=True)  # a fresh process per run: no run inherits another's heap
            results.append(json.loads(out.read_text()))
    summary = ["| plan | path | RSS third/first (target <= 1.02) |", "|---|---|---|"]
    summary += [f"| {PLAN_WORDS[r['plan']]} | {PATH_WORDS[r['path']]} | **{r['ratio']:.3f}** |" for r in results]
    text = "\n".join([*header, "", *summary, "", *(r["report"] + "\n" for r in results)])
    text += f"\n- load average at the end: {os.getloadavg()[0]:.1f} (1 min)"
    print()
    print(text)
    (Path(args.workdir) / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
