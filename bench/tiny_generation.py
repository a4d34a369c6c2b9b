"""Wall time of one tiny-model generation (the --demo model) at three sizes, one torch thread.

    PYTHONPATH=. .venv/bin/python bench/tiny_generation.py
"""
import app, torch, time, tempfile
torch.set_num_threads(1)
from pathlib import Path
from app.settings import load_settings
from app.engine import create_engine
from app.generation.requests import GenerationRequest
from app.devices import HardwareFacts
d = Path(tempfile.mkdtemp())
e = create_engine(load_settings({"demo": True, "device": "cpu", "cache_dir": str(d/"c"), "outputs_dir": str(d/"o"), "models_dir": str(d/"m")}), HardwareFacts(cpu_threads=1))
e.generate(GenerationRequest(prompt="warm up", steps=2, width=64, height=64, seed=1))
for w, steps in ((64, 2), (256, 4), (512, 20)):
    t = time.perf_counter(); e.generate(GenerationRequest(prompt="a lighthouse", steps=steps, width=w, height=w, seed=1)); print(f"{w}x{w} {steps} steps: {time.perf_counter()-t:.2f} s")
e.close()
