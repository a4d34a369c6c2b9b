"""Builds the release archive: `dist/easel-<version>.zip`, which a user unzips and launches.

Usage: `python tools/make_release.py [--out DIR]` (default DIR: `dist/` in the repository).

The archive holds one folder, `easel-<version>/`, with the launchers, the code and the configs the
launchers need, and the files of `release/` (only the archive has them: START HERE.txt and the
READMEs that make `models/` and `outputs/` exist, ignored in the repository). Which files go in is
what git sees: tracked or new, never ignored, so a developer's models, outputs, caches and `.venv`
cannot leak into a download. The archive is reproducible (sorted entries, the HEAD commit's time on
every entry) and keeps the launchers executable for `unzip` and macOS Archive Utility.

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

# What the archive holds, as repository paths (files or folders). One list: the tests import it.
INCLUDED_PATHS = (
    "launch.sh",        # Linux starts here (./launch.sh); also macOS from a terminal
    "launch.command",   # macOS starts here: Finder runs a .command file on double-click
    "launch.bat",       # Windows starts here: double-click
    "bootstrap.py",     # the first-start install the launchers hand over to (.venv, torch, packages)
    "launch.py",        # starts the server and opens the browser, once installed
    "pyproject.toml",   # Easel's packages, installed into .venv on the first start
    "constraints.txt",  # the versions that first install pins, so a release installs what it was tested with
    "README.md",        # the full manual: models, flags, sharing, the API
    "app/",             # the engine
    "ui/",              # the Gradio pages
    "server/",          # the page and the HTTP API on one server
    "configs/",         # defaults, the model catalog, bundled model configs and tokenizer
)
# Files only the archive has, copied to its root (release/START HERE.txt -> easel-<version>/START HERE.txt).
RELEASE_ONLY_FOLDER = "release"
# What a user runs directly on Linux and macOS: without the bit, a double-click or ./launch.sh fails.
EXECUTABLE_PATHS = frozenset({"launch.sh", "launch.command"})
# Byte caches that git may not be told to ignore in every clone; they never belong in a download.
SKIPPED_FOLDER_NAMES = frozenset({"__pycache__"})
SKIPPED_SUFFIXES = (".pyc",)
# The zip format cannot store dates before 1980; used only when git has no commit to date from.
FALLBACK_DATE_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o644
EXECUTABLE_MODE = 0o755
FOLDER_MODE = 0o755
UNIX = 3  # ZipInfo.create_system: tells unzip and Archive Utility to honour the Unix mode bits
MSDOS_DIRECTORY = 0x10  # the DOS attribute Windows' Explorer looks for on a folder entry


class ReleaseError(Exception):
    """A problem that stops the build, as one sentence for the person building."""


def repository_root() -> Path:
    return Path(__file__).resolve().parents[1]


def project_version(root: Path) -> str:
    """[project] version of pyproject.toml: the release is named after it."""
    try:
        with open(root / "pyproject.toml", "rb") as file:
            return tomllib.load(file)["project"]["version"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as error:
        raise ReleaseError(f"Cannot read the version from {root / 'pyproject.toml'} ({error}); fix that file and run again.") from None


def git(root: Path, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        result = subprocess.run(["git", *args], cwd=root, input=stdin, capture_output=True, check=True)
    except FileNotFoundError:
        raise ReleaseError("git is not installed; install git and build the release from a git clone of Easel.") from None
    except subprocess.CalledProcessError as error:
        message = error.stderr.decode(errors="replace").strip()
        raise ReleaseError(f"git {' '.join(args)} failed in {root} ({message}).") from None
    return result.stdout


def require_git_checkout(root: Path) -> None:
    """Only git knows which files are ignored: without it a developer's models could ship."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    except FileNotFoundError:
        raise ReleaseError("git is not installed; install git and build the release from a git clone of Easel.") from None
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
        raise ReleaseError(f"{root} is not a git checkout; build the release from a git clone of Easel.")


def commit_date_time(root: Path) -> tuple[int, int, int, int, int, int]:
    """The HEAD commit's time (UTC): the same tree always gives the same bytes, whoever builds it."""
    try:
        seconds = int(git(root, "log", "-1", "--format=%ct").strip())
    except (ReleaseError, ValueError):  # a fresh repository without commits
        return FALLBACK_DATE_TIME
    return max(tuple(time.gmtime(seconds)[:6]), FALLBACK_DATE_TIME)


def is_skipped(relative: str) -> bool:
    path = PurePosixPath(relative)
    return path.suffix in SKIPPED_SUFFIXES or any(part in SKIPPED_FOLDER_NAMES for part in path.parts)


def git_listed_files(root: Path, paths: tuple[str, ...]) -> list[str]:
    """The files under `paths` that git tracks or would add (never ignored ones), present on disk."""
    output = git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *paths)
    listed = {name for name in output.decode("utf-8").split("\0") if name}
    # A tracked file deleted from the working tree is still listed by --cached.
    return sorted(name for name in listed if not is_skipped(name) and (root / name).is_file())


def missing_paths(root: Path, listed: list[str]) -> list[str]:
    """The included paths that would be absent from the archive (not on disk, or ignored by git)."""
    missing = []
    for included in INCLUDED_PATHS:
        prefix = included if included.endswith("/") else None
        present = any(name.startswith(prefix) for name in listed) if prefix else included in listed
        if not present:
            missing.append(included)
    return missing


def archive_name(relative: str) -> str:
    """Where a repository file goes inside the top folder: release/ files land at its root."""
    release_prefix = RELEASE_ONLY_FOLDER + "/"
    return relative[len(release_prefix):] if relative.startswith(release_prefix) else relative


def archive_members(root: Path) -> dict[str, str]:
    """{name inside the top folder: repository path} for every file the archive holds."""
    listed = git_listed_files(root, (*INCLUDED_PATHS, RELEASE_ONLY_FOLDER + "/"))
    missing = missing_paths(root, listed)
    if missing:
        names = ", ".join(path.rstrip("/") for path in missing)
        raise ReleaseError(
            f"Cannot build the release: {names} {'is' if len(missing) == 1 else 'are'} missing from {root} "
            "(or ignored by git); add it and run again."
        )
    if not any(name.startswith(RELEASE_ONLY_FOLDER + "/") for name in listed):
        raise ReleaseError(f"Cannot build the release: the folder {root / RELEASE_ONLY_FOLDER} with START HERE.txt is missing.")
    members: dict[str, str] = {}
    for relative in listed:
        name = archive_name(relative)
        if name in members:
            raise ReleaseError(f"Cannot build the release: {relative} and {members[name]} would both be {name} in the archive; rename one.")
        members[name] = relative
    return members


def folder_names(file_names: list[str]) -> set[str]:
    """Every folder above the files (so unzip tools create folders with the right mode)."""
    folders = set()
    for name in file_names:
        folders.update(str(parent) for parent in PurePosixPath(name).parents if str(parent) != ".")
    return folders


def file_mode(relative: str) -> int:
    return EXECUTABLE_MODE if relative in EXECUTABLE_PATHS else FILE_MODE


def zip_info(name: str, date_time: tuple[int, ...], mode: int, is_folder: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=date_time)
    info.create_system = UNIX
    kind = stat.S_IFDIR if is_folder else stat.S_IFREG
    info.external_attr = ((kind | mode) << 16) | (MSDOS_DIRECTORY if is_folder else 0)
    info.compress_type = zipfile.ZIP_STORED if is_folder else zipfile.ZIP_DEFLATED
    return info


def write_archive(root: Path, target: Path, top: str, members: dict[str, str], date_time: tuple[int, ...]) -> None:
    """Folders and files in sorted order (reproducible); written beside the target, then moved in."""
    entries = {f"{top}/": None}
    entries.update({f"{top}/{folder}/": None for folder in folder_names(list(members))})
    entries.update({f"{top}/{name}": relative for name, relative in members.items()})
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        with zipfile.ZipFile(temp_name, "w") as archive:
            for name in sorted(entries):
                relative = entries[name]
                if relative is None:
                    archive.writestr(zip_info(name, date_time, FOLDER_MODE, is_folder=True), b"")
                else:
                    data = (root / relative).read_bytes()
                    archive.writestr(zip_info(name, date_time, file_mode(relative), is_folder=False), data, compresslevel=9)
        os.replace(temp_name, target)
    finally:
        Path(temp_name).unlink(missing_ok=True)


def build_release(root: Path, out_dir: Path) -> Path:
    """Write `out_dir/easel-<version>.zip` from the repository at `root`; its path. Raises ReleaseError."""
    root = Path(root).resolve()
    require_git_checkout(root)
    top = f"easel-{project_version(root)}"
    members = archive_members(root)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{top}.zip"
        write_archive(root, target, top, members, commit_date_time(root))
    except OSError as error:
        raise ReleaseError(f"Cannot write the archive into {out_dir} ({error.strerror or error}); choose another --out folder.") from None
    return target


def main(argv: list[str] | None = None) -> int:
    root = repository_root()
    parser = argparse.ArgumentParser(description="Build dist/easel-<version>.zip, the archive users unzip and launch.")
    parser.add_argument("--out", type=Path, default=root / "dist", help="folder for the archive (default: dist/ in the repository)")
    args = parser.parse_args(argv)
    try:
        target = build_release(root, args.out)
    except ReleaseError as error:
        print(f"make_release: {error}", file=sys.stderr)
        return 1
    print(f"{target} ({target.stat().st_size / 1_000_000:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
