"""One lock of every Python package Easel installs: constraints.txt at the repo root.

Users, CI and developers all install with `pip install -c constraints.txt ...`, so everyone gets the
versions the tests ran against, on Windows, macOS and Linux alike. The file is universal: uv resolves
pyproject.toml (all extras) once for every platform and Python that pyproject allows, and writes an
environment marker on the lines that apply only somewhere (nvidia-* only on Linux, colorama only on
Windows...).

    python tools/lock_deps.py                 # regenerate; keeps the pins already there
    python tools/lock_deps.py --upgrade       # regenerate at the newest versions pyproject allows
    python tools/lock_deps.py --check-wheels  # which pins would need a source build, per Python/platform

Regenerating prefers the versions already in constraints.txt, so it changes nothing unless
pyproject.toml changed. `--prefer-installed` prefers the versions installed in the Python running this
script instead (to lock exactly what a tested venv holds).

Only the standard library and the `uv` executable (pip install uv) are needed; `packaging` is used
for environment markers and versions when it can be imported, with a small fallback otherwise.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from tools/: bootstrap.py is one folder up

import bootstrap  # noqa: E402  (after the path above)

PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "constraints.txt"

HEADER = """\
# Easel's pinned versions of every Python package it installs, for every platform and Python.
# The launchers install with `pip install -c constraints.txt ...` (CI and developers too), so
# everyone runs the versions the tests ran against.
# This is a constraints file, not a requirements file: a line only pins a package that something
# else asks for (the nvidia-* lines apply only where torch asks for them), and a line whose
# environment marker is false on a machine is skipped there.
# Do not edit by hand. Regenerate after changing pyproject.toml with
#     python tools/lock_deps.py            (needs uv: pip install uv; --upgrade for newest versions)
# and check that every pin has a wheel everywhere with
#     python tools/lock_deps.py --check-wheels
"""

# The Pythons the launchers accept (bootstrap.py decides); a gap on one of these fails --check-wheels.
# PROBE_PYTHONS are only reported, to see whether the next Python could be accepted.
SUPPORTED_PYTHONS = tuple(f"{major}.{minor}" for major, minor in sorted(bootstrap.SUPPORTED_PYTHONS))
PROBE_PYTHONS = ("3.15",)

# The oldest systems assumed: torch itself ships manylinux_2_28 and macosx_14_0 wheels only.
GLIBC = (2, 28)
MACOS = (14, 0)

PLATFORMS = {
    "win_amd64": {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64", "os_name": "nt"},
    "macos_arm64": {
        "sys_platform": "darwin",
        "platform_system": "Darwin",
        "platform_machine": "arm64",
        "os_name": "posix",
    },
    "linux_x86_64": {
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
    },
    "linux_aarch64": {
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "aarch64",
        "os_name": "posix",
    },
}

# Sdist-only pins that are pure Python (pip builds them without a compiler), for packages with no
# wheel at all to tell it from. Add one only after reading its setup: no ext_modules, no Cython.
PURE_PYTHON_SDISTS = {
    "antlr4-python3-runtime",  # omegaconf's grammar runtime; plain .py files
}

SIMPLE_API = "https://pypi.org/simple/{}/"


# ---------------------------------------------------------------------------------------------
# The lock file


@dataclass(frozen=True)
class Pin:
    name: str  # normalized (PEP 503)
    version: str
    marker: str  # "" when the line applies everywhere


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> list[Pin]:
    """The `name==version ; marker` lines of a constraints file."""
    pins = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        requirement, _, marker = line.partition(";")
        name, sep, version = requirement.partition("==")
        if not sep:
            raise ValueError(f"{path.name}: not a pin: {raw!r}")
        pins.append(Pin(normalize(name.strip()), version.strip(), marker.strip()))
    return pins


def lowest_python(pyproject: Path) -> str:
    """The X.Y of pyproject's requires-python lower bound (">=3.11" -> "3.11")."""
    spec = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["requires-python"]
    found = re.search(r">=\s*(\d+\.\d+)", spec)
    if not found:
        raise SystemExit(f"pyproject.toml's requires-python ({spec!r}) needs a '>=X.Y' lower bound.")
    return found.group(1)


def find_uv(explicit: str | None) -> str:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / ("uv.exe" if os.name == "nt" else "uv")
    found = shutil.which("uv") or (str(beside) if beside.exists() else None)
    if not found:
        raise SystemExit("uv is needed to regenerate the lock: pip install uv")
    return found


def installed_pins() -> str:
    """`name==version` of every distribution installed in this Python (minus this project)."""
    # A torch from the PyTorch index is 2.14.1+cu128: PyPI has 2.14.1, and `torch==2.14.1` accepts both.
    versions = {
        normalize(d.metadata["Name"]): d.version.split("+")[0] for d in metadata.distributions() if d.metadata["Name"]
    }
    versions.pop("easel", None)
    return "".join(f"{name}=={version}\n" for name, version in sorted(versions.items()))


def compile_lock(pyproject: Path, out: Path, uv: str, upgrade: bool, prefer_installed: bool) -> None:
    """Resolve pyproject for every platform into `out`, preferring the pins already in `out`."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "constraints.txt"
        if prefer_installed:
            work.write_text(installed_pins(), encoding="utf-8")
        elif out.exists():
            shutil.copyfile(out, work)  # uv keeps the versions in its -o file unless told to upgrade
        command = [
            uv, "pip", "compile", str(pyproject), "--all-extras", "--universal",
            "--python-version", lowest_python(pyproject),
            "--no-header", "--no-annotate", "--quiet", "-o", str(work),
        ]  # fmt: skip
        if upgrade:
            command.append("--upgrade")
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            sys.stderr.write(result.stderr)
            raise SystemExit("uv could not resolve pyproject.toml; its message is above.")
        out.write_text(HEADER + work.read_text(encoding="utf-8"), encoding="utf-8", newline="\n")


# ---------------------------------------------------------------------------------------------
# Environment markers and versions: `packaging` when importable, else a small evaluator that
# covers what uv writes (comparisons joined by and/or, parentheses).

try:
    from packaging.markers import Marker
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover - exercised only where packaging is missing
    Marker = SpecifierSet = Version = None


def marker_environment(python: str, platform: str) -> dict[str, str]:
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_version": "",
        "extra": "",
        **PLATFORMS[platform],
    }


def marker_applies(marker: str, env: dict[str, str]) -> bool:
    if not marker:
        return True
    if Marker is not None:
        return Marker(marker).evaluate(env)
    return _FallbackMarker(marker, env).evaluate()


class _FallbackMarker:
    TOKEN = re.compile(r"\s*(\(|\)|'[^']*'|\"[^\"]*\"|===|==|!=|<=|>=|~=|<|>|not in|in|and|or|[A-Za-z_.]+)")
    VERSION_VARS = {"python_version", "python_full_version"}

    def __init__(self, text: str, env: dict[str, str]):
        self.tokens = self.TOKEN.findall(text)
        self.env = env
        self.at = 0

    def evaluate(self) -> bool:
        value = self._or()
        if self.at != len(self.tokens):
            raise ValueError(f"cannot read marker: {' '.join(self.tokens)}")
        return value

    def _next(self) -> str:
        self.at += 1
        return self.tokens[self.at - 1]

    def _peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def _or(self) -> bool:
        value = self._and()
        while self._peek() == "or":
            self._next()
            value = self._and() or value
        return value

    def _and(self) -> bool:
        value = self._atom()
        while self._peek() == "and":
            self._next()
            value = self._atom() and value
        return value

    def _atom(self) -> bool:
        if self._peek() == "(":
            self._next()
            value = self._or()
            self._next()  # ")"
            return value
        left, op, right = self._next(), self._next(), self._next()
        versions = left in self.VERSION_VARS or right in self.VERSION_VARS
        return self._compare(self._value(left), op, self._value(right), versions)

    def _value(self, token: str) -> str:
        return token[1:-1] if token[0] in "'\"" else self.env.get(token, "")

    @staticmethod
    def _compare(left: str, op: str, right: str, versions: bool) -> bool:
        if op == "in":
            return left in right
        if op == "not in":
            return left not in right
        if versions:
            left, right = _version_key(left), _version_key(right)
        return {
            "==": left == right, "===": left == right, "!=": left != right, "<": left < right,
            "<=": left <= right, ">": left > right, ">=": left >= right, "~=": left >= right,
        }[op]  # fmt: skip


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def same_version(a: str, b: str) -> bool:
    if Version is not None:
        try:
            return Version(a) == Version(b)
        except InvalidVersion:
            pass
    return a.lower() == b.lower()


def python_allowed(requires_python: str | None, python: str) -> bool:
    if not requires_python or SpecifierSet is None:
        return True
    try:
        return SpecifierSet(requires_python).contains(f"{python}.0", prereleases=True)
    except ValueError:
        return True


# ---------------------------------------------------------------------------------------------
# Wheel tags


def wheel_tags(filename: str) -> list[tuple[str, str, str]]:
    """(python, abi, platform) tags of a wheel file name, compressed tag sets expanded."""
    parts = filename[: -len(".whl")].split("-")
    py, abi, plat = parts[-3:]
    return [(p, a, s) for p in py.split(".") for a in abi.split(".") for s in plat.split(".")]


def python_tag_fits(py: str, abi: str, python: str) -> bool:
    """Whether pip on CPython `python` (X.Y) accepts this (python, abi) tag pair."""
    major, minor = python.split(".")
    if abi == "none" and py.startswith("py"):  # py3, py311: pure Python, or no Python ABI
        digits = py[2:]
        return digits == major or (digits[:1] == major and digits[1:].isdigit() and int(digits[1:]) <= int(minor))
    if py == f"cp{major}{minor}" and abi in (f"cp{major}{minor}", "abi3", "none"):
        return True
    digits = py[3:]  # cp3X-abi3 works on every later 3.Y
    return abi == "abi3" and py.startswith(f"cp{major}") and digits.isdigit() and int(digits) <= int(minor)


def platform_tag_fits(tag: str, platform: str) -> bool:
    if tag == "any":
        return True
    if platform == "win_amd64":
        return tag == "win_amd64"
    if platform == "macos_arm64":
        found = re.fullmatch(r"macosx_(\d+)_(\d+)_(arm64|universal2)", tag)
        return bool(found) and (int(found[1]), int(found[2])) <= MACOS
    arch = platform.removeprefix("linux_")
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    found = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014|manylinux_(\d+)_(\d+))_" + arch, tag)
    if not found:
        return False
    glibc = legacy.get(found[1]) or (int(found[2]), int(found[3]))
    return glibc <= GLIBC


def has_wheel(files: list[dict], python: str, platform: str) -> bool:
    return any(
        python_tag_fits(py, abi, python) and platform_tag_fits(plat, platform)
        for f in files
        if f["filename"].endswith(".whl") and python_allowed(f.get("requires-python"), python)
        for py, abi, plat in wheel_tags(f["filename"])
    )


# ---------------------------------------------------------------------------------------------
# PyPI


def files_of(pin: Pin) -> list[dict]:
    """The non-yanked files PyPI holds for this exact pinned version."""
    request = urllib.request.Request(
        SIMPLE_API.format(pin.name), headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return []  # reported as "not on PyPI"
        raise
    return [f for f in files if not f.get("yanked") and same_version(file_version(f["filename"]), pin.version)]


def file_version(filename: str) -> str:
    if filename.endswith(".whl"):
        return filename.split("-")[1]
    stem = re.sub(r"\.(tar\.gz|tar\.bz2|tar\.xz|zip|tgz)$", "", filename)
    return stem.rsplit("-", 1)[-1]


def is_pure_python(pin: Pin, files: list[dict]) -> bool:
    wheels = [f["filename"] for f in files if f["filename"].endswith(".whl")]
    if wheels:
        return any(plat == "any" and abi == "none" for w in wheels for _, abi, plat in wheel_tags(w))
    return pin.name in PURE_PYTHON_SDISTS


@dataclass
class Gaps:
    needs_compiler: list[str]
    pure_sdists: list[str]


def check_wheels(pins: list[Pin]) -> int:
    with ThreadPoolExecutor(max_workers=16) as pool:
        files = dict(zip(pins, pool.map(files_of, pins)))
    failed = False
    for python in SUPPORTED_PYTHONS + PROBE_PYTHONS:
        probe = python in PROBE_PYTHONS
        covered = True
        for platform in PLATFORMS:
            gaps = platform_gaps(pins, files, python, platform)
            if gaps.needs_compiler:
                covered = False
                print(f"  Python {python} {platform}: no wheel, needs a compiler: {', '.join(gaps.needs_compiler)}")
            if gaps.pure_sdists:
                print(f"  Python {python} {platform}: sdist only, pure Python: builds without a compiler: "
                      f"{', '.join(gaps.pure_sdists)}")  # fmt: skip
        label = "probe" if probe else "supported"
        verdict = "every pin has a wheel (or a pure-Python sdist) on" if covered else "NOT covered by wheels on some of"
        print(f"Python {python} ({label}): {verdict} {', '.join(PLATFORMS)}")
        failed = failed or (not covered and not probe)
    if failed:
        print("Some pins need a source build on a supported Python; pick other versions or drop that Python.")
    return 1 if failed else 0


def platform_gaps(pins: list[Pin], files: dict[Pin, list[dict]], python: str, platform: str) -> Gaps:
    env = marker_environment(python, platform)
    gaps = Gaps([], [])
    for pin in pins:
        if not marker_applies(pin.marker, env) or has_wheel(files[pin], python, platform):
            continue
        if not files[pin]:
            gaps.needs_compiler.append(f"{pin.name}=={pin.version} (not on PyPI)")
        elif is_pure_python(pin, files[pin]):
            gaps.pure_sdists.append(f"{pin.name}=={pin.version}")
        else:
            gaps.needs_compiler.append(f"{pin.name}=={pin.version}")
    return gaps


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check-wheels", action="store_true", help="report pins without a wheel; no regeneration")
    parser.add_argument("--upgrade", action="store_true", help="let uv pick the newest versions pyproject allows")
    parser.add_argument("--prefer-installed", action="store_true", help="prefer the versions installed in this Python")
    parser.add_argument("--uv", help="path of the uv executable (default: on PATH or beside this Python)")
    parser.add_argument(
        "--pyproject", type=Path, default=PYPROJECT, help="pyproject.toml to lock (default: the repo's)"
    )
    parser.add_argument("--output", type=Path, default=CONSTRAINTS, help="constraints file (default: constraints.txt)")
    args = parser.parse_args(argv)
    if args.check_wheels:
        if not args.output.exists():
            raise SystemExit(f"{args.output} is missing: run python tools/lock_deps.py first.")
        return check_wheels(read_pins(args.output))
    compile_lock(args.pyproject.resolve(), args.output.resolve(), find_uv(args.uv), args.upgrade, args.prefer_installed)
    print(f"Wrote {args.output} ({len(read_pins(args.output))} pins).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
