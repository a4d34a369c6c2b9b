"""The project's shape (docs/ARCHITECTURE.md): the Engine is the only door for the UI, the API and
the launcher; the engine never imports the UI or gradio; modules stay small enough to read."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EDGES = [*sorted((ROOT / "ui").rglob("*.py")), *sorted((ROOT / "app" / "api").rglob("*.py")),
         *sorted((ROOT / "server").rglob("*.py")), ROOT / "launch.py"]
ENGINE_MODULES = sorted((ROOT / "app").rglob("*.py"))
REACHING_PAST = re.compile(r"engine\.(models|store|manager|registry|queue)\b")
LONG_MODULE_LINES = 300


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", EDGES, ids=relative)
def test_the_ui_the_api_and_the_launcher_reach_nothing_past_the_engine(path):
    found = [f"{relative(path)}:{number}: {line.strip()}"
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if REACHING_PAST.search(line)]
    assert not found, "use an Engine method instead:\n" + "\n".join(found)


def test_the_check_finds_a_caller_that_reaches_past_the_engine():
    assert REACHING_PAST.search("names = engine.models.registry.entries")
    assert REACHING_PAST.search("engine.store.recent()")
    assert not REACHING_PAST.search("engine.model_folders()")


@pytest.mark.parametrize("path", ENGINE_MODULES, ids=relative)
def test_the_engine_imports_neither_gradio_nor_the_ui_nor_the_server(path):
    upward = {name for name in imported_modules(path) if name.split(".")[0] in ("gradio", "ui", "server")}
    assert not upward, f"{relative(path)} imports {sorted(upward)}"


@pytest.mark.parametrize("path", ENGINE_MODULES, ids=relative)
def test_engine_modules_are_short_or_say_why_they_are_long(path):
    text = path.read_text(encoding="utf-8")
    lines = text.count("\n")
    docstring = ast.get_docstring(ast.parse(text)) or ""
    assert lines <= LONG_MODULE_LINES or "Longer than" in docstring, (
        f"{relative(path)} has {lines} lines: split it by job, or say at its top why it is one piece"
    )
