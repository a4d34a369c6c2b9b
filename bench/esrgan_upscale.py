"""Time and peak memory of upscaling 512 -> 2048 with a full-size Real-ESRGAN x4plus on the CPU.

Issue "4x upscaling", item 5, for the fast upscalers: a full-size, randomly initialised RRDBNet
with RealESRGAN_x4plus's shape (64 features, 23 blocks, growth 32: 16.7 M parameters; random
weights cost exactly what trained ones do) is saved as `RealESRGAN_x4plus-random.pth` (BasicSR's
`params_ema` layout) in `<workdir>/models/ESRGAN/`, detected by spandrel through Easel's registry,
and run the way Easel does: `engine.upscale(UpscaleRequest(image, upscaler=<name>, scale=4))` with
the default tiles (256 input px, overlap 16: 9 tiles for 512 px), CPU float32. Lanczos runs
through the same engine in the same process, side by side.

    .venv/bin/python bench/esrgan_upscale.py [--workdir DIR] [--size PX] [--threads N] [--tile PX]

Prints the command, a table and the ratios, and writes them to <workdir>/results.md.
"""

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import app  # noqa: E402,F401  (offline switches before torch)
from bench.swap_memory import GIB, PeakSampler, proc_status, reset_peak, settled  # noqa: E402

NAME = "RealESRGAN_x4plus-random"


def picture(size: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, size)
    rgb = np.stack([np.tile(x, (size, 1)), np.tile(x[:, None], (1, size)), np.full((size, size), 128.0)], -1)
    return Image.fromarray((rgb + rng.normal(0, 20, rgb.shape)).clip(0, 255).astype(np.uint8))


def timed_run(engine, request) -> dict:
    reset_peak()
    with PeakSampler() as sampled:
        started = time.perf_counter()
        done = engine.upscale(request)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "size": done.image.size, "peak": proc_status()["VmHWM"], "anon": sampled.anon}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "easel-esrgan-bench")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile", type=int, default=None, help="input px a tile (default: the engine's)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from app.engine import Engine, model_manager
    from app.generation.upscale import NETWORK_OVERLAP, NETWORK_TILE, UpscaleRequest
    from app.hardware import HardwareFacts
    from app.images.store import OutputStore
    from app.images.tiles import tile_grid
    from app.settings import load_settings
    from tools.tiny_models import tiny_esrgan_state_dict

    folder = args.workdir / "models" / "ESRGAN"
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{NAME}.pth"
    if not weights.exists():
        torch.save({"params_ema": tiny_esrgan_state_dict(4, features=64, blocks=23, seed=0)}, weights)
    settings = load_settings({
        "models_dir": str(args.workdir / "models"), "outputs_dir": str(args.workdir / "outputs"),
        "cache_dir": str(args.workdir / "cache"), "device": "cpu",
    })
    baseline = settled()
    manager = model_manager(settings, HardwareFacts(cpu_threads=args.threads))
    engine = Engine(settings, manager, OutputStore(settings.outputs_dir))
    tile = args.tile or NETWORK_TILE
    source = picture(args.size)
    started = time.perf_counter()
    with manager.use_network(NAME) as network:
        parameters = sum(p.numel() for p in network.model.parameters())
    load_s = time.perf_counter() - started
    loaded = settled()

    one = timed_run(engine, UpscaleRequest(image=source.crop((0, 0, tile, tile)), upscaler=NAME, tile=tile))
    full = timed_run(engine, UpscaleRequest(image=source, upscaler=NAME, tile=tile))
    lanczos = timed_run(engine, UpscaleRequest(image=source, upscaler="Lanczos"))
    tiles = len(tile_grid(source.size, tile, NETWORK_OVERLAP))
    after = settled()
    engine.close()

    gib = lambda value: f"{value / GIB:.2f}"  # noqa: E731
    lines = [
        f"`.venv/bin/python bench/esrgan_upscale.py --size {args.size} --threads {args.threads}"
        + (f" --tile {args.tile}" if args.tile else "") + "`",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} thread(s), CPU float32; RRDBNet {parameters:,} parameters; "
        f"load {load_s:.2f} s, VmRSS {gib(baseline['VmRSS'])} -> {gib(loaded['VmRSS'])} GiB.",
        "",
        "| run | output | tiles | seconds | tiles/s | peak VmHWM GiB (sampled anon) |",
        "|---|---|---|---|---|---|",
        f"| one tile {tile} -> {tile * 4} | {one['size'][0]}x{one['size'][1]} | 1 | {one['seconds']:.1f} | "
        f"{1 / one['seconds']:.3f} | {gib(one['peak'])} ({gib(one['anon'])}) |",
        f"| **{args.size} -> {args.size * 4}** | {full['size'][0]}x{full['size'][1]} | {tiles} | "
        f"**{full['seconds']:.1f}** | {tiles / full['seconds']:.3f} | **{gib(full['peak'])}** ({gib(full['anon'])}) |",
        f"| Lanczos {args.size} -> {args.size * 4} (engine, PNG write included) | "
        f"{lanczos['size'][0]}x{lanczos['size'][1]} | - | {lanczos['seconds']:.2f} | - | {gib(lanczos['peak'])} |",
        "",
        f"- Real-ESRGAN / Lanczos through the engine: **{full['seconds'] / lanczos['seconds']:.0f}x**",
        f"- VmRSS after the runs {gib(after['VmRSS'])} GiB (the network stays loaded for the next job).",
    ]
    text = "\n".join(lines)
    print(text)
    (args.workdir / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
