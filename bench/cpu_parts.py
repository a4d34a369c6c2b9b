"""What each CPU speed measure buys, part by part, on full-size random-init SD 1.5 modules.

Issue 12 asks to record each change's measured effect. This bench times, in one process per dtype,
side by side on the same modules:
- one UNet call with a CFG batch (2 x 4 x 64 x 64 latents, 77 tokens: one 512x512 step), and
- one VAE decode of a 512x512 image,
as diffusers leaves them (contiguous), with Easel's channels_last, and channels_last + torch.compile
with inductor freezing (Easel compiles the UNet only; the VAE decoder's figure says what compiling it
would add). The compile's first call is reported apart (with a cold or warm on-disk cache, as found).

    .venv/bin/python bench/cpu_parts.py [--dtypes bfloat16,float32] [--repeats 3] [--threads N] [--no-compile]

Writes its section of bench/RESULTS.md (--results FILE to change it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SECTION = "## CPU speed measures, part by part (bench/cpu_parts.py)"
CONFIGS = REPO / "configs" / "models" / "sd15"


def timed(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(dtype_name: str, repeats: int, compile_too: bool) -> dict:
    """In this process: every part's seconds for one dtype."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS / "unet")).eval().to(dtype)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIGS / "vae")).eval().to(dtype)
    sample, text = torch.randn(2, 4, 64, 64, dtype=dtype), torch.randn(2, 77, 768, dtype=dtype)
    latents = torch.randn(1, 4, 64, 64, dtype=dtype)
    step = lambda: unet(sample, torch.tensor(500), encoder_hidden_states=text, return_dict=False)  # noqa: E731
    decode = lambda: vae.decode(latents, return_dict=False)  # noqa: E731
    out: dict[str, float] = {}
    with torch.no_grad():
        step(), decode()  # first calls allocate; not timed
        out["unet eager"], out["vae eager"] = timed(step, repeats), timed(decode, repeats)
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
        step(), decode()
        out["unet channels_last"], out["vae channels_last"] = timed(step, repeats), timed(decode, repeats)
        if compile_too:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(REPO / ".cache" / "torch-compile"))
            graph = torch.compile(unet._call_impl, dynamic=False, options={"freezing": True})
            started = time.perf_counter()
            graph(sample, torch.tensor(500), encoder_hidden_states=text, return_dict=False)
            out["unet compile (first call)"] = time.perf_counter() - started
            out["unet channels_last + compile"] = timed(
                lambda: graph(sample, torch.tensor(500), encoder_hidden_states=text, return_dict=False), repeats)
            decoder = torch.compile(vae.decoder, dynamic=False, options={"freezing": True})
            scaled = vae.post_quant_conv(latents)
            started = time.perf_counter()
            decoder(scaled)
            out["vae compile (first call)"] = time.perf_counter() - started
            out["vae channels_last + compile"] = timed(lambda: decoder(scaled), repeats)
    return out


def table(results: dict[str, dict]) -> list[str]:
    lines = ["| part | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    parts = list(next(iter(results.values())))
    for part in parts:
        cells = []
        for dtype, figures in results.items():
            value = figures.get(part)
            base = figures.get(part.split(" ")[0] + " eager")
            ratio = f" ({base / value:.2f}x)" if value and base and "first call" not in part and "eager" not in part else ""
            cells.append(f"{value:.2f} s{ratio}" if value is not None else "–")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: one per physical core, as Easel)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    from app.hardware import use_physical_cores

    threads = args.threads or use_physical_cores()
    torch.set_num_threads(threads)
    if args.child:
        print(json.dumps(measure(args.child, args.repeats, not args.no_compile)))
        return
    from bench.results import publish
    from bench.speed import cpu_facts

    started = time.time()
    results = {}
    for dtype in args.dtypes.split(","):
        command = [sys.executable, __file__, "--child", dtype, "--repeats", str(args.repeats), "--threads", str(threads)]
        output = subprocess.run(command + (["--no-compile"] if args.no_compile else []), capture_output=True,
                                text=True, check=True).stdout
        results[dtype] = json.loads(output.strip().splitlines()[-1])
        print(dtype, results[dtype], flush=True)
    command = ".venv/bin/python bench/cpu_parts.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    section = "\n".join([
        SECTION, "", f"`{command}`", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}; {threads} torch threads; "
        f"load average {os.getloadavg()[0]:.2f} at the end",
        f"- CPU: {cpu_facts()}",
        f"- torch {version('torch')}, diffusers {version('diffusers')}",
        "- median of the repeats; x: speed-up over the same part eager in the same dtype; UNet = one CFG step "
        "at 512x512 (batch 2), VAE = one 512x512 decode",
        "", *table(results), ""])
    publish(section, args.results)


if __name__ == "__main__":
    main()
