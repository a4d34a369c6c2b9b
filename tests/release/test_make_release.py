"""The release archive (tools/make_release.py): built from this repository, it must hold what a user
needs to unzip and launch Easel, nothing git ignores or only developers use, keep the launchers
executable, be byte-identical when built twice, and run from wherever it is unzipped.

Also: the README.txt files it puts into models/ and outputs/ must be invisible to Easel's scanners.
"""

import os
import shutil
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

import pytest

import app
from app.images.store import OutputStore
from app.models.network_library import LORA_SUBFOLDERS, NetworkLibrary
from app.models.registry import ModelRegistry
from app.models.upscalers import UPSCALER_SUBFOLDERS
from tools.make_release import INCLUDED_PATHS, RELEASE_ONLY_FOLDER, ReleaseError, build_release

REPO = Path(__file__).resolve().parents[2]
RELEASE = REPO / RELEASE_ONLY_FOLDER
MODEL_FOLDERS = ("Stable-diffusion", "Lora", "embeddings", "VAE", "ESRGAN")
CODE_FOLDERS = ("app", "ui", "server", "configs")
DEVELOPER_ONLY = {"tests", "bench", "docs", "tools", ".ci", ".venv", ".cache", "dist", ".git", "test-artifacts"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def version() -> str:
    with open(REPO / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["version"]


def git_files(*paths: str) -> set[str]:
    """What git lists (tracked or new, not ignored) under `paths`, present on disk, minus byte caches."""
    output = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *paths],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode()
    return {
        name for name in output.split("\0")
        if name and (REPO / name).is_file() and "__pycache__" not in name.split("/") and not name.endswith(".pyc")
    }


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return build_release(REPO, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def names(archive) -> list[str]:
    """The entries' names below the top folder (folders end with '/')."""
    top = f"easel-{version()}/"
    with zipfile.ZipFile(archive) as opened:
        listed = opened.namelist()
    assert all(name.startswith(top) for name in listed), "everything must sit in one top folder"
    return [name[len(top):] for name in listed if name != top]


@pytest.fixture(scope="module")
def unzipped(archive, tmp_path_factory) -> Path:
    unzip = shutil.which("unzip")
    if unzip is None:
        pytest.skip("the unzip command is not installed")
    # A user's folder may have spaces and accents: the launchers and imports must not care.
    target = tmp_path_factory.mktemp("release") / "Mes images é"
    target.mkdir()
    subprocess.run([unzip, "-q", str(archive), "-d", str(target)], check=True)
    return target / f"easel-{version()}"


def test_the_archive_is_named_after_the_version(archive):
    assert archive.name == f"easel-{version()}.zip"
    assert version() == app.__version__


def test_every_included_path_is_there(names):
    for included in INCLUDED_PATHS:
        if included.endswith("/"):
            assert any(name.startswith(included) and not name.endswith("/") for name in names), included
        else:
            assert included in names, included


def test_every_code_file_git_lists_is_there(names):
    missing = git_files(*(f"{folder}/" for folder in CODE_FOLDERS)) - set(names)
    assert not missing


def test_the_archive_only_files_are_at_its_root(names):
    expected = {"START HERE.txt", "outputs/README.txt", *(f"models/{folder}/README.txt" for folder in MODEL_FOLDERS)}
    assert expected <= set(names)
    assert not any(name.startswith(RELEASE_ONLY_FOLDER + "/") for name in names)


def test_nothing_git_ignores_is_there(names):
    # models/ and outputs/ are ignored at the repository's root, so the archive's own README.txt files
    # there are checked under the name they have in the repository: release/...
    files = [name for name in names if not name.endswith("/")]
    sources = [f"{RELEASE_ONLY_FOLDER}/{name}" if (RELEASE / name).is_file() else name for name in files]
    assert all((REPO / source).is_file() for source in sources)
    checked = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(sources), capture_output=True, text=True,
    )
    assert checked.returncode == 1 and checked.stdout == "", checked.stdout  # 1: nothing is ignored


def test_nothing_only_developers_use_is_there(names):
    assert not {PurePosixPath(name).parts[0] for name in names} & DEVELOPER_ONLY
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert not [name for name in names if name.startswith("outputs/") and PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES]
    assert not [name for name in names if name.startswith("models/") and not name.endswith(("/", "/README.txt"))]


def test_the_launchers_are_executable_in_the_zip(archive):
    top = f"easel-{version()}/"
    with zipfile.ZipFile(archive) as opened:
        infos = {info.filename[len(top):]: info for info in opened.infolist()}
    for name, info in infos.items():
        mode = info.external_attr >> 16
        assert info.create_system == 3, name
        if name == "" or name.endswith("/"):  # "": the top folder itself
            assert stat.S_ISDIR(mode) and stat.S_IMODE(mode) == 0o755, name
        else:
            assert stat.S_ISREG(mode), name
            wanted = 0o755 if name in ("launch.sh", "launch.command") else 0o644
            assert stat.S_IMODE(mode) == wanted, name
    # Every folder has its own entry, so unzip tools make each one with the right mode.
    folders = {str(parent) + "/" for name in infos if name for parent in PurePosixPath(name).parents if str(parent) != "."}
    assert folders <= set(infos)


def test_the_launchers_are_executable_once_unzipped(unzipped):
    for name in ("launch.sh", "launch.command"):
        assert os.access(unzipped / name, os.X_OK), name
    assert not os.access(unzipped / "launch.py", os.X_OK)
    assert (unzipped / "START HERE.txt").is_file()
    assert (unzipped / "models" / "Stable-diffusion" / "README.txt").is_file()


def test_each_launcher_has_its_systems_line_endings(archive):
    """A launch.sh with CRLF fails in bash; a launch.bat with bare LF mis-reads labels in cmd.exe."""
    top = f"easel-{version()}/"
    with zipfile.ZipFile(archive) as opened:
        for name in ("launch.sh", "launch.command"):
            assert b"\r" not in opened.read(top + name), name
        bat = opened.read(top + "launch.bat")
        assert bat.count(b"\n") == bat.count(b"\r\n") > 0


def test_building_twice_gives_the_same_bytes(archive, tmp_path):
    again = build_release(REPO, tmp_path)
    assert again.read_bytes() == archive.read_bytes()


def test_the_unzipped_copy_imports_its_own_code(unzipped):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", "import launch, app.engine, ui.app, server.compose; print(app.__file__)"],
        cwd=unzipped, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip().splitlines()[-1]).resolve().is_relative_to(unzipped.resolve())


def test_the_builder_names_a_missing_file(tmp_path):
    """A launcher someone forgot must stop the build, not ship a release that cannot start."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "easel"\nversion = "9.9.9"\n')
    for included in INCLUDED_PATHS:
        if included != "launch.command":
            target = tmp_path / included / "x.py" if included.endswith("/") else tmp_path / included
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    (tmp_path / RELEASE_ONLY_FOLDER).mkdir()
    (tmp_path / RELEASE_ONLY_FOLDER / "START HERE.txt").touch()
    with pytest.raises(ReleaseError, match=r"launch\.command is missing"):
        build_release(tmp_path, tmp_path / "dist")
    (tmp_path / "launch.command").touch()
    built = build_release(tmp_path, tmp_path / "dist")
    assert built.name == "easel-9.9.9.zip"


def test_the_builder_wants_a_git_clone(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "easel"\nversion = "1"\n')
    with pytest.raises(ReleaseError, match="git clone"):
        build_release(tmp_path, tmp_path / "dist")


def test_the_readme_files_are_invisible_to_the_scanners(tmp_path):
    """The archive's README.txt files sit where Easel looks for models and pictures: none may show up
    as a model, a LoRA, an embedding, an upscaler, a picture or a broken file."""
    shutil.copytree(RELEASE / "models", tmp_path / "models")
    shutil.copytree(RELEASE / "outputs", tmp_path / "outputs")
    readme = (RELEASE / "outputs" / "README.txt").read_bytes()
    # The other folders Easel also reads, in case a README is ever put there too.
    for folder in (*LORA_SUBFOLDERS, *UPSCALER_SUBFOLDERS):
        (tmp_path / "models" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "models" / folder / "README.txt").write_bytes(readme)
    for category in ("txt2img-images", "img2img-images", "extras-images"):
        (tmp_path / "outputs" / category / "2026-01-01").mkdir(parents=True)
        (tmp_path / "outputs" / category / "2026-01-01" / "README.txt").write_bytes(readme)
    assert sorted(path.parent.name for path in (tmp_path / "models").glob("*/README.txt")) == sorted(
        {*MODEL_FOLDERS, *LORA_SUBFOLDERS, *UPSCALER_SUBFOLDERS}
    )

    registry = ModelRegistry(tmp_path / "models")
    assert registry.refresh() == []
    assert registry.vaes == [] and registry.upscalers == []
    library = NetworkLibrary(tmp_path / "models")
    assert library.refresh_loras() == []
    assert library.refresh_embeddings() == []
    assert OutputStore(tmp_path / "outputs").recent() == []
