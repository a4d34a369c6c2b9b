"""Styles through the Engine: a malformed styles file does not stop it starting, and says which line."""

from app.generation.styles import Style
from tests.conftest import make_engine, make_settings


def test_a_malformed_styles_file_is_reported_and_the_engine_still_starts(tmp_path, tiny_models_dir):
    settings = make_settings(tmp_path, tiny_models_dir)
    settings.styles_file.write_text('name,prompt,negative_prompt\nok,fine,\nbroken,"no end\n')
    engine = make_engine(settings)
    try:
        assert engine.styles() == []
        assert "at line 3" in engine.styles_problem() and str(settings.styles_file) in engine.styles_problem()
        settings.styles_file.write_text("name,prompt,negative_prompt\n")  # fixed by hand: read again
        assert engine.styles_problem() is None
        engine.save_style("Sharp", "{prompt}, sharp", "blur")
        assert engine.styles() == [Style("Sharp", "{prompt}, sharp", "blur")]
        assert engine.apply_styles("a cat", "", ["Sharp"]) == ("a cat, sharp", "blur")
    finally:
        engine.close()
