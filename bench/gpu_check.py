"""Easel's GPU check (issue 12, item 5): speed and the memory ladder through Easel's own Engine.

Run it with bench/gpu_check.sh on a machine whose Python has torch (CUDA) and transformers only; that
script installs the other wheels with no network. In one run (< 8 minutes on an H100/H200):

1. builds full-size, randomly initialised SD 1.5 and SD 2.1-768 single files (float16, A1111 layout)
   from the shipped configs (configs/models/sd15, sd21), on the GPU, once per work folder;
2. speed, through an Engine made as `app.engine.create_engine` makes it (watermark and live previews
   off): SD 1.5 512x512 and (after the ladder) SD 2.1 768x768, batch 1, CFG 7, DPM++ 2M Karras. With
   Easel's torch_compile on (its default), one job asks for the shape and the check waits for the
   background compile (Engine.wait_until_compiled, at most --compile-wait-s). After a warm-up job,
   jobs of 50 and of 10 steps alternate; it/s = 40 / (time of 50 - time of 10), so the prompt
   encoding, the VAE decode and the PNG save (the same in both) drop out. Also the seconds of a
   whole 50-step image, saved. PASS/FAIL against 110 it/s for SD 1.5;
3. checks: the UNet's attention is SDPA (diffusers' AttnProcessor2_0), the weights are float16, the
   VAE stayed in float16 through those jobs and goes to float32 only after a decode gives NaN (forced
   with latents that overflow float16);
4. the memory ladder, one child process per case: torch.cuda.set_per_process_memory_fraction at 4, 6
   and 8 GiB with HardwareFacts.cuda_total_bytes set to the same, so app.devices.plan_device picks
   the mode; then the FULL plan forced at 4 GiB (one job of batch 8), which must run out of memory, step down
   (app.generation.memory_retry, ModelManager.degrade) and still finish. Each prints the mode planned
   and the mode it ended in, it/s, the peak of torch.cuda.max_memory_allocated, and whether an
   out-of-memory retry happened;
5. a summary block to paste into bench/RESULTS.md (also written to --summary-file).

    python bench/gpu_check.py [--workdir DIR] [--budget-s 420] [--summary-file FILE]
    python bench/gpu_check.py --device cpu --tiny      # the whole flow on tiny models, on the CPU

`--device cpu --tiny` (alias `--dry-run`) smoke-tests the flow where there is no GPU: tiny random
models of the same architectures, small sizes and few steps; the ladder's modes come from the same
HardwareFacts through plan_device, but every job runs on the CPU (nothing can run out of GPU memory,
so the forced case shows the rung `degraded()` would step to).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import app  # noqa: E402,F401  (offline switches before torch/diffusers)

GIB = 2**30
TARGET_IT_S = 110.0  # SD 1.5 512x512 batch 1 on an H100/H200-class card (issue 12)
FORCED_GIB, FORCED_BATCH = 4, 8
PROMPT = "a photograph of an astronaut riding a horse"
LADDER_CASE_S = 150  # the most one ladder case may take: start, load, three jobs
PHASE_S = 90  # a model's speed phase (build, load, jobs) needs about this much of the budget; a ladder case half
RETRY_NOTE = "Ran out of memory"  # app.generation.memory_retry's note
NAN_WORDS = {True: "yes", False: "NO", None: "n/a (VAE not in float16)"}


@dataclasses.dataclass(frozen=True)
class Case:
    label: str
    config: str        # configs/models/<config> (full size) or the tiny family's name
    file: str          # the checkpoint's file (or folder) name in models/Stable-diffusion
    size: int
    steps: int         # the long job
    short: int         # the short job: it/s from the difference
    repeats: int


def cases(tiny: bool) -> list[Case]:
    if tiny:
        return [Case("SD 1.5 (tiny)", "sd15", "tiny-sd15", 64, 6, 2, 1),
                Case("SD 2.1-768 (tiny)", "sd21", "tiny-sd21-v", 96, 6, 2, 1)]
    return [Case("SD 1.5 512x512", "sd15", "sd15-random-fp16.safetensors", 512, 50, 10, 3),
            Case("SD 2.1-768 768x768", "sd21", "sd21-768-random-fp16.safetensors", 768, 50, 10, 2)]


# ------------------------------------------------------------------------------------ models

def build_full_size(config: str, target: Path, device: str, seed: int) -> None:
    """A full-size random model of configs/models/<config> as a float16 single file, made on `device`."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from app.models.loader import CONFIG_FOLDERS, MODEL_CONFIGS_DIR, tokenizer_for
    from tools.ldm_convert import save_single_file

    folder = MODEL_CONFIGS_DIR / config
    family = next(f for f, name in CONFIG_FOLDERS.items() if name == config)
    torch.manual_seed(seed)
    with torch.device(device):  # random init on the GPU: seconds instead of a minute on the CPU
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")).half()
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")).half()
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")).half()
    scheduler_class = json.loads((folder / "model_index.json").read_text())["scheduler"][1]
    scheduler = getattr(diffusers, scheduler_class).from_pretrained(folder, subfolder="scheduler")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer_for(family), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to("cpu")
    partial = target.with_name(target.name + ".partial")
    save_single_file(pipe, partial)
    os.replace(partial, target)  # a file under the final name is always complete


def ensure_models(workdir: Path, tiny: bool, device: str, wanted: tuple[str, ...] = ("sd15", "sd21")) -> None:
    """The models folder (and, for tiny models, their config folders), built when missing."""
    checkpoints = workdir / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True, exist_ok=True)
    if tiny:
        from app.models.families import Family
        from tools.tiny_models import save_tiny_configs, save_tiny_model

        save_tiny_model(checkpoints / "tiny-sd15", Family.SD1, seed=0)
        save_tiny_model(checkpoints / "tiny-sd21-v", Family.SD2_V, seed=1)
        save_tiny_configs(workdir / "model-configs")
        return
    for seed, case in enumerate(cases(tiny=False)):
        target = checkpoints / case.file
        if case.config in wanted and not target.is_file():
            started = time.monotonic()
            build_full_size(case.config, target, device, seed)
            print(f"  built {case.file} ({target.stat().st_size / GIB:.2f} GiB) in {time.monotonic() - started:.0f} s",
                  flush=True)


# ------------------------------------------------------------------------------------ engine

def make_engine(args, facts):
    """An Engine as app.engine.create_engine builds it, and its model manager (the bench looks inside)."""
    from app.engine import Engine, model_manager
    from app.images.store import OutputStore
    from app.settings import load_settings

    work = Path(args.workdir)
    settings = load_settings({
        "models_dir": str(work / "models"), "outputs_dir": str(work / "outputs"), "cache_dir": str(work / "cache"),
        "styles_file": str(work / "styles.csv"), "device": args.device, "open_browser": False,
        "watermark": False, "preview_every": 0, "torch_compile": not args.no_compile,
        **({"model_configs_dir": str(work / "model-configs")} if args.tiny else {}),
    })
    models = model_manager(settings, facts)
    return Engine(settings, models, OutputStore(settings.outputs_dir)), models


def run_job(engine, case: Case, steps: int, batch: int = 1):
    """(seconds, result) of one txt2img job, to a saved PNG."""
    from app.generation.requests import GenerationRequest

    request = GenerationRequest(prompt=PROMPT, sampler="DPM++ 2M", schedule="Karras", steps=steps, cfg_scale=7.0,
                                width=case.size, height=case.size, seed=1234, batch_size=batch)
    started = time.perf_counter()
    result = engine.generate(request, timeout=900)
    return time.perf_counter() - started, result


def speed(engine, case: Case, batch: int = 1) -> dict:
    """it/s from alternating long and short jobs after a warm-up; notes of every job."""
    warmup_s, result = run_job(engine, case, case.short, batch)  # warm-up: first-use costs
    notes, long, short = list(result.notes), [], []
    for _ in range(case.repeats):
        for steps, times in ((case.steps, long), (case.short, short)):
            seconds, result = run_job(engine, case, steps, batch)
            times.append(seconds)
            notes += result.notes
    image_s, short_s = statistics.median(long), statistics.median(short)
    it_s = (case.steps - case.short) / (image_s - short_s) if image_s > short_s else float("nan")
    return {"it_s": it_s, "image_s": image_s, "warmup_s": warmup_s, "notes": notes}


def checks(models, case: Case) -> dict:
    """SDPA, precision, and the VAE's float32 fallback (forced last: it changes the loaded VAE)."""
    import torch

    from app.generation.diffusion import decoded
    from app.kinds import JobKind

    pipe = models.pipeline_for(JobKind.TXT2IMG)
    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)  # torch.compile wraps the module
    processors = sorted({type(p).__name__ for p in unet.attn_processors.values()})
    out = {"attention": "/".join(processors), "sdpa": processors == ["AttnProcessor2_0"],
           "plan_dtype": str(models.plan.dtype).removeprefix("torch."),
           "unet_dtype": str(unet.dtype).removeprefix("torch."),
           "vae_dtype_after_jobs": str(pipe.vae.dtype).removeprefix("torch."),
           "vae_float32_after_jobs": bool(models.loaded.vae_float32)}
    if pipe.vae.dtype == torch.float16:
        side = case.size // 8
        generator = torch.Generator().manual_seed(0)
        latents = (torch.randn(1, 4, side, side, generator=generator) * 1e4).to(pipe.vae.device)  # overflows float16
        out["nan_fallback"] = decoded(pipe, latents).vae_float32 and pipe.vae.dtype == torch.float32
    else:
        out["nan_fallback"] = None  # only a half-precision VAE can overflow
    return out


def compile_state(models) -> tuple[str, str | None]:
    """The UNet's torch.compile state (app.models.compiled.CompileState's value; "off" when it is not
    compiled in this placement or the setting is off) and the sentence of its problem, if any."""
    state, problem = models.compile_state()
    return (state.value if state is not None else "off"), problem


def await_compiled(engine, models, case: Case, cap_s: float) -> tuple[str, float]:
    """Jobs run eager until the background compile of their shape is ready: one short job asks for the
    shape, then wait for the compile, up to `cap_s` seconds."""
    started = time.monotonic()
    if compile_state(models)[0] != "off":
        run_job(engine, case, case.short)
        engine.wait_until_compiled(timeout=max(0.0, cap_s - (time.monotonic() - started)))
    return compile_state(models)[0], time.monotonic() - started


def speed_row(args, case: Case, deadline: float) -> str:
    """One model's speed and checks through a fresh Engine on the machine's own plan, as a table row."""
    import torch

    from app.hardware import probe_hardware

    if time.monotonic() > deadline - PHASE_S:
        return f"| {case.label} | skipped: out of time budget | | | | |"
    ensure_models(Path(args.workdir), args.tiny, args.device, (case.config,))
    engine, models = make_engine(args, probe_hardware())
    try:
        engine.select_checkpoint(case.file)
        # The timed jobs need about a minute after the wait: the wait never eats into that.
        wait_cap = min(args.compile_wait_s, deadline - time.monotonic() - 60)
        compiled, waited = await_compiled(engine, models, case, wait_cap)
        result = speed(engine, case)
        problem = compile_state(models)[1]
        check = checks(models, case)
    finally:
        engine.close()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next model and the ladder's processes get the memory back
    verdict = ""
    if case.config == "sd15" and not args.tiny:
        verdict = f" {'PASS' if result['it_s'] >= TARGET_IT_S else 'FAIL'} (target >= {TARGET_IT_S:.0f})"
    compiled_words = f"{compiled} after {waited:.0f} s" + (f" ({problem})" if problem else "")
    row = (f"| {case.label} | {result['it_s']:.1f}{verdict} | {result['image_s']:.2f} | {compiled_words} | "
           f"{check['attention']} ({'SDPA' if check['sdpa'] else 'not SDPA'}) | "
           f"{check['unet_dtype']}; VAE {check['vae_dtype_after_jobs']} after the jobs"
           f"{' (a decode in them gave NaN)' if check['vae_float32_after_jobs'] else ''}; "
           f"NaN → float32: {NAN_WORDS[check['nan_fallback']]} |")
    print(f"  {row}", flush=True)
    return row


# ------------------------------------------------------------------------------------ the ladder

def ladder_case(args, gib: int, forced: bool) -> dict:
    """One memory case: the memory limit (in a child process of its own on a GPU), the facts, one SD 1.5
    job's speed and peak."""
    import torch

    from app.devices import DeviceOptions, degraded, plan_device
    from app.hardware import probe_hardware

    cuda = args.device != "cpu"
    args = argparse.Namespace(**{**vars(args), "no_compile": True})  # the modes' speed, not the compiler's
    facts = probe_hardware()
    claimed = (80 if forced else gib) * GIB  # forced: the facts of a big card, so the plan is FULL
    simulated = dataclasses.replace(facts, cuda_available=True, cuda_name=facts.cuda_name or "a simulated GPU",
                                    cuda_total_bytes=claimed)
    planned = plan_device(simulated, DeviceOptions()).memory_mode.value
    if cuda:
        torch.cuda.set_per_process_memory_fraction(min(1.0, gib * GIB / facts.cuda_total_bytes))
        facts = simulated
    engine, models = make_engine(args, facts)
    case = cases(args.tiny)[0]
    case = dataclasses.replace(case, steps=20 if not args.tiny else case.steps, short=5 if not args.tiny else case.short,
                               repeats=1)
    try:
        engine.select_checkpoint(case.file)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        if forced:  # one job: whichever rung it ends on (the CPU at worst), more jobs there could take minutes
            seconds, job = run_job(engine, case, case.short, FORCED_BATCH)
            result = {"it_s": float("nan"), "image_s": seconds, "notes": job.notes}
        else:
            result = speed(engine, case)
        final = models.plan.memory_mode.value if cuda else (
            (degraded(plan_device(simulated), simulated).memory_mode.value + " (simulated)") if forced else planned)
        report = {"gib": gib, "forced": forced, "planned": planned, "final": final,
                  "retried": any(RETRY_NOTE in note for note in result["notes"]),
                  "it_s": result["it_s"], "image_s": result["image_s"], "steps": case.short if forced else case.steps,
                  "batch": FORCED_BATCH if forced else 1,
                  "peak_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None}
    except Exception as error:  # the summary says which case failed and why; the others still run
        report = {"gib": gib, "forced": forced, "planned": planned, "error": f"{type(error).__name__}: {error}"[:300]}
    finally:
        engine.close()
    return report


def ladder(args, deadline: float) -> list[dict]:
    reports, wanted = [], [name.strip() for name in args.ladder.split(",") if name.strip()]
    chosen = [(int(name), False) for name in wanted if name.isdigit()] + [(FORCED_GIB, True)] * ("forced" in wanted)
    for gib, forced in chosen:
        left = deadline - time.monotonic()
        if left < PHASE_S / 2:
            reports.append({"gib": gib, "forced": forced, "error": "skipped: out of time budget"})
            continue
        if args.device == "cpu":  # nothing to limit: the modes are simulated, so no process of its own
            reports.append(ladder_case(args, gib, forced))
            print(f"  {ladder_row(reports[-1])}", flush=True)
            continue
        command = [sys.executable, __file__, "--ladder-child", str(gib), "--workdir", args.workdir,
                   "--device", args.device, "--no-compile", *(["--tiny"] if args.tiny else []), *(["--forced"] if forced else [])]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=min(left, LADDER_CASE_S))
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("LADDER ")), None)
            report = json.loads(line[7:]) if line else {
                "gib": gib, "forced": forced, "error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
        except subprocess.TimeoutExpired:
            report = {"gib": gib, "forced": forced, "error": "timed out"}
        print(f"  {ladder_row(report)}", flush=True)
        reports.append(report)
    return reports


def ladder_row(r: dict) -> str:
    case = f"{r['gib']} GiB" + (f", FULL forced, batch {FORCED_BATCH}" if r.get("forced") else "")
    if "error" in r:
        return f"| {case} | {r.get('planned', '')} | | | | | {r['error']} |"
    peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "n/a (CPU)"
    it_s = f"one {r['steps']}-step job" if r.get("forced") else f"{r['it_s']:.1f}"
    return (f"| {case} | {r['planned']} | {r['final']} | {it_s} | {r['image_s']:.2f} | {peak} | "
            f"{'yes' if r['retried'] else 'no'} |")


# ------------------------------------------------------------------------------------ main

def cpu_name() -> str:
    from app.hardware import cpu_model_name

    try:
        return cpu_model_name(Path("/proc/cpuinfo").read_text()) or platform.machine()
    except OSError:
        return platform.machine()


def header(args) -> list[str]:
    import diffusers
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"Command: python bench/gpu_check.py {' '.join(sys.argv[1:])}".rstrip(),
            f"GPU: {gpu}; CUDA {torch.version.cuda}; CPU: {cpu_name()}",
            f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
            f"Python {platform.python_version()}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="tiny random models (with --device cpu: the dry run)")
    parser.add_argument("--dry-run", action="store_true", help="the same as --device cpu --tiny")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "easel-gpu-check"))
    parser.add_argument("--budget-s", type=float, default=420, help="skip what would not end within this")
    parser.add_argument("--summary-file", default=None)
    parser.add_argument("--no-compile", action="store_true", help="Easel's torch_compile setting off (eager)")
    parser.add_argument("--compile-wait-s", type=float, default=120,
                        help="longest wait per model for the background compile before timing")
    parser.add_argument("--models", default="sd15,sd21", help="which speed cases: sd15, sd21 (comma-separated)")
    parser.add_argument("--ladder", default="4,6,8,forced",
                        help="which memory cases: GiB values and 'forced' (comma-separated; '' for none)")
    parser.add_argument("--ladder-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--forced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dry_run:
        args.device, args.tiny = "cpu", True
    if args.ladder_child is not None:
        print("LADDER " + json.dumps(ladder_case(args, args.ladder_child, args.forced)), flush=True)
        return 0
    started = time.monotonic()
    deadline = started + args.budget_s
    import torch


    if args.device == "cuda" and not torch.cuda.is_available():
        print("torch sees no CUDA GPU here. Run on a machine with one, or use --device cpu --tiny for the dry run.")
        return 2
    lines = header(args)
    print("\n".join(lines), flush=True)
    ensure_models(Path(args.workdir), args.tiny, args.device, ("sd15",))
    print(f"  SD 1.5 ready at {time.monotonic() - started:.0f} s", flush=True)

    chosen = [c for c in cases(args.tiny) if c.config in args.models.split(",")]
    # SD 1.5's speed (the target) first, then the memory ladder (SD 1.5 too), then SD 2.1: what matters
    # most is measured first when the time budget runs short.
    rows = [speed_row(args, case, deadline) for case in chosen if case.config == "sd15"]
    ladder_rows = [ladder_row(r) for r in ladder(args, deadline)]
    rows += [speed_row(args, case, deadline) for case in chosen if case.config != "sd15"]
    summary = [
        "### GPU check" + (" (dry run: tiny models on the CPU)" if args.tiny else ""), "", *lines, "",
        f"Batch 1, CFG 7, DPM++ 2M Karras, watermark and live previews off; it/s from {cases(args.tiny)[0].steps}- "
        f"and {cases(args.tiny)[0].short}-step jobs after a warm-up.", "",
        "| model | it/s | s per image (to PNG) | torch.compile | attention | precision |",
        "|---|---|---|---|---|---|", *rows, "",
        "Memory ladder (SD 1.5, 20- and 5-step jobs (tiny: 6 and 2), each case in its own process, torch.compile off; "
        "memory limited with set_per_process_memory_fraction, HardwareFacts.cuda_total_bytes set to match):", "",
        "| memory | mode planned | mode at the end | it/s | s per image | peak allocated GiB | out-of-memory retry |",
        "|---|---|---|---|---|---|---|", *ladder_rows, "",
        f"Total {time.monotonic() - started:.0f} s.",
    ]
    text = "\n".join(summary)
    print("\n----- summary (paste into bench/RESULTS.md) -----\n" + text + "\n----- end of summary -----")
    if args.summary_file:
        Path(args.summary_file).write_text(text + "\n")
    return 1 if any("FAIL" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
