"""What a LoRA tag costs a job on a full-size SD 1.5, and that the next job is bit-identical.

Issue "What every peer does with a prompt", item 1: a LoRA is added to the weights for one job's turn
and taken out after it. This bench builds a full-size, randomly initialised SD 1.5 single file (as
bench/swap_memory.py does) and a full-size kohya LoRA for it (rank 32 on every attention, feed-forward
and projection layer of the UNet and every attention and MLP layer of the text encoder: the layers
kohya's sd-scripts trains, 264 of them, 36 MiB in float16), then runs through the Engine, in one
process, side by side: a 512x512 1-step txt2img job without the tag, the same with `<lora:...:0.8>`
(the file is read and the LoRA added), again (it stays in the weights), and without the tag again
(the originals copied back), which must give the same pixels as the first. The time spent adding
and taking out LoRAs is measured apart from the job's (one-step jobs vary by a second or so).

    .venv/bin/python bench/lora_apply.py [--workdir DIR] [--threads N] [--size PX]

Prints the command, the CPU, a table and the overhead, and writes them to <workdir>/results.md.
"""

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import app  # noqa: E402,F401  (offline switches before torch)
from bench.swap_memory import GIB, PeakSampler, proc_status, reset_peak  # noqa: E402

CHECKPOINT = "sd15-random-fp16.safetensors"
LORA = "bench-lora"
RANK = 32
UNET_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
               "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
TEXT_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def kohya_lora(unet, text_encoder) -> dict:
    """Random factors in kohya's layout for the layers sd-scripts trains (scaled small, as trained ones are)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    tensors = {}

    def add(prefix: str, weight) -> None:
        out_features, in_features = weight.shape[0], weight.shape[1]
        kernel = (1, 1) if weight.dim() == 4 else ()
        tensors[f"{prefix}.lora_down.weight"] = (torch.randn((RANK, in_features, *kernel), generator=generator) * 0.01).half()
        tensors[f"{prefix}.lora_up.weight"] = (torch.randn((out_features, RANK, *kernel), generator=generator) * 0.01).half()
        tensors[f"{prefix}.alpha"] = torch.tensor(float(RANK) / 2).half()

    for name, module in unet.named_modules():
        if name.endswith(UNET_LAYERS) or name.endswith(("proj_in", "proj_out")) and "attentions" in name:
            add("lora_unet_" + name.replace(".", "_"), module.weight)
    for name, module in text_encoder.named_modules():
        if name.endswith(TEXT_LAYERS):
            full = name if name.startswith("text_model.") else f"text_model.{name}"
            add("lora_te_" + full.replace(".", "_"), module.weight)
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "easel-lora-bench")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    checkpoints = args.workdir / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True, exist_ok=True)
    if not (checkpoints / CHECKPOINT).exists():  # built in a child, as swap_memory does, so its memory is gone
        subprocess.run([sys.executable, str(REPO / "bench" / "swap_memory.py"), "--build-one", "sd15",
                        str(checkpoints / CHECKPOINT), "1"], check=True)

    from app.engine import create_engine
    from app.generation.requests import GenerationRequest
    from app.memory import freeze_imports
    from app.settings import load_settings

    freeze_imports()
    settings = load_settings({
        "models_dir": str(args.workdir / "models"), "outputs_dir": str(args.workdir / "outputs"),
        "cache_dir": str(args.workdir / "cache"),
    })
    engine = create_engine(settings)
    engine.select_checkpoint(CHECKPOINT)
    lora_file = args.workdir / "models" / "Lora" / f"{LORA}.safetensors"
    if not lora_file.exists():
        from accelerate import init_empty_weights
        from diffusers import UNet2DConditionModel
        from safetensors.torch import save_file
        from transformers import CLIPTextConfig, CLIPTextModel

        from app.models.loader import MODEL_CONFIGS_DIR

        folder = MODEL_CONFIGS_DIR / "sd15"
        with init_empty_weights():  # the layers' names and shapes, no weights
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        lora_file.parent.mkdir(parents=True, exist_ok=True)
        save_file(kohya_lora(unet, text_encoder), str(lora_file))
    layers = sum(1 for _ in __import__("safetensors").safe_open(str(lora_file), "pt").keys()) // 3

    from app.generation import lora_patch

    carrying = {"seconds": 0.0}
    carry = lora_patch.LoraWeights.carry

    def timed_carry(self, *args, **kwargs):  # the time spent adding and taking out LoRAs, apart from the job's
        started = time.perf_counter()
        try:
            return carry(self, *args, **kwargs)
        finally:
            carrying["seconds"] += time.perf_counter() - started

    lora_patch.LoraWeights.carry = timed_carry

    def job(prompt: str) -> dict:
        carrying["seconds"] = 0.0
        reset_peak()
        with PeakSampler() as sampled:
            started = time.perf_counter()
            result = engine.generate(GenerationRequest(prompt=prompt, steps=1, width=args.size, height=args.size,
                                                       seed=7, save=False))
            seconds = time.perf_counter() - started
        return {"seconds": seconds, "carry": carrying["seconds"], "pixels": np.asarray(result.images[0].image),
                "notes": result.notes,
                "peak": proc_status()["VmHWM"], "anon": sampled.anon}

    job("warm-up")  # the first job after a load pays one-time costs of its own
    plain = job("a lighthouse at dusk")
    first = job(f"a lighthouse at dusk <lora:{LORA}:0.8>")
    cached = job(f"a lighthouse at dusk <lora:{LORA}:0.8>")
    after = job("a lighthouse at dusk")
    device = engine.status().device
    engine.close()

    identical = np.array_equal(plain["pixels"], after["pixels"])
    changed = not np.array_equal(plain["pixels"], first["pixels"])
    gib = lambda value: f"{value / GIB:.2f}"  # noqa: E731
    rows = [("no tag", plain), ("`<lora>` first use (file read)", first), ("`<lora>` again (cached)", cached),
            ("no tag again", after)]
    lines = [
        f"`.venv/bin/python bench/lora_apply.py --threads {args.threads} --size {args.size}`",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} thread(s). {device}",
        f"Full-size SD 1.5 (random init), a kohya LoRA of rank {RANK} on {layers} layers "
        f"({lora_file.stat().st_size / 2**20:.0f} MiB); {args.size}x{args.size}, 1 step.",
        "",
        "| job | seconds | of which adding / taking out LoRAs | peak VmHWM GiB (sampled anon) | notes |",
        "|---|---|---|---|---|",
        *[f"| {name} | {row['seconds']:.2f} | {row['carry']:.2f} | {gib(row['peak'])} ({gib(row['anon'])}) | "
          f"{'; '.join(row['notes']) or '-'} |" for name, row in rows],
        "",
        f"- Adding the LoRA: **{first['carry']:.2f} s** (the job that asks for it first); a job that asks for the "
        f"same again: **{cached['carry']:.2f} s** (it stays in the weights); taking it out, in the next job "
        f"without it: **{after['carry']:.2f} s**. Peak memory of the first job with it: "
        f"+{(first['peak'] - plain['peak']) / GIB:.2f} GiB (the originals of the layers it changes, kept until then).",
        f"- The tag changed the picture: {changed}. The next job without it is bit-identical to the one "
        f"before: **{identical}**.",
    ]
    text = "\n".join(lines)
    print(text)
    (args.workdir / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
