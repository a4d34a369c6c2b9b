"""launch.sh and launch.bat: thin, equal in behaviour, and checked without Windows.

Both only find a Python and hand every argument to bootstrap.py, which does the steps (venv,
PyTorch choice, stamp, log) once for both (tests/unit/test_bootstrap.py). Here: shellcheck on the
shell scripts, launch.sh run for real on a machine without a usable Python, and a static reading of
launch.bat (quoting, the same Python discovery, every flag passed on, a pause on every failure).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bootstrap

REPO = Path(__file__).resolve().parents[2]
SHELL_SCRIPTS = ("launch.sh", "launch.command", "test.sh")
VERSIONS = [f"{major}.{minor}" for major, minor in bootstrap.SUPPORTED_PYTHONS]
VERSIONS_IN_WORDS = f"{', '.join(sorted(VERSIONS)[:-1])} or {sorted(VERSIONS)[-1]}"


def bat_lines() -> list[str]:
    return (REPO / "launch.bat").read_bytes().decode("ascii").split("\r\n")


# --- launch.sh ---


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shellcheck_finds_nothing(script):
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (test.sh installs Debian's package when run as root)")
    answer = subprocess.run(["shellcheck", script], cwd=REPO, capture_output=True, text=True)
    assert answer.returncode == 0, answer.stdout


def test_launch_sh_tries_the_supported_pythons_in_bootstraps_order():
    names = re.search(r"^PYTHON_NAMES=\((.*)\)$", (REPO / "launch.sh").read_text(), re.M).group(1).split()
    assert names[:len(VERSIONS)] == [f"python{version}" for version in VERSIONS]
    assert names[len(VERSIONS):] == ["python3", "python"]


def bin_folder_without_python(tmp_path: Path, fake_python_version: str | None) -> Path:
    """A PATH with the few tools launch.sh uses and, at most, a python3 too old for Easel."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("dirname", "uname", "bash"):
        (folder / tool).symlink_to(shutil.which(tool))
    if fake_python_version:
        fake = folder / "python3"
        fake.write_text(f"#!{shutil.which('bash')}\n"
                        f'[ "$1" = --version ] && echo "Python {fake_python_version}"\nexit 1\n')
        fake.chmod(0o755)
    return folder


def test_without_a_usable_python_launch_sh_says_what_to_install(tmp_path):
    folder = bin_folder_without_python(tmp_path, "3.9.6")
    answer = subprocess.run([str(folder / "bash"), str(REPO / "launch.sh"), "--demo"], capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL,
                            env={"PATH": str(folder), "HOME": str(tmp_path)})
    assert answer.returncode == 1
    assert f"Easel needs Python {VERSIONS_IN_WORDS}" in answer.stdout
    assert "(it has Python 3.9.6)" in answer.stdout
    assert "https://www.python.org/downloads/" in answer.stdout
    assert "EASEL_PYTHON=" in answer.stdout


def test_easel_python_names_a_python_outside_the_path(tmp_path):
    folder = bin_folder_without_python(tmp_path, None)
    answer = subprocess.run([str(folder / "bash"), str(REPO / "launch.sh"), "--help"], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL,
                            env={"PATH": str(folder), "HOME": str(tmp_path), "EASEL_PYTHON": sys.executable})
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert "--reinstall" in answer.stdout and "--listen" in answer.stdout


# --- launch.bat, read ---


def test_launch_bat_has_windows_line_endings():
    raw = (REPO / "launch.bat").read_bytes()
    assert raw.count(b"\n") == raw.count(b"\r\n") > 10  # cmd.exe mis-reads labels in LF-only files


def test_launch_bat_quotes_every_path():
    path_variables = ("%~dp0", "%EASEL_PYTHON%")
    for number, line in enumerate(bat_lines(), 1):
        if line.lower().startswith("rem ") or line.lower().startswith("echo "):
            continue
        for variable in path_variables:
            for match in re.finditer(re.escape(variable), line):
                assert line[:match.start()].count('"') % 2 == 1, f"line {number} leaves a path unquoted: {line}"
    assert 'cd /d "%~dp0"' in bat_lines()


def test_launch_bat_tries_the_same_pythons_in_the_same_order():
    tried = re.findall(r"call :try_python py -(\d+\.\d+)$", "\n".join(bat_lines()), re.M)
    assert tried == VERSIONS
    assert "if not defined PYTHON_CMD call :try_python python" in bat_lines()
    assert any(line.startswith("%* bootstrap.py --check-python") for line in bat_lines())


def test_launch_bat_passes_every_argument_to_bootstrap_and_parses_none_itself():
    text = "\n".join(bat_lines())
    assert "%PYTHON_CMD% bootstrap.py %*" in bat_lines()
    assert "shift" not in text.lower() and "%1" not in text  # no flag of its own to lose
    assert "pip" not in text.lower()  # the install steps are bootstrap.py's, the same as launch.sh's
    assert 'exec "$python" bootstrap.py "$@"' in (REPO / "launch.sh").read_text()


def test_every_launch_bat_failure_pauses_before_the_window_closes():
    lines = bat_lines()
    failing_exits = [number for number, line in enumerate(lines) if line.strip() == "exit /b 1"]
    assert failing_exits
    for number in failing_exits:
        block = lines[max(line for line in range(number) if lines[line].startswith(":")):number]
        assert "pause" in block, f"exit at line {number + 1} closes the window without a pause"
    call_line = lines.index("%PYTHON_CMD% bootstrap.py %*")
    assert lines[call_line + 1] == "if errorlevel 1 goto :failed"


def test_launch_bat_labels_exist_for_every_goto_and_call():
    lines = bat_lines()
    labels = {line[1:].lower() for line in lines if line.startswith(":")}
    for line in lines:
        for target in re.findall(r"(?:goto|call) :(\w+)", line, re.I):
            assert target.lower() in labels, line


def test_both_no_python_screens_name_the_versions_and_the_link():
    bat = "\n".join(bat_lines())
    sh = (REPO / "launch.sh").read_text()
    for text in (bat, sh):
        assert f"Easel needs Python {VERSIONS_IN_WORDS}" in text
        assert "https://www.python.org/downloads/" in text
    assert "winget install -e --id Python.Python.3.12" in bat
    assert "pause" in bat.split("\n:no_python\n", 1)[1].split("\n:", 1)[0]


def test_launch_sh_and_launch_command_are_executable_in_git():
    listed = subprocess.run(["git", "ls-files", "-s", "launch.sh", "test.sh"], cwd=REPO, capture_output=True,
                            text=True).stdout
    assert all(line.startswith("100755") for line in listed.splitlines()), listed
    for name in ("launch.sh", "launch.command"):
        assert os.access(REPO / name, os.X_OK), name


def test_launch_sh_typed_with_sh_restarts_itself_in_bash():
    shell = shutil.which("dash") or shutil.which("sh")
    answer = subprocess.run([shell, "launch.sh", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, answer.stderr
    assert "--reinstall" in answer.stdout
