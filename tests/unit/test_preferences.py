"""The page's last-used values survive a restart; a damaged file never stops Easel."""

import json

from app.preferences import Preferences
from ui.widgets import DEFAULTS, remembered


def test_values_survive_a_restart(tmp_path):
    path = tmp_path / "prefs.json"
    Preferences(path).remember("txt2img", {"prompt": "a fox", "steps": 12, "sampler": "Euler a", "image": object()})
    again = Preferences(path)
    assert again.section("txt2img") == {"prompt": "a fox", "steps": 12, "sampler": "Euler a"}
    assert again.section("img2img") == {}


def test_forget_returns_a_section_to_nothing(tmp_path):
    path = tmp_path / "prefs.json"
    preferences = Preferences(path)
    preferences.remember("txt2img", {"prompt": "x"})
    preferences.forget("txt2img")
    assert Preferences(path).section("txt2img") == {}


def test_a_damaged_file_is_set_aside_and_easel_starts_clean(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_text("{not json")
    preferences = Preferences(path)
    assert preferences.section("txt2img") == {}
    assert (tmp_path / "prefs.damaged.json").read_text() == "{not json"
    preferences.remember("txt2img", {"steps": 5})
    assert json.loads(path.read_text()) == {"txt2img": {"steps": 5}}


def test_an_unwritable_place_keeps_the_values_for_this_session_and_writes_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    preferences = Preferences(blocker / "prefs.json")  # its folder is a file: nothing can be written
    preferences.remember("txt2img", {"steps": 5})  # does not raise
    assert preferences.section("txt2img") == {"steps": 5}  # the page still gets them back until a restart
    assert blocker.read_text() == "" and list(tmp_path.iterdir()) == [blocker]


def test_remembered_values_fill_the_defaults_and_ignore_unknown_keys():
    values = remembered({"steps": 9, "no-such-field": 1})
    assert values["steps"] == 9 and values["width"] == DEFAULTS["width"]
    assert "no-such-field" not in values
