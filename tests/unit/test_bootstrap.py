"""bootstrap.py: the launchers' shared steps, without installing anything (tests/release installs for real)."""

import http.server
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import bootstrap
from bootstrap import LauncherError, Machine, Options, parse_options, torch_build

ROOT = Path(bootstrap.__file__).parent

LINUX = Machine("Linux", "x86_64", nvidia_driver=None, amd_gpu=False)
WINDOWS = Machine("Windows", "amd64", nvidia_driver=None, amd_gpu=False)
MAC = Machine("Darwin", "arm64", nvidia_driver=None, amd_gpu=False)


def with_driver(machine: Machine, driver: int | None = None, amd: bool = False) -> Machine:
    return Machine(machine.system, machine.arch, driver, amd)


# --- flags ---


def test_launcher_flags_are_taken_and_the_rest_goes_to_launch_py_in_order():
    options = parse_options(["--demo", "--torch", "cpu", "--port", "7861", "--reinstall", "--no-browser",
                             "--setup-only", "--with-tests"])
    assert (options.torch, options.reinstall, options.setup_only, options.with_tests) == ("cpu", True, True, True)
    assert options.app_args == ["--demo", "--port", "7861", "--no-browser"]
    assert parse_options(["--torch=rocm"]).torch == "rocm"
    assert parse_options([]).torch == "auto"


@pytest.mark.parametrize("argv, flag", [
    ([], None),
    (["--demo", "--clusterish"], None),
    (["--with-cluster", "--setup-only"], "--with-cluster"),
    (["--cluster", "auto", "--listen"], "--cluster"),
    (["--cluster=local:2"], "--cluster"),
    (["--cluster", "ray://10.0.0.5:10001", "--with-cluster"], "--with-cluster"),
])
def test_the_cluster_packages_are_wanted_only_when_a_flag_asks(argv, flag):
    options = parse_options(argv)
    assert bootstrap.cluster_flag(options) == flag
    assert "--with-cluster" not in options.app_args
    assert [arg for arg in argv if arg.startswith("--cluster")] == \
        [arg for arg in options.app_args if arg.startswith("--cluster")]  # launch.py still gets --cluster


def test_cluster_keeps_its_value_for_launch_py_in_order():
    options = parse_options(["--demo", "--cluster", "local:2", "--torch", "cpu", "--listen"])
    assert options.app_args == ["--demo", "--cluster", "local:2", "--listen"]
    assert parse_options(["--with-cluster"]).with_cluster


@pytest.mark.parametrize("argv", [["--torch", "gpu"], ["--torch"], ["--torch="]])
def test_a_wrong_torch_choice_is_a_sentence(argv):
    with pytest.raises(LauncherError, match="--torch takes one of auto, cpu, cuda, rocm"):
        parse_options(argv)


# --- which PyTorch ---


@pytest.mark.parametrize("machine, choice, kind, index", [
    (LINUX, "auto", "cpu", bootstrap.CPU_INDEX),
    (with_driver(LINUX, 590), "auto", "cuda", None),  # PyPI's Linux build is CUDA 13
    (with_driver(LINUX, 560), "auto", "cuda", bootstrap.CUDA12_INDEX),
    (with_driver(LINUX, amd=True), "auto", "rocm", bootstrap.ROCM_INDEX),
    (with_driver(LINUX, 590), "cpu", "cpu", bootstrap.CPU_INDEX),
    (LINUX, "cuda", "cuda", None),
    (Machine("Linux", "aarch64", None, False), "auto", "cpu", None),
    (WINDOWS, "auto", "cpu", None),  # PyPI has only the CPU build for Windows
    (with_driver(WINDOWS, 590), "auto", "cuda", bootstrap.CUDA13_INDEX),
    (with_driver(WINDOWS, 570), "auto", "cuda", bootstrap.CUDA12_INDEX),
    (MAC, "auto", "default", None),
    (MAC, "cpu", "default", None),
])
def test_the_torch_build_fits_the_hardware(machine, choice, kind, index):
    build = torch_build(choice, machine)
    assert (build.kind, build.index_url) == (kind, index)
    assert build.fallback_to_pypi == (index == bootstrap.CPU_INDEX)


@pytest.mark.parametrize("machine, choice, words", [
    (Machine("Darwin", "x86_64", None, False), "auto", "Apple silicon"),
    (MAC, "cuda", "not available on a Mac"),
    (WINDOWS, "rocm", "only for Linux"),
    (with_driver(LINUX, 470), "auto", "too old"),
])
def test_a_build_that_cannot_work_is_refused_with_what_to_do(machine, choice, words):
    with pytest.raises(LauncherError, match=words):
        torch_build(choice, machine)


def test_easel_torch_index_replaces_the_index(monkeypatch):
    monkeypatch.setenv("EASEL_TORCH_INDEX", "https://mirror.example/whl/cu128")
    build = bootstrap.forced_index(torch_build("auto", with_driver(WINDOWS, 590)))
    assert (build.kind, build.index_url) == ("cuda", "https://mirror.example/whl/cu128")


class _Answers404(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_an_index_counts_as_reachable_when_it_answers_at_all():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Answers404)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert bootstrap.index_reachable(f"http://127.0.0.1:{server.server_port}/whl/cpu", timeout=5)
    finally:
        server.shutdown()
    closed = http.server.HTTPServer(("127.0.0.1", 0), _Answers404)
    port = closed.server_port
    closed.server_close()
    assert not bootstrap.index_reachable(f"http://127.0.0.1:{port}/whl/cpu", timeout=5)


def test_the_large_build_is_announced_with_its_size():
    notice = bootstrap.large_build_notice(bootstrap.CPU_INDEX)
    assert "download.pytorch.org" in notice
    assert "3 GB to download" in notice and "5.5 GB on disk" in notice


# --- what is installed ---


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """bootstrap's paths pointed at an empty Easel folder with the real pin files."""
    for name in ("constraints.txt", "pyproject.toml"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    venv = tmp_path / ".venv"
    monkeypatch.setattr(bootstrap, "ROOT", tmp_path)
    monkeypatch.setattr(bootstrap, "VENV", venv)
    monkeypatch.setattr(bootstrap, "STAMP", venv / "easel-install.json")
    monkeypatch.setattr(bootstrap, "LOG", tmp_path / "logs" / "install.log")
    monkeypatch.setattr(bootstrap, "CONSTRAINTS", tmp_path / "constraints.txt")
    monkeypatch.setattr(bootstrap, "PYPROJECT", tmp_path / "pyproject.toml")
    return tmp_path


def installed(folder: Path, **stamp) -> dict:
    python = bootstrap.venv_python()
    python.parent.mkdir(parents=True)
    python.write_text("")
    full = {"complete": True, "torch": "cpu", "requirements": bootstrap.requirements_digest(),
            "folder": str(folder), "tests": False, **stamp}
    bootstrap.write_stamp(full)
    return bootstrap.read_stamp()


def test_nothing_is_installed_when_nothing_changed(folder):
    stamp = installed(folder)
    assert bootstrap.install_reason(Options(), stamp) is None
    assert bootstrap.install_reason(Options(torch="cpu"), stamp) is None


def test_each_change_that_needs_an_install_is_named(folder):
    assert bootstrap.install_reason(Options(), {}) == "first start"
    stamp = installed(folder)
    assert bootstrap.install_reason(Options(reinstall=True), stamp) == "you asked for --reinstall"
    assert bootstrap.install_reason(Options(torch="cuda"), stamp) == "you asked for --torch cuda"
    assert bootstrap.install_reason(Options(with_tests=True), stamp) == "the test packages are wanted"
    assert bootstrap.install_reason(parse_options(["--cluster", "auto"]), stamp) == \
        "the cluster packages are wanted (--cluster)"
    assert bootstrap.install_reason(parse_options(["--cluster=local:2"]), stamp) == \
        "the cluster packages are wanted (--cluster)"
    assert bootstrap.install_reason(Options(with_cluster=True), stamp) == \
        "the cluster packages are wanted (--with-cluster)"
    assert bootstrap.install_reason(Options(), {**stamp, "complete": False}) == "the last install did not finish"
    assert bootstrap.install_reason(Options(), {**stamp, "folder": "/elsewhere"}) == "the Easel folder moved"
    (folder / "constraints.txt").write_text((folder / "constraints.txt").read_text() + "\n# changed\n")
    assert bootstrap.install_reason(Options(), stamp) == "Easel's package list changed"


def test_the_cluster_packages_once_installed_need_no_install(folder):
    stamp = installed(folder, cluster=True)
    assert bootstrap.install_reason(parse_options(["--cluster", "auto"]), stamp) is None
    assert bootstrap.install_reason(Options(with_cluster=True), stamp) is None
    assert bootstrap.install_reason(Options(), stamp) is None


@pytest.mark.parametrize("tests, cluster, extras", [
    (False, False, ""), (True, False, "[test]"), (False, True, "[cluster]"), (True, True, "[test,cluster]"),
])
def test_the_extras_name_what_is_wanted(tests, cluster, extras):
    assert bootstrap.extras_spec(tests, cluster) == extras


@pytest.fixture
def pip_calls(folder, monkeypatch):
    """install() with PyTorch already in place and pip and the warm-up faked: the pip arguments it used."""
    calls = []
    monkeypatch.setattr(bootstrap, "this_machine", lambda: LINUX)
    monkeypatch.setattr(bootstrap, "installed_torch_version", lambda python: "2.14.1+cpu")
    monkeypatch.setattr(bootstrap, "pip_install", lambda args, log: calls.append(args))
    monkeypatch.setattr(bootstrap, "warm_up", lambda log: None)
    return calls


def editable(args: list[str]) -> str:
    return args[args.index("--editable") + 1]


@pytest.mark.parametrize("argv, before, extras, after", [
    (["--cluster", "local:2"], {}, ".[cluster]", {"tests": False, "cluster": True}),
    (["--setup-only", "--with-cluster"], {"tests": True}, ".[test,cluster]", {"tests": True, "cluster": True}),
    (["--with-tests"], {"cluster": True}, ".[test,cluster]", {"tests": True, "cluster": True}),
    ([], {"cluster": True, "complete": False}, ".[cluster]", {"tests": False, "cluster": True}),  # not dropped
    (["--with-tests"], {}, ".[test]", {"tests": True, "cluster": False}),
])
def test_install_asks_pip_for_the_extras_and_the_stamp_remembers_them(folder, pip_calls, argv, before, extras,
                                                                       after):
    options = parse_options(argv)
    stamp = installed(folder, **before)
    bootstrap.install(options, stamp, bootstrap.install_reason(options, stamp) or "test")
    assert [editable(args) for args in pip_calls] == [extras]
    written = bootstrap.read_stamp()
    assert {name: written[name] for name in after} == after
    assert bootstrap.install_reason(parse_options(argv), written) is None
    assert bootstrap.install_reason(Options(), written) is None  # a plain start next installs nothing


def test_a_new_torch_build_keeps_the_cluster_packages(folder, pip_calls, monkeypatch):
    monkeypatch.setattr(bootstrap, "enough_disk", lambda kind: None)
    monkeypatch.setattr(bootstrap, "install_torch", lambda build, log: None)
    stamp = installed(folder, torch="cuda", cluster=True)
    bootstrap.install(Options(torch="cpu"), stamp, "you asked for --torch cpu")
    assert [editable(args) for args in pip_calls] == [".[cluster]"]
    assert bootstrap.read_stamp()["cluster"] is True


def test_the_warm_up_does_not_import_ray():
    assert not re.search(r"\bray\b", bootstrap.WARM_UP)  # a start without --cluster must not pay for it


def test_torch_pins_come_from_the_constraints_file(folder):
    assert bootstrap.torch_pins() == ["torch==2.14.1", "torchvision==0.29.1"]
    (folder / "constraints.txt").write_text("numpy==2.4.6\n")
    with pytest.raises(LauncherError, match="does not pin torch and torchvision"):
        bootstrap.torch_pins()


def test_a_local_build_label_is_the_same_release():
    assert bootstrap.same_release("2.14.1+cu130", "torch==2.14.1")
    assert bootstrap.same_release("2.14.1", "torch==2.14.1")
    assert not bootstrap.same_release("2.13.0+cpu", "torch==2.14.1")
    assert not bootstrap.same_release(None, "torch==2.14.1")


def test_a_cpu_build_with_an_nvidia_driver_says_how_to_switch(monkeypatch):
    monkeypatch.setattr(bootstrap.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(bootstrap.platform, "system", lambda: "Linux")
    assert "--torch cuda" in bootstrap.gpu_hint({"torch": "cpu"})
    assert bootstrap.gpu_hint({"torch": "cuda"}) is None


def test_too_little_disk_is_refused_before_downloading(folder, monkeypatch):
    monkeypatch.setattr(bootstrap.shutil, "disk_usage", lambda path: type("U", (), {"free": 1.2e9})())
    with pytest.raises(LauncherError, match=r"about 8 GB free .* 1\.2 GB are free"):
        bootstrap.enough_disk("cuda")


# --- failures and the log ---


@pytest.mark.parametrize("tail, words", [
    ("OSError: [Errno 28] No space left on device", "disk is full"),
    ("ERROR: Could not install packages due to an OSError: [WinError 206] The filename or extension is too long",
     "C:\\Easel"),
    ("WARNING: Retrying ... Failed to establish a new connection: [Errno -3] Temporary failure in name resolution",
     "internet connection"),
    ("ERROR: No matching distribution found for torch==2.14.1", "not available for this computer"),
    ("ERROR: something nobody foresaw", "Installing Easel's packages failed."),
])
def test_a_failed_step_is_explained_from_the_log(tail, words):
    assert words in bootstrap.failure_sentence(tail)


def test_a_failed_pip_step_says_what_happened_and_keeps_everything_in_the_log(folder, monkeypatch):
    monkeypatch.setattr(bootstrap, "venv_python", lambda: Path(sys.executable))
    log = bootstrap.InstallLog()
    try:
        with pytest.raises(LauncherError, match="internet connection"):
            bootstrap.pip_install(["--index-url",
                                   "http://127.0.0.1:9/simple", "--retries", "1", "--timeout", "1",
                                   "surely-not-a-package-easel"], log)
    finally:
        log.close()
    text = (folder / "logs" / "install.log").read_text()
    assert "-m pip install" in text and "surely-not-a-package-easel" in text


def test_pip_lines_shown_on_the_console():
    assert bootstrap.pip_progress("Downloading https://x/torch-2.14.1-cp311.whl (554.6 MB)\n") == \
        "downloading torch-2.14.1-cp311.whl (554.6 MB)"
    assert "installing" in bootstrap.pip_progress("Installing collected packages: a, b\n")
    assert bootstrap.pip_progress("Collecting numpy==2.4.6\n") is None


# --- the launchers' questions ---


def run_bootstrap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bootstrap.py"), *args], capture_output=True, text=True,
                          timeout=60)


def test_check_python_answers_with_the_interpreter_path():
    answer = run_bootstrap("--check-python")
    assert answer.returncode == 0
    assert Path(answer.stdout.strip()).resolve() == Path(sys.executable).resolve()


def test_an_unsupported_python_says_no(monkeypatch, capsys):
    monkeypatch.setattr(bootstrap, "SUPPORTED_PYTHONS", ((3, 99),))
    assert bootstrap.main(["--check-python"]) == 1
    assert capsys.readouterr().out == ""


def test_help_lists_the_launcher_flags_and_every_flag_of_launch_py():
    import launch

    answer = run_bootstrap("--help")
    assert answer.returncode == 0
    for flag in ("--torch", "--reinstall", "--setup-only", "--with-tests", "--with-cluster"):
        assert flag in answer.stdout
    for action in launch.build_parser()._actions:
        for flag in action.option_strings:
            assert flag in answer.stdout, flag


def test_launch_sh_help_works_before_anything_is_installed():
    answer = subprocess.run([str(ROOT / "launch.sh"), "--help"], capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, answer.stderr
    assert "--torch" in answer.stdout and "--listen" in answer.stdout


def test_a_wrong_flag_fails_with_a_sentence_and_exit_code_1():
    answer = run_bootstrap("--torch", "tpu")
    assert answer.returncode == 1
    assert "Easel could not start: --torch takes one of" in answer.stderr


def test_an_unreachable_cpu_index_is_announced_with_the_size_before_pip_runs(folder, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(bootstrap, "enough_disk", lambda kind: None)
    monkeypatch.setattr(bootstrap, "pip_install", lambda args, log: calls.append((capsys.readouterr().out, args)))
    log = bootstrap.InstallLog()
    try:
        monkeypatch.setattr(bootstrap, "index_reachable", lambda url, timeout=15: False)
        bootstrap.install_torch(torch_build("auto", LINUX), log)
        monkeypatch.setattr(bootstrap, "index_reachable", lambda url, timeout=15: True)
        bootstrap.install_torch(torch_build("auto", LINUX), log)
    finally:
        log.close()
    (printed, args), (printed_reachable, args_reachable) = calls
    assert "3 GB to download" in printed
    assert "--index-url" not in args and args[-2:] == ["torch==2.14.1", "torchvision==0.29.1"]
    assert "GB to download" not in printed_reachable
    assert args_reachable[args_reachable.index("--index-url") + 1] == bootstrap.CPU_INDEX


def test_the_warm_up_writes_bytecode_even_where_the_environment_forbids_it(folder, monkeypatch):
    monkeypatch.setattr(bootstrap, "venv_python", lambda: Path(sys.executable))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setattr(bootstrap, "WARM_UP", "import os, sys; sys.exit('PYTHONDONTWRITEBYTECODE' in os.environ)")
    log = bootstrap.InstallLog()
    try:
        bootstrap.warm_up(log)
        monkeypatch.setattr(bootstrap, "WARM_UP", "import surely_not_a_module_easel")
        with pytest.raises(LauncherError, match="do not work together"):
            bootstrap.warm_up(log)
    finally:
        log.close()
    assert "surely_not_a_module_easel" in (folder / "logs" / "install.log").read_text()


def test_an_unexpected_error_still_ends_in_a_sentence(folder, monkeypatch, capsys):
    def broken(options, stamp):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(bootstrap, "install_reason", broken)
    monkeypatch.chdir(folder)  # main() moves into the Easel folder; the test's own folder comes back after
    assert bootstrap.main(["--setup-only"]) == 1
    err = capsys.readouterr().err
    assert "Easel could not start: something unexpected went wrong (RuntimeError: disk on fire)" in err


def test_a_venv_that_cannot_be_deleted_is_explained(folder, monkeypatch):
    def locked(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(bootstrap.shutil, "rmtree", locked)
    with pytest.raises(LauncherError, match="Is Easel still running"):
        bootstrap.remove_venv()
