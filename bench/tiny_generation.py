"""Wall time of one tiny-model generation (the --demo model) at three sizes, one torch thread.

    .venv/bin/python bench/tiny_generation.py
"""

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import app  # noqa: E402,F401  (offline switches before torch)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from app.engine import create_engine
    from app.generation.requests import GenerationRequest
    from app.hardware import HardwareFacts
    from app.settings import load_settings

    work = Path(tempfile.mkdtemp(prefix="easel-tiny-bench-"))
    settings = load_settings({"demo": True, "device": "cpu", "cache_dir": str(work / "cache"),
                              "outputs_dir": str(work / "outputs"), "models_dir": str(work / "models")})
    engine = create_engine(settings, HardwareFacts(cpu_threads=1))
    engine.generate(GenerationRequest(prompt="warm up", steps=2, width=64, height=64, seed=1))
    for side, steps in ((64, 2), (256, 4), (512, 20)):
        started = time.perf_counter()
        engine.generate(GenerationRequest(prompt="a lighthouse", steps=steps, width=side, height=side, seed=1))
        print(f"{side}x{side} {steps} steps: {time.perf_counter() - started:.2f} s")
    engine.close()


if __name__ == "__main__":
    main()
