"""Speed on this machine: Easel (Engine and HTTP API) against plain diffusers in float32 and in Easel's dtype.

Issue 12, deliverable 1. Full-size, randomly initialised SD 1.5 (512x512) and SD 2.1-768 (v-prediction,
768x768) single files are built once from configs/models/ (bench/swap_memory.py's builder) and kept in
`.cache/bench/`. Every variant makes the same picture (DPM++ 2M Karras, CFG 7, fixed seed and prompt)
in its own child process (bench/speed_variants.py), after one untimed warm-up job of the same size; the
variants alternate (A B C D A B C D ...) so that drift of the machine hits all alike.

    .venv/bin/python bench/speed.py            # SD 1.5 at 20 steps x2, SD 2.1-768 at 10 steps: < 30 min
    .venv/bin/python bench/speed.py --quick    # SD 1.5 at 4 steps, once; 20 steps extrapolated: < 5 min
    .venv/bin/python bench/speed.py --tiny     # tiny random models, one process: a smoke test in seconds

Options: --variants easel,diffusers-fp32,...  --steps N  --repeats N  --models sd15,sd21  --threads N
--results FILE (default bench/RESULTS.md; --tiny writes nowhere unless given)  --cache DIR  --rebuild.
Prints a markdown table and replaces its own section of the results file (other sections are kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.results import publish  # noqa: E402
from bench.speed_variants import VARIANTS  # noqa: E402

GIB = 2**30
SECTION = "## Speed: Easel against plain diffusers (`bench/speed.py`)"
REFERENCE_STEPS = 20  # what a default image takes; fewer measured steps are extrapolated to it
LABELS = {
    "easel": "Easel, Engine in process",
    "easel-http": "Easel, HTTP API (`/sdapi/v1/txt2img`)",
    "diffusers-fp32": "plain diffusers, float32 (its default)",
    "diffusers-easel-dtype": "plain diffusers, Easel's dtype",
}
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclasses.dataclass(frozen=True)
class ModelRun:
    """One architecture of the run: which file, at what size and how many steps."""
    key: str          # "sd15", "sd21" or "tiny"
    label: str
    file_name: str
    config: str       # configs/models/<config>
    size: int
    steps: int
    repeats: int
    warmup_steps: int


def model_runs(args) -> list[ModelRun]:
    if args.tiny:
        runs = [ModelRun("tiny", "tiny random SD 1.x (tools/tiny_models.py)", "tiny-sd15", "sd15", 64, 4, 1, 2)]
    elif args.quick:
        runs = [ModelRun("sd15", "SD 1.5 (full size, random init)", "sd15-random-fp16.safetensors", "sd15", 512, 4, 1, 1)]
    else:
        runs = [
            ModelRun("sd15", "SD 1.5 (full size, random init)", "sd15-random-fp16.safetensors", "sd15", 512, 20, 2, 2),
            ModelRun("sd21", "SD 2.1-768 v-prediction (full size, random init)", "sd21-768-random-fp16.safetensors",
                     "sd21", 768, 10, 1, 1),
        ]
    if args.models:
        runs = [run for run in runs if run.key in args.models.split(",")]
    return [dataclasses.replace(run, steps=args.steps or run.steps, repeats=args.repeats or run.repeats)
            for run in runs]


# ---------------------------------------------------------------------------------- models

def ensure_model(run: ModelRun, models_dir: Path, rebuild: bool) -> Path:
    """The run's model file, built in a child process the first time (its memory is gone before timing)."""
    target = models_dir / "Stable-diffusion" / run.file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    if run.key == "tiny":
        return target  # built by the child that uses it (tools/tiny_models.py: a second)
    if rebuild or not target.is_file():
        print(f"building {target} (once) ...", flush=True)
        seed = 0 if run.key == "sd15" else 1
        subprocess.run([sys.executable, str(REPO / "bench" / "swap_memory.py"), "--build-one", run.config,
                        str(target), str(seed)], check=True)
    return target


# ------------------------------------------------------------------------------- measuring

def run_child(run: ModelRun, model: Path, variants: list[str], workdir: Path, threads: int | None,
              timeout: float, no_compile: bool = False) -> list[dict]:
    """Runs `variants` one after another in one fresh child process; one result dict each."""
    spec = dict(variants=variants, model=str(model), config=str(REPO / "configs" / "models" / run.config),
                size=run.size, steps=run.steps, warmup_steps=run.warmup_steps, workdir=str(workdir), threads=threads,
                tiny=run.key == "tiny", compile=not no_compile)
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    try:
        done = subprocess.run([sys.executable, str(REPO / "bench" / "speed_variants.py"), json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return [{"variant": v, "error": f"no result within {timeout:.0f} s"} for v in variants]
    log = workdir.parent / "logs" / f"{run.key}-{'+'.join(variants)}.log"  # the last run's, for a failure's traceback
    log.parent.mkdir(exist_ok=True)
    log.write_text(done.stdout + done.stderr)
    results = [json.loads(line[len("RESULT "):]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    for result in results:
        if result.get("error"):
            result["error"] += f" (traceback in {log})"
    seen = {result["variant"] for result in results}
    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
    return results + [{"variant": v, "error": f"child exited {done.returncode}: {tail} (see {log})"} for v in variants
                      if v not in seen]


def measure(args, runs: list[ModelRun], variants: list[str], cache: Path) -> dict[str, dict[str, list[dict]]]:
    """{model key: {variant: [result per repeat]}}, variants alternating within each repeat."""
    models_dir = cache / ("tiny-models" if args.tiny else "models")
    measured: dict[str, dict[str, list[dict]]] = {}
    for run in runs:
        model = ensure_model(run, models_dir, args.rebuild)
        measured[run.key] = {variant: [] for variant in variants}
        with tempfile.TemporaryDirectory(prefix="easel-speed-", dir=cache) as scratch:
            workdir = Path(scratch)
            (workdir / "easel-cache").symlink_to(cache.resolve() / "easel-cache", target_is_directory=True)
            for repeat in range(run.repeats):
                # --tiny: every variant in one child (imports once); otherwise one child each, so each
                # variant's peak memory is its own and no variant's memory slows another.
                groups = [variants] if args.tiny else [[variant] for variant in variants]
                for group in groups:
                    started = time.monotonic()
                    for result in run_child(run, model, group, workdir, args.threads, args.timeout,
                                            args.no_compile):
                        measured[run.key][result["variant"]].append(result)
                        outcome = result.get("error") or (
                            f"{result['end_to_end_s']:.2f} s end to end (load {result['load_s']:.1f} s, warm-up "
                            f"{result['warmup_s']:.1f} s, until fast {result['until_fast_s']:.1f} s)")
                        print(f"  {run.key} #{repeat + 1} {result['variant']}: {outcome}", flush=True)
                    print(f"    (child {time.monotonic() - started:.0f} s)", flush=True)
    return measured


# ------------------------------------------------------------------------------- reporting

def median_of(results: list[dict], key: str) -> float | None:
    values = [r[key] for r in results if not r.get("error") and r.get(key) is not None]
    return statistics.median(values) if values else None


def at_reference_steps(results: list[dict], steps: int) -> float | None:
    """End to end at REFERENCE_STEPS: measured when the run took them, else the measured job plus the
    missing steps at the median step time (extrapolated)."""
    end, step = median_of(results, "end_to_end_s"), median_of(results, "step_s")
    if end is None or step is None:
        return None
    return end + (REFERENCE_STEPS - steps) * step


def seconds(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(run: ModelRun, results: dict[str, list[dict]]) -> list[str]:
    extrapolated = run.steps != REFERENCE_STEPS
    ref = f"{REFERENCE_STEPS} steps s" + (" (**extrapolated**)" if extrapolated else "")
    lines = [
        f"**{run.label}**, {run.size}x{run.size}, DPM++ 2M Karras, CFG 7, {run.steps} steps, "
        f"{run.repeats} run(s) per variant (medians), one warm-up job of {run.warmup_steps} step(s) first:",
        "",
        f"| variant | dtype | threads | s/step (UNet, CFG) | text encoding s | VAE decode s | end to end s "
        f"({run.steps} steps, PNG saved) | {ref} | peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, rows in results.items():
        good = [r for r in rows if not r.get("error")]
        if not good:
            error = rows[0]["error"] if rows else "not run"
            lines.append(f"| {LABELS[variant]} | failed: {error.replace('|', '/')} | | | | | | | |")
            continue
        peak = max(r["peak_rss"] for r in good) / GIB
        lines.append(
            f"| {LABELS[variant]} | {good[0]['dtype']} | {good[0]['threads']} | {seconds(median_of(good, 'step_s'))} | "
            f"{seconds(median_of(good, 'text_s'), 3)} | {seconds(median_of(good, 'decode_s'))} | "
            f"{seconds(median_of(good, 'end_to_end_s'))} | {seconds(at_reference_steps(good, run.steps), 1)} | "
            f"{peak:.2f} |"
        )
    lines += [""] + ratios(run, results)
    notes = sorted({r["note"] for rows in results.values() for r in rows if r.get("note")})
    lines += [f"- Easel's page after the timed job: {note}" for note in notes]
    return lines


def ratios(run: ModelRun, results: dict[str, list[dict]]) -> list[str]:
    """How many times faster each Easel variant is than each plain diffusers one, end to end."""
    lines = []
    for easel in ("easel", "easel-http"):
        for plain in ("diffusers-easel-dtype", "diffusers-fp32"):
            if easel not in results or plain not in results:
                continue
            mine, theirs = median_of(results[easel], "end_to_end_s"), median_of(results[plain], "end_to_end_s")
            if not mine or not theirs:
                continue
            line = f"- {LABELS[easel]} against {LABELS[plain]}: **{theirs / mine:.2f}x** as fast ({run.steps} steps, measured)"
            if run.steps != REFERENCE_STEPS:
                mine_ref = at_reference_steps(results[easel], run.steps)
                theirs_ref = at_reference_steps(results[plain], run.steps)
                if mine_ref and theirs_ref:
                    line += f", {theirs_ref / mine_ref:.2f}x at {REFERENCE_STEPS} steps (extrapolated)"
            lines.append(line)
    return lines


def cpu_facts() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    present = [flag for flag in CPU_FLAGS if flags and flag in flags.group(1).split()]
    cores = {(m.group(1), m.group(2)) for m in re.finditer(r"physical id\s*:\s*(\d+)\n(?:.*\n)*?core id\s*:\s*(\d+)", text)}
    memory = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()) if Path("/proc/meminfo").is_file() else None
    return (f"{name.group(1).strip() if name else platform.processor() or platform.machine()}; flags: "
            f"{' '.join(present) or 'none of ' + ' '.join(CPU_FLAGS)}; {len(cores) or '?'} physical core(s), "
            f"{os.cpu_count()} logical CPU(s)"
            + (f", {int(memory.group(1)) / 2**20:.0f} GiB RAM" if memory else ""))


def report(args, runs: list[ModelRun], measured: dict, started: float, load: float) -> str:
    versions = ", ".join(f"{package} {version(package)}" for package in ("torch", "diffusers", "transformers"))
    command = ".venv/bin/python bench/speed.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    lines = [
        SECTION,
        "",
        f"`{command}`",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}; run took "
        f"{(time.time() - started) / 60:.1f} min; load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at "
        "the end (other work on the machine makes every figure slower and noisier)",
        f"- CPU: {cpu_facts()}; no GPU used",
        f"- {versions}; Python {platform.python_version()}",
        "- each variant in its own child process (peak RSS is the child's `ru_maxrss`: model load and, for Easel, its compile included), "
        "variants alternating; s/step is the median of the step callbacks' intervals after the first step; "
        "text encoding and VAE decode are every `CLIPTextModel` and `AutoencoderKL.decode` call of the timed job",
        "",
    ]
    if args.tiny:
        lines[-1:-1] = ["- `--tiny`: all variants in one process (a smoke test; peak RSS is shared)"]
    lines[-1:-1] = ["- Easel's compiled mode: " + (
        "off (`--no-compile`)" if args.no_compile else
        "on; each Easel child waits for its compiled graph after the warm-up job (`wait_until_fast`), "
        "compiled once per model and size, then read from Easel's on-disk compile cache")]
    for run in runs:
        lines += table(run, measured[run.key]) + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="SD 1.5, 4 steps, once (< 5 min)")
    mode.add_argument("--tiny", action="store_true", help="tiny random models in one process (a smoke test)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"a subset of {','.join(VARIANTS)}")
    parser.add_argument("--models", help="a subset of sd15,sd21")
    parser.add_argument("--steps", type=int, help="steps of the timed job (default: 20 full, 4 quick)")
    parser.add_argument("--repeats", type=int, help="runs of each variant")
    parser.add_argument("--threads", type=int, help="torch threads for every variant (default: Easel's choice)")
    parser.add_argument("--results", type=Path, help="results file (default bench/RESULTS.md; none with --tiny)")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "bench", help="built models, Easel's hash cache")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one child may take")
    parser.add_argument("--rebuild", action="store_true", help="build the model files again")
    parser.add_argument("--no-compile", action="store_true",
                        help="Easel without its background torch.compile (--set torch_compile=false)")
    args = parser.parse_args()
    if args.tiny:
        args.threads = args.threads or 1  # tiny ops on a shared 2-core machine: more threads only wait for each other
        args.no_compile = True  # compiling even a tiny UNet takes a minute or more: not for a smoke test
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")

    started, load = time.time(), os.getloadavg()[0]
    args.cache.mkdir(parents=True, exist_ok=True)
    (args.cache / "easel-cache").mkdir(exist_ok=True)
    runs = model_runs(args)
    measured = measure(args, runs, variants, args.cache)
    publish(report(args, runs, measured, started, load), args.results or (None if args.tiny else REPO / "bench" / "RESULTS.md"))


if __name__ == "__main__":
    main()
