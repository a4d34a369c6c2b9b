"""Fast mode's speed on this machine: a 512x512 SD 1.5 picture with `easel_fast` (LCM-LoRA, LCM, 4 steps,
CFG 1), decoded by TAESD and, for comparison, by the full VAE; through Easel's Engine as the page uses it.

Issue 12, deliverable 3 (target: <= 8 s on the issue's 2-core machine). The checkpoint is bench/speed.py's
full-size random-init SD 1.5 single file (built once into `.cache/bench/`); the LCM-LoRA is random too,
in latent-consistency's layout and size (kohya keys, rank 64 over the layers its training script targets:
67.5 M parameters), and TAESD is a random AutoencoderTiny of the real architecture. Random weights run
exactly as fast as trained ones. One untimed warm-up job adds the LoRA to the weights (once per model).

    .venv/bin/python bench/fast_mode.py            # 3 timed pictures per decoder (~2 min)
    .venv/bin/python bench/fast_mode.py --quick    # 1 each
    .venv/bin/python bench/fast_mode.py --tiny     # tiny random models: a smoke test in seconds (writes nowhere)

Writes its own section of bench/RESULTS.md (--results FILE to change; other sections are kept).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import app  # noqa: E402,F401  (offline switches before torch/diffusers)
from bench.results import publish  # noqa: E402
from bench.speed import cpu_facts  # noqa: E402
from bench.speed_variants import step_seconds, wait_until_fast  # noqa: E402

SECTION = "## Fast mode (`bench/fast_mode.py`)"
PROMPT = "a lighthouse on a cliff at dusk, oil painting, detailed"
SEED = 1234
# The layers diffusers' LCM-LoRA training script (train_lcm_distill_lora_sd_wds.py) puts a LoRA on.
LCM_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
               "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


def lcm_lora_tensors(unet, rank: int = 64, seed: int = 0) -> dict:
    """A random LoRA over `unet`'s LCM target layers, kohya keys as the released LCM-LoRA files write them."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in unet.named_modules():
        if not name.endswith(LCM_TARGETS) or not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        prefix = "lora_unet_" + name.replace(".", "_")
        weight = module.weight
        if weight.dim() == 4:
            down = (rank, weight.shape[1], *weight.shape[2:])
            up = (weight.shape[0], rank, 1, 1)
        else:
            down, up = (rank, weight.shape[1]), (weight.shape[0], rank)
        tensors[f"{prefix}.lora_down.weight"] = (torch.randn(down, generator=generator) * 0.01).half()
        tensors[f"{prefix}.lora_up.weight"] = (torch.randn(up, generator=generator) * 0.01).half()
        tensors[f"{prefix}.alpha"] = torch.tensor(float(rank)).half()
    return tensors


def prepare(models: Path, tiny: bool, rebuild: bool) -> None:
    """The checkpoint, the LCM-LoRA and TAESD under `models` (built once; the checkpoint by bench/speed.py's builder)."""
    import torch
    from safetensors.torch import save_file

    from app.models.families import Family
    from tools.tiny_models import save_tiny_model, save_tiny_taesd, tiny_pipeline

    checkpoint = models / "Stable-diffusion" / ("tiny-sd15" if tiny else "sd15-random-fp16.safetensors")
    if tiny and not checkpoint.exists():
        save_tiny_model(checkpoint, Family.SD1)
    elif not tiny and (rebuild or not checkpoint.is_file()):
        print(f"building {checkpoint} (once) ...", flush=True)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(REPO / "bench" / "swap_memory.py"), "--build-one", "sd15",
                        str(checkpoint), "0"], check=True)
    lora = models / "Lora" / "lcm-lora-sdv1-5.safetensors"
    if rebuild or not lora.is_file():
        lora.parent.mkdir(parents=True, exist_ok=True)
        if tiny:
            unet = tiny_pipeline(Family.SD1).unet
        else:
            from diffusers import UNet2DConditionModel

            with torch.device("meta"):  # only the shapes are needed
                unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(
                    REPO / "configs" / "models" / "sd15", subfolder="unet"))
        save_file(lcm_lora_tensors(unet, rank=4 if tiny else 64), str(lora))
    taesd = models / "taesd"
    if rebuild or not (taesd / "config.json").is_file():
        if tiny:
            save_tiny_taesd(taesd)
        else:
            from diffusers import AutoencoderTiny

            torch.manual_seed(0)
            AutoencoderTiny().save_pretrained(taesd, safe_serialization=True)  # TAESD's own architecture


class DecodeClock:
    """Seconds in the decoders, whoever calls them (both classes' `decode` wrapped once)."""

    def __init__(self):
        from diffusers import AutoencoderKL, AutoencoderTiny

        self.seconds = 0.0
        for cls in (AutoencoderKL, AutoencoderTiny):
            cls.decode = self._timed(cls.decode)

    def _timed(self, method):
        def timed(module, *args, **kwargs):
            started = time.perf_counter()
            try:
                return method(module, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
        return timed


def measure(models: Path, work: Path, cache: Path, size: int, repeats: int) -> dict[str, list[dict]]:
    from app.engine import create_engine
    from app.generation.requests import GenerationRequest
    from app.jobs import Job
    from app.settings import load_settings

    stamps: list[tuple[int, float]] = []
    report = Job.report

    def stamped(job, **changes):
        report(job, **changes)
        if changes.get("step"):
            stamps.append((changes["step"], time.perf_counter()))

    Job.report = stamped
    clock = DecodeClock()
    settings = load_settings({"models_dir": str(models), "outputs_dir": str(work / "outputs"),
                              "cache_dir": str(cache),  # kept: the checkpoint is hashed once "styles_file": str(work / "styles.csv"),
                              "preferences_file": str(work / "preferences.json"), "device": "cpu",
                              "open_browser": False})
    engine = create_engine(settings)  # Easel sets its own threads, as for a user
    engine.select_checkpoint(engine.generating_checkpoints()[0].title)
    request = dict(prompt=PROMPT, width=size, height=size, seed=SEED, easel_fast=True)
    engine.generate(GenerationRequest(**{**request, "prompt": "warm-up: a red bicycle"}), 3600)  # adds the LoRA
    wait_until_fast(engine)
    taesd, hidden = models / "taesd", models / "taesd-hidden"
    results: dict[str, list[dict]] = {"TAESD": [], "full VAE": []}
    try:
        for _ in range(repeats):
            for decoder in results:  # alternating, so drift of the machine hits both alike
                if decoder == "full VAE":
                    taesd.rename(hidden)  # Easel drops TAESD when its folder is gone
                stamps.clear()
                clock.seconds = 0.0
                started = time.perf_counter()
                done = engine.generate(GenerationRequest(**request), 3600)
                seconds = time.perf_counter() - started
                if hidden.exists():
                    hidden.rename(taesd)
                assert done.images and done.images[0].path.is_file(), "no picture saved"
                results[decoder].append(dict(end_to_end=seconds, step=step_seconds(stamps), decode=clock.seconds,
                                             info=done.images[0].parameters))
    finally:
        if hidden.exists():
            hidden.rename(taesd)
        engine.close()
    return results


def report(results: dict[str, list[dict]], size: int, args, started: float, load: float) -> str:
    import torch

    def median(decoder: str, key: str) -> str:
        values = [run[key] for run in results[decoder] if run[key] is not None]
        return f"{statistics.median(values):.2f}" if values else "-"

    info = results["TAESD"][0]["info"].splitlines()[-1]
    command = "bench/fast_mode.py" + (" --quick" if args.quick else "") + (" --tiny" if args.tiny else "")
    lines = [
        SECTION, "",
        f"- command: `.venv/bin/python {command}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
        f"{(time.time() - started) / 60:.1f} min; load average {load:.1f} at the start",
        f"- machine: {cpu_facts()}; torch {torch.__version__}, {torch.get_num_threads()} threads; {platform.python_version()}",
        f"- model: {'tiny random SD 1.x' if args.tiny else 'SD 1.5 full size, random init'}, {size}x{size}, "
        f"LCM-LoRA {'rank 4 (tiny)' if args.tiny else 'rank 64, as the released file'}; "
        f"the PNG says: `{info}`",
        f"- median of {len(results['TAESD'])} picture(s) per decoder, alternating, after one warm-up job; the UNet "
        "runs eager (a compiled graph is used only on the checkpoint's own weights, and the LoRA is patched in)", "",
        "| decoder | end to end (s, to a saved PNG) | s per step (UNet) | decode (s) |",
        "|---|---|---|---|",
    ]
    for decoder in results:
        lines.append(f"| {decoder} | {median(decoder, 'end_to_end')} | {median(decoder, 'step')} | {median(decoder, 'decode')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="one picture per decoder")
    mode.add_argument("--tiny", action="store_true", help="tiny random models (a smoke test)")
    parser.add_argument("--repeats", type=int, help="pictures per decoder (default 3, quick 1)")
    parser.add_argument("--results", type=Path, help="results file (default bench/RESULTS.md; none with --tiny)")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "bench", help="built models")
    parser.add_argument("--rebuild", action="store_true", help="build the LoRA and TAESD (and checkpoint) again")
    args = parser.parse_args()
    started, load = time.time(), os.getloadavg()[0]
    models = args.cache / ("tiny-fast-models" if args.tiny else "fast-models")
    (models / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    shared = args.cache / "models" / "Stable-diffusion" / "sd15-random-fp16.safetensors"
    own = models / "Stable-diffusion" / shared.name
    if not args.tiny and shared.is_file() and not own.exists():
        own.symlink_to(shared.resolve())  # bench/speed.py's checkpoint, built once for both
    prepare(models, args.tiny, args.rebuild)
    size = 64 if args.tiny else 512
    with tempfile.TemporaryDirectory(prefix="easel-fast-", dir=args.cache) as work:
        results = measure(models, Path(work), args.cache / "easel-cache", size,
                          args.repeats or (1 if args.quick or args.tiny else 3))
    publish(report(results, size, args, started, load), args.results or (None if args.tiny else REPO / "bench" / "RESULTS.md"))


if __name__ == "__main__":
    main()
