"""Time and peak memory of upscaling 512 -> 2048 with a full-size SD x4 upscaler on the CPU.

Issue "4x upscaling", item 5: the time and peak memory of a 512x512 -> 2048x2048 upscale with the
full-size x4 upscaler on this CPU, and tiles/sec. It builds a full-size, randomly initialised
SD x4 upscaler from the real config folder configs/models/x4-upscaler (UNet with 7 input channels
and 1000 noise-level classes, 3-level VAE, 23-layer OpenCLIP-style text encoder; random weights
cost exactly what trained ones do), saves it as a float16 A1111-style single file and runs it
the way Easel does: a real registry, ModelManager and Engine on the CPU in float32,
`engine.upscale(UpscaleRequest(..., upscaler="SD x4: <title>"))` with the default tile (128 input
px -> 512 output px, overlap 32), noise level 20 and CFG 7 (so every UNet step runs a batch of 2).

    .venv/bin/python bench/x4_upscale.py [--workdir DIR] [--steps N] [--size PX] [--threads N]
                                         [--one-tile-only] [--time-limit S] [--rebuild]

Steps, in order: build the model (once, in a child process; kept in the workdir), hash it (A1111
short hash, cached on disk after the first run), load it (timed), then
1. one tile: a 128x128 crop of the picture -> 512x512, so the per-step cost is known even if the
   big run is cut short;
2. Lanczos 512 -> 2048 (PIL, and through the engine, which also writes the PNG);
3. the full run: 512x512 -> 2048x2048, 25 tiles, each tile's time printed as it finishes.
Each tile is timed by wrapping the upscale runner's `run_x4` (first step, later steps, decode), so the
figures split into per step and per tile. --steps defaults to 2: on 2 CPU cores a full-size x4
UNet step on a 128x128 latent (batch of 2) takes ~36 s and a tile's VAE decode ~50 s, so the
default 512 -> 2048 run takes ~55 min (twice that with other work on the machine);
--one-tile-only stops after step 2 (~2-4 min), and --time-limit S stops the full run after S
seconds with the engine's interrupt and extrapolates from the tiles done. The 20-step figures
are extrapolated from the measured per-step and per-tile costs, and labelled as such. Peak
memory is VmHWM (reset before each phase with clear_refs) plus sampled RssAnon/RssFile peaks;
"after" is VmRSS after gc and malloc_trim. Results go to stdout and <workdir>/results.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import app  # noqa: E402,F401  (offline switches before torch/diffusers)
from bench.swap_memory import GIB, PeakSampler, mem_available, proc_status, reset_peak, settled  # noqa: E402

CONFIG = "x4-upscaler"
FILE_NAME = "x4-upscaler-random-fp16.safetensors"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "easel-x4-bench"
EXTRAPOLATE_STEPS = 20


# ------------------------------------------------------------------------------------ building

def build_one(target: Path, seed: int) -> None:
    """(child process) The full-size x4 upscaler from configs/models/x4-upscaler, random init,
    as a float16 single file."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionUpscalePipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from app.models.families import Family
    from app.models.loader import CONFIG_FOLDERS, MODEL_CONFIGS_DIR, tokenizer_for
    from tools.ldm_convert import save_single_file

    assert CONFIG_FOLDERS[Family.X4_UPSCALER] == CONFIG
    folder = MODEL_CONFIGS_DIR / CONFIG
    index = json.loads((folder / "model_index.json").read_text())
    started = time.monotonic()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")).half().eval()
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")).half().eval()
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")).half().eval()
    schedulers = {
        name: getattr(diffusers, index[name][1]).from_pretrained(folder, subfolder=name)
        for name in ("scheduler", "low_res_scheduler")
    }
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer_for(Family.X4_UPSCALER), unet=unet,
        max_noise_level=index["max_noise_level"], **schedulers,
    )
    built = time.monotonic()
    partial = target.with_name(target.name + ".partial")
    save_single_file(pipe, partial)
    os.replace(partial, target)  # a file under the final name is always complete
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in
              (("UNet", unet), ("VAE", vae), ("text encoder", text_encoder))}
    print(
        f"  built {target.name}: {sum(counts.values()) / 1e6:.0f} M parameters "
        f"({', '.join(f'{k} {v / 1e6:.0f} M' for k, v in counts.items())}) in {built - started:.0f} s, "
        f"saved {target.stat().st_size / GIB:.2f} GiB in {time.monotonic() - built:.0f} s, "
        f"peak {proc_status()['VmHWM'] / GIB:.1f} GiB"
    , flush=True)


def ensure_model(checkpoints: Path, rebuild: bool) -> Path:
    checkpoints.mkdir(parents=True, exist_ok=True)
    target = checkpoints / FILE_NAME
    if target.is_file() and not rebuild:
        print(f"  {FILE_NAME}: already built ({target.stat().st_size / GIB:.2f} GiB), kept", flush=True)
        return target
    # A child process: the build's memory is gone before anything is measured.
    subprocess.run([sys.executable, __file__, "--build-one", str(target), "0"], check=True)
    return target


# ----------------------------------------------------------------------------------- measuring

@dataclasses.dataclass
class TileTiming:
    size: tuple[int, int]   # the tile as the model got it (input px, padded to a multiple of 8)
    first_step: float       # preprocessing, noise, the first UNet step (batch of 2 with CFG)
    later_steps: list[float]
    decode: float           # VAE decode and conversion to a picture
    end: float              # seconds from the job's start to this tile's end

    @property
    def total(self) -> float:
        return self.first_step + sum(self.later_steps) + self.decode


class TileClock:
    """Wraps the upscale runner's `run_x4` (one call per tile) and times each step through its callback."""

    def __init__(self):
        self.tiles: list[TileTiming] = []
        self.expected = 0
        self.started = 0.0

    def __enter__(self):
        import app.generation.upscaling as engine_module

        self._module = engine_module
        self._original = original = engine_module.run_x4

        def timed(pipe, image, request, embeddings, on_step):
            marks = [time.monotonic()]

            def step(index, timestep, latents):
                marks.append(time.monotonic())
                on_step(index, timestep, latents)

            result = original(pipe, image, request, embeddings, step)
            end = time.monotonic()
            steps = [b - a for a, b in zip(marks, marks[1:])]
            self.tiles.append(TileTiming(image.size, steps[0], steps[1:], end - marks[-1], end - self.started))
            tile = self.tiles[-1]
            print(
                f"    tile {len(self.tiles)}/{self.expected or '?'} {image.width}x{image.height}: "
                f"{tile.total:.1f} s (first step {tile.first_step:.1f} s, later steps "
                f"{' '.join(f'{s:.1f}' for s in tile.later_steps) or '-'} s, decode {tile.decode:.1f} s), "
                f"{end - self.started:.0f} s into the run", flush=True,
            )
            return result

        engine_module.run_x4 = timed
        return self

    def __exit__(self, *exc):
        self._module.run_x4 = self._original


@dataclasses.dataclass
class Run:
    name: str
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    seconds: float
    tiles: list[TileTiming]
    peak: int          # VmHWM during the run
    peak_anon: int     # sampled
    peak_file: int
    rss_before: int
    rss_after: int     # settled
    expected: int = 0  # tiles the picture needs
    complete: bool = True  # False: stopped by --time-limit after len(tiles) tiles


def picture(size: int):
    """A deterministic 'photo-like' test picture: gradients, shapes and a little noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([200 * x + 30, 160 * y + 40, 120 * (1 - x * y) + 60], axis=-1)
    base += rng.normal(0, 6, base.shape)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for i in range(12):
        left, top = rng.integers(0, size - size // 4, 2)
        extent = int(rng.integers(size // 16, size // 4))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if i % 2 else draw.rectangle)((left, top, left + extent, top + extent), fill=color)
    return image


def measure(args, checkpoints: Path) -> dict:
    import torch

    from app.engine import Engine, model_manager
    from app.errors import EaselError
    from app.generation.upscale import LANCZOS, SD_X4_PREFIX, X4_OVERLAP, X4_TILE, UpscaleRequest, lanczos
    from app.hardware import probe_hardware
    from app.images.store import OutputStore
    from app.images.tiles import tile_grid
    from app.models.families import Family
    from app.models.manager import model_bytes
    from app.settings import load_settings

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    settings = load_settings({
        "models_dir": str(workdir / "models"),
        "outputs_dir": str(workdir / "outputs"),
        "cache_dir": str(workdir / "cache"),
        "device": "cpu",
        "open_browser": False,
        "watermark": False,
    })
    # float32 on the CPU (a CPU with AVX-512 BF16/AMX would otherwise get bfloat16).
    facts = dataclasses.replace(probe_hardware(), cpu_bf16=False)
    manager = model_manager(settings, facts)
    engine = Engine(settings, manager, OutputStore(settings.outputs_dir))
    assert manager.plan.dtype == torch.float32, manager.plan
    entry = manager.registry.find(FILE_NAME)
    assert entry.problem is None and entry.family == Family.X4_UPSCALER, entry
    upscaler = SD_X4_PREFIX + entry.title
    names = [choice.name for choice in engine.upscalers()]
    assert upscaler in names, names
    out: dict = dict(title=entry.title, file_bytes=entry.path.stat().st_size, threads=torch.get_num_threads(),
                     estimate=model_bytes(entry, torch.float32), plan=manager.plan.description)

    # The A1111 hash, once per file (cached on disk), so the load below times loading only.
    started = time.monotonic()
    manager.registry.with_hash(entry)
    out["hash_s"] = time.monotonic() - started

    out["baseline"] = settled()
    reset_peak()
    with PeakSampler() as sampled:
        started = time.monotonic()
        with manager.use_x4(entry.title):
            pass  # loads it; it stays loaded for the jobs below
        out["load_s"] = time.monotonic() - started
    out["load_peak"] = (proc_status()["VmHWM"], sampled.anon, sampled.file)
    out["loaded"] = settled()
    print(f"  loaded in {out['load_s']:.1f} s, VmRSS {out['loaded']['VmRSS'] / GIB:.2f} GiB", flush=True)

    source = picture(args.size)

    def run(name: str, image, time_limit: float = 0) -> Run:
        expected = len(tile_grid(image.size, X4_TILE, X4_OVERLAP))
        print(f"  {name}: {image.width}x{image.height} -> {4 * image.width}x{4 * image.height}, "
              f"{expected} tile(s) of {X4_TILE} px (overlap {X4_OVERLAP}), {args.steps} steps"
              + (f", stopped after {time_limit:.0f} s" if time_limit else ""), flush=True)
        before = settled()
        reset_peak()
        # --time-limit: the engine's own interrupt, honoured at the next step (the tile in progress is dropped).
        timer = threading.Timer(time_limit, engine.interrupt) if time_limit else None
        complete = True
        with PeakSampler() as sampled, TileClock() as clock:
            clock.expected = expected
            clock.started = started = time.monotonic()
            if timer:
                timer.start()
            try:
                done = engine.upscale(UpscaleRequest(image=image, upscaler=upscaler, steps=args.steps, seed=1))
            except EaselError as error:
                if timer is None or "interrupted" not in str(error):
                    raise
                complete = False
            finally:
                if timer:
                    timer.cancel()
            seconds = time.monotonic() - started
        peak = proc_status()["VmHWM"]
        if complete:
            assert done.image.size == (4 * image.width, 4 * image.height), done.image.size
            assert len(clock.tiles) == expected, (len(clock.tiles), expected)
        elif not clock.tiles:
            raise SystemExit(f"--time-limit {time_limit:g} s stopped the run before its first tile was done")
        after = settled()
        print(f"  {name}: {seconds:.1f} s{'' if complete else f' (stopped after {len(clock.tiles)} tiles)'}, "
              f"peak {peak / GIB:.2f} GiB, VmRSS after {after['VmRSS'] / GIB:.2f} GiB", flush=True)
        return Run(name, image.size, (4 * image.width, 4 * image.height), seconds, clock.tiles, peak, sampled.anon,
                   sampled.file, before["VmRSS"], after["VmRSS"], expected, complete)

    out["one_tile"] = run("one tile", source.crop((0, 0, X4_TILE, X4_TILE)))

    target = (4 * args.size, 4 * args.size)
    times = []
    for _ in range(3):
        started = time.monotonic()
        lanczos(source, target)
        times.append(time.monotonic() - started)
    out["lanczos_s"] = statistics.median(times)
    started = time.monotonic()
    engine.upscale(UpscaleRequest(image=source, upscaler=LANCZOS, scale=4))
    out["lanczos_engine_s"] = time.monotonic() - started  # resize + the PNG write
    print(f"  Lanczos {args.size} -> {target[0]}: {out['lanczos_s'] * 1000:.0f} ms (PIL), "
          f"{out['lanczos_engine_s']:.2f} s through the engine (with the PNG)", flush=True)

    if not args.one_tile_only:
        out["full"] = run("full", source, args.time_limit)
    engine.close()
    out["closed"] = settled()
    return out


# ------------------------------------------------------------------------------------ reporting

def extrapolated_tile(tiles: list[TileTiming], steps: int) -> float:
    """One tile at `steps` steps from measured parts: first step + (steps-1) later steps + decode."""
    later = [s for t in tiles for s in t.later_steps]
    per_step = statistics.mean(later) if later else statistics.mean(t.first_step for t in tiles)
    return statistics.mean(t.first_step for t in tiles) + (steps - 1) * per_step + statistics.mean(
        t.decode for t in tiles)


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def overhead_s(run: Run, fallback: float) -> float:
    """Job time outside the tiles: prompt encoding, blending, the PNG write, the queue. A stopped
    run has no end, so the one-tile run's figure stands in for it."""
    return run.seconds - sum(t.total for t in run.tiles) if run.complete else fallback


def report(out: dict, args) -> str:
    gib = lambda n: f"{n / GIB:.2f}"  # noqa: E731
    lines = [
        f"- model: `{FILE_NAME}`, {out['file_bytes'] / GIB:.2f} GiB float16 file, "
        f"{out['estimate'] / GIB:.2f} GiB in float32 (manager's estimate); torch threads: {out['threads']}; "
        f"CFG 7 (UNet batch of 2), noise level 20",
        f"- A1111 hash (cached on disk after the first run): {out['hash_s']:.1f} s; load: {out['load_s']:.1f} s, "
        f"VmRSS {gib(out['baseline']['VmRSS'])} -> {gib(out['loaded']['VmRSS'])} GiB, load peak "
        f"{gib(out['load_peak'][0])} GiB (anon {gib(out['load_peak'][1])} / mapped file {gib(out['load_peak'][2])})",
        "",
        "| run | tiles | steps | total s | s/tile | first step s | later step s | decode s | tiles/s "
        "| peak GiB (anon / file) | VmRSS before -> after GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = [out["one_tile"]] + ([out["full"]] if "full" in out else [])
    one_overhead = overhead_s(out["one_tile"], 0.0)
    for r in runs:
        later = [s for t in r.tiles for s in t.later_steps]
        tiles = f"{len(r.tiles)}" if r.complete else f"{len(r.tiles)} of {r.expected} (stopped)"
        lines.append(
            f"| {r.name}: {r.input_size[0]}x{r.input_size[1]} -> {r.output_size[0]}x{r.output_size[1]} "
            f"| {tiles} | {args.steps} | {r.seconds:.1f} | {statistics.mean(t.total for t in r.tiles):.1f} "
            f"| {statistics.mean(t.first_step for t in r.tiles):.1f} "
            f"| {statistics.mean(later) if later else float('nan'):.1f} "
            f"| {statistics.mean(t.decode for t in r.tiles):.1f} | {len(r.tiles) / r.tiles[-1].end:.4f} "
            f"| {gib(r.peak)} ({gib(r.peak_anon)} / {gib(r.peak_file)}) | {gib(r.rss_before)} -> {gib(r.rss_after)} |"
        )
    lines += ["", "tiles/s: tiles done / seconds from the job's start to the last tile's end.", ""]
    projected = {}
    for r in runs:
        overhead = overhead_s(r, one_overhead)
        tile20 = extrapolated_tile(r.tiles, EXTRAPOLATE_STEPS)
        total20 = r.expected * tile20 + overhead
        projected[r.name] = (r.expected * statistics.mean(t.total for t in r.tiles) + overhead, total20)
        line = (
            f"- {r.name}: outside the tiles (prompt encoding, blending, PNG write) {overhead:.1f} s"
            f"{'' if r.complete else ' (from the one-tile run)'}; tile times "
            f"{min(t.total for t in r.tiles):.1f}-{max(t.total for t in r.tiles):.1f} s; "
        )
        if not r.complete:
            line += (f"**extrapolated** to all {r.expected} tiles at {args.steps} steps: "
                     f"{projected[r.name][0]:.0f} s ({duration(projected[r.name][0])}); ")
        line += (f"**extrapolated** to {EXTRAPOLATE_STEPS} steps (first step + {EXTRAPOLATE_STEPS - 1} x mean later "
                 f"step + decode per tile): {tile20:.0f} s/tile, {total20:.0f} s ({duration(total20)}) for "
                 f"{r.expected} tile(s), {r.expected / total20:.4f} tiles/s")
        lines.append(line)
    lanczos_line = (f"- Lanczos {args.size} -> {4 * args.size}: {out['lanczos_s'] * 1000:.0f} ms (PIL resize), "
                    f"{out['lanczos_engine_s']:.2f} s through the engine (resize + PNG write)")
    full = out.get("full")
    if full:
        measured = full.seconds if full.complete else projected[full.name][0]
        lanczos_line += (
            f"; SD x4 / Lanczos through the engine: {measured / out['lanczos_engine_s']:,.0f}x at {args.steps} steps"
            f"{'' if full.complete else ' (extrapolated)'}, "
            f"{projected[full.name][1] / out['lanczos_engine_s']:,.0f}x at {EXTRAPOLATE_STEPS} (extrapolated); "
            f"vs the PIL resize alone {measured / out['lanczos_s']:,.0f}x"
        )
    lines += [
        lanczos_line,
        f"- VmRSS after `engine.close()`: {gib(out['closed']['VmRSS'])} GiB",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR),
                        help=f"where the model, cache and outputs go (default {DEFAULT_WORKDIR})")
    parser.add_argument("--steps", type=int, default=2,
                        help="diffusion steps per tile (default 2; 20-step figures are extrapolated)")
    parser.add_argument("--size", type=int, default=512, help="input picture side in px (default 512 -> 2048)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--one-tile-only", action="store_true", help="only the one-tile run and Lanczos")
    parser.add_argument("--time-limit", type=float, default=0,
                        help="stop the full run after this many seconds (engine interrupt) and extrapolate "
                             "from the tiles done (default: no limit)")
    parser.add_argument("--rebuild", action="store_true", help="build the model file again")
    parser.add_argument("--build-one", nargs=2, metavar=("PATH", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_one:
        target, seed = args.build_one
        build_one(Path(target), int(seed))
        return

    command = shlex.join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else
                          sys.executable, "bench/x4_upscale.py", *sys.argv[1:]])
    header = [
        f"reproduce: cd {shlex.quote(str(REPO))} && {command}",
        f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB RAM, no GPU used (CPU, float32), "
        f"MemAvailable {mem_available() / GIB:.1f} GiB at start, load average {os.getloadavg()[0]:.1f} "
        "(other work on the machine makes the times noisy; the memory figures are not)",
    ]
    print("\n".join(header), flush=True)
    checkpoints = Path(args.workdir) / "models" / "Stable-diffusion"
    print("building (once):", flush=True)
    started = time.monotonic()
    ensure_model(checkpoints, args.rebuild)
    print(f"  ({time.monotonic() - started:.0f} s)", flush=True)
    print("measuring:", flush=True)
    out = measure(args, checkpoints)
    text = report(out, args)
    text += f"\n- load average at the end: {os.getloadavg()[0]:.1f} (1 min)"
    print()
    print(text)
    (Path(args.workdir) / "results.md").write_text("\n".join(header) + "\n\n" + text + "\n")


if __name__ == "__main__":
    main()
