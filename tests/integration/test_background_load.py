"""launch.py serves the page first and loads the first checkpoint beside it: while it loads, the page
says so, and a job sent meanwhile waits for it and then runs (it is not refused or lost)."""

import threading

import numpy as np
import pytest

from app.generation.requests import GenerationRequest
from app.models import manager as manager_module
from tests.conftest import TINY_SD1, make_engine, make_settings
from ui.header import model_status

TIMEOUT = 60


def test_a_checkpoint_loading_beside_the_page_is_shown_and_waited_for(tiny_models_dir, tiny_configs_dir, tmp_path,
                                                                      monkeypatch):
    release = threading.Event()
    loading = threading.Event()
    real_load = manager_module.load_pipeline

    def slow_load(*args, **kwargs):
        loading.set()
        assert release.wait(TIMEOUT)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(manager_module, "load_pipeline", slow_load)
    engine = make_engine(make_settings(tmp_path, tiny_models_dir, model_configs_dir=str(tiny_configs_dir)))
    try:
        assert "No checkpoint loaded yet" in model_status(engine)
        loader = threading.Thread(target=engine.select_checkpoint, args=(TINY_SD1,), daemon=True)
        loader.start()
        assert loading.wait(TIMEOUT)
        assert engine.status().loading.title == TINY_SD1
        assert f"Loading checkpoint **{TINY_SD1}**" in model_status(engine)

        job = engine.submit(GenerationRequest(prompt="a red fox", steps=2, width=64, height=64, seed=3, save=False),
                            owner="tester")
        with pytest.raises(TimeoutError):  # it waits for the checkpoint, it is not refused
            job.wait(1.0)
        release.set()
        result = job.wait(TIMEOUT)
        loader.join(TIMEOUT)
        assert np.asarray(result.images[0].image).shape == (64, 64, 3)
        assert engine.status().loading is None
        assert f"Active checkpoint: **{TINY_SD1}**" in model_status(engine)
    finally:
        release.set()
        engine.close()
