"""constraints.txt, the one lock every install uses (tools/lock_deps.py writes it), against
pyproject.toml and against the venv the tests run in: a lock that drifted from either would make
users install versions CI never ran."""

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LINUX_X86_64_PY311 = {
    **default_environment(),
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def constraint_lines() -> list[Requirement]:
    lines = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def direct_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(text) for text in project["dependencies"] + project["optional-dependencies"]["test"]]


def pins_on_linux_py311() -> dict[str, list[Requirement]]:
    pins: dict[str, list[Requirement]] = {}
    for requirement in constraint_lines():
        if requirement.marker is None or requirement.marker.evaluate(LINUX_X86_64_PY311):
            pins.setdefault(canonicalize_name(requirement.name), []).append(requirement)
    return pins


def pinned_version(requirement: Requirement) -> str:
    (spec,) = requirement.specifier
    return spec.version


def test_every_line_is_an_exact_pin():
    for requirement in constraint_lines():
        operators = [spec.operator for spec in requirement.specifier]
        assert operators == ["=="], f"{requirement} is not a name==version pin"


@pytest.mark.parametrize("requirement", direct_requirements(), ids=str)
def test_each_direct_dependency_has_one_pin_within_pyproject_range(requirement):
    pins = pins_on_linux_py311().get(canonicalize_name(requirement.name), [])
    assert len(pins) == 1, f"{requirement.name}: {len(pins)} pins apply on Linux x86_64 / Python 3.11"
    version = pinned_version(pins[0])
    assert requirement.specifier.contains(version, prereleases=True), (
        f"{requirement.name}=={version} is outside pyproject's {requirement.specifier}"
    )


def test_torch_and_torchvision_pins_apply_everywhere():
    lines = {canonicalize_name(r.name): r for r in constraint_lines()}
    assert str(lines["torch"]) == "torch==2.14.1"
    assert str(lines["torchvision"]) == "torchvision==0.29.1"


def test_direct_dependencies_pinned_at_the_versions_installed_here():
    """CI tests what is installed in this venv; users get what constraints.txt pins."""
    pins = pins_on_linux_py311()
    drifted = []
    for requirement in direct_requirements():
        try:
            installed = Version(metadata.version(requirement.name))
        except metadata.PackageNotFoundError:
            continue
        pinned = Version(pinned_version(pins[canonicalize_name(requirement.name)][0]))
        # A torch from the PyTorch index is 2.14.1+cu128 or +cpu; `torch==2.14.1` accepts those.
        if installed.public != pinned.public:
            drifted.append(f"{requirement.name}: installed {installed}, pinned {pinned}")
    assert not drifted, "constraints.txt drifted from this venv: " + "; ".join(drifted)


# tools/lock_deps.py --check-wheels decides which Pythons the launchers accept: its wheel matching,
# on file lists shaped like PyPI's (no network).


def wheel_files(*names: str) -> list[dict]:
    return [{"filename": name} for name in names]


def test_check_wheels_matches_wheels_as_pip_would():
    from tools.lock_deps import has_wheel

    abi3 = wheel_files("opencv-5.0-cp37-abi3-win_amd64.whl", "opencv-5.0-cp37-abi3-macosx_13_0_arm64.whl")
    assert has_wheel(abi3, "3.14", "win_amd64") and has_wheel(abi3, "3.11", "macos_arm64")
    assert not has_wheel(abi3, "3.11", "linux_x86_64")
    linux = wheel_files("np-2.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl")
    assert has_wheel(linux, "3.12", "linux_x86_64")
    assert not has_wheel(linux, "3.13", "linux_x86_64") and not has_wheel(linux, "3.12", "linux_aarch64")
    assert not has_wheel(wheel_files("x-1-cp311-cp311-manylinux_2_34_x86_64.whl"), "3.11", "linux_x86_64")
    assert not has_wheel(wheel_files("x-1-cp311-cp311-macosx_10_9_x86_64.whl"), "3.11", "macos_arm64")
    assert has_wheel(wheel_files("x-1-cp311-cp311-macosx_10_9_universal2.whl"), "3.11", "macos_arm64")
    pure = [{"filename": "p-1-py3-none-any.whl", "requires-python": ">=3.12"}]
    assert has_wheel(pure, "3.12", "win_amd64") and not has_wheel(pure, "3.11", "win_amd64")


def test_check_wheels_skips_lines_whose_marker_is_false():
    from tools.lock_deps import Pin, platform_gaps

    triton = Pin("triton", "3.8.0", "sys_platform == 'linux'")
    files = {triton: wheel_files("triton-3.8.0-cp311-cp311-manylinux_2_28_x86_64.whl")}
    assert platform_gaps([triton], files, "3.11", "win_amd64").needs_compiler == []
    assert platform_gaps([triton], files, "3.11", "linux_aarch64").needs_compiler == ["triton==3.8.0"]


def test_check_wheels_tells_pure_python_sdists_from_compiled_ones():
    from tools.lock_deps import Pin, platform_gaps

    antlr = Pin("antlr4-python3-runtime", "4.9.3", "")
    compiled = Pin("psutil", "5.9.0", "")
    files = {antlr: wheel_files("antlr4-python3-runtime-4.9.3.tar.gz"), compiled: wheel_files("psutil-5.9.0.tar.gz")}
    gaps = platform_gaps([antlr, compiled], files, "3.12", "macos_arm64")
    assert gaps.pure_sdists == ["antlr4-python3-runtime==4.9.3"]
    assert gaps.needs_compiler == ["psutil==5.9.0"]
