"""Forcing float32 everywhere: A1111's flags, the setting, and what the engine then plans."""

import pytest
import torch

from app.errors import EaselError
from app.hardware import HardwareFacts
from app.settings import load_settings
from launch import parse_args, settings_overrides
from tests.conftest import make_engine, models_of

BF16_CPU = HardwareFacts(cpu_name="test", cpu_threads=1, cpu_bf16=True)


@pytest.mark.parametrize("flags", [["--precision", "full"], ["--no-half"], ["--precision", "full", "--no-half"]])
def test_a1111_precision_flags_ask_for_full_precision(flags):
    assert settings_overrides(parse_args(flags))["precision"] == "full"


def test_without_a_flag_the_setting_decides():
    assert "precision" not in settings_overrides(parse_args([]))
    assert load_settings().precision == "auto"


@pytest.mark.parametrize("precision, dtype, words", [
    ("auto", torch.bfloat16, "in bfloat16"),
    ("full", torch.float32, "in float32 (full precision, as asked)"),
])
def test_the_engine_plans_the_precision_asked_for_and_says_which(tmp_path, precision, dtype, words):
    settings = load_settings({"models_dir": str(tmp_path / "models"), "outputs_dir": str(tmp_path / "out"),
                              "cache_dir": str(tmp_path / "cache"), "device": "cpu", "precision": precision})
    engine = make_engine(settings, BF16_CPU)
    try:
        assert words in engine.status().device
        assert models_of(engine).plan.dtype == dtype
    finally:
        engine.close()


def test_an_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(EaselError, match="precision must be auto or full"):
        load_settings({"precision": "half"})
