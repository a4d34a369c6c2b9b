"""What launch.sh and launch.bat do once they have found a Python: one file, so both behave the same.

    <python> bootstrap.py [launcher flags] [flags for launch.py]

1. Keeps a Python environment in `.venv` next to this file, with the PyTorch build for this
   computer (NVIDIA → CUDA, AMD on Linux → ROCm, Apple silicon → the default build, else CPU) and
   every other package at the version pinned in `constraints.txt`, the same for everyone.
2. Writes every install step to `logs/install.log`; on failure says what went wrong, what to do,
   and where the log is.
3. Records what it installed in `.venv/easel-install.json`, so a later start with nothing changed
   runs no installer and touches no network.
4. Starts `launch.py` in that environment with the remaining flags.

Standard library only: it runs before anything is installed. The launchers first run it with
`--check-python` on each Python they find; a Python too old even to read this file fails that
check too, which is the right answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / "easel-install.json"
LOG = ROOT / "logs" / "install.log"
CONSTRAINTS = ROOT / "constraints.txt"
PYPROJECT = ROOT / "pyproject.toml"

# The Pythons Easel installs on, in the order the launchers try them (the one the tests run on
# first): diffusers 0.42 needs 3.11, pinned torch stops at 3.14, and every pinned package has wheels
# for 3.11-3.14 on Windows, macOS and Linux (tools/lock_deps.py --check-wheels), so nobody needs a compiler.
SUPPORTED_PYTHONS = ((3, 11), (3, 12), (3, 13), (3, 14))

PYPI = None  # pip's own index: PyPI, or whatever the user configured for pip
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# PyPI's Linux build uses CUDA 13, which needs NVIDIA driver 580 or newer; older drivers get the
# CUDA 12.6 build. Windows has only the CPU build on PyPI, so CUDA always comes from PyTorch's index.
CUDA13_INDEX = "https://download.pytorch.org/whl/cu130"
CUDA12_INDEX = "https://download.pytorch.org/whl/cu126"
ROCM_INDEX = "https://download.pytorch.org/whl/rocm7.1"
CUDA13_MIN_DRIVER = 580
CUDA12_MIN_DRIVER = 525

# PyPI's Linux x86_64 torch with the NVIDIA libraries it pulls in (measured for 2.14.1).
LARGE_BUILD_DOWNLOAD_GB = 3.0
LARGE_BUILD_DISK_GB = 5.5
# Free disk the whole environment needs, by PyTorch build (measured, rounded up).
DISK_NEEDED_GB = {"cpu": 2.5, "default": 2.5, "cuda": 7.5, "rocm": 14.0}

# What a start and a first picture import, run once at the end of an install: it proves the packages
# work together, and it compiles exactly these modules to bytecode (pip's --no-compile skipped the
# thousands Easel never imports), with PYTHONDONTWRITEBYTECODE lifted so that a container's setting
# cannot make every start compile them again.
WARM_UP = """\
import launch, app.engine, server.compose, ui.app
import diffusers, transformers, spandrel, imwatermark, torch._inductor.compile_fx
from app.models.loader import PIPELINE_CLASSES
for name in set(PIPELINE_CLASSES.values()):
    getattr(diffusers, name)
transformers.CLIPTextModel, transformers.CLIPTokenizer, diffusers.AutoencoderKL
"""

LAUNCHER_HELP = """\
Easel launcher. The first start installs what Easel needs into .venv in this folder (internet
needed once; the install log is logs/install.log); later starts take seconds.

Launcher options:
  --torch auto|cpu|cuda|rocm  which PyTorch build to install (default auto: CUDA when an NVIDIA
                              driver is found, ROCm for AMD GPUs on Linux, else CPU)
  --reinstall                 delete .venv and install everything afresh
  --setup-only                install, then stop without starting Easel
  --with-tests                also install what the tests need (used by test.sh)
  --with-cluster              also install the cluster packages (Ray, about 500 MB): with
                              --setup-only, for a machine that runs Ray's own `ray start` (a team
                              cluster's head or workers); Easel's --cluster installs them by itself
  -h, --help                  this help

Every other option goes to Easel itself (launch.py):
"""


class LauncherError(Exception):
    """Something the user can fix; `message` says what to do."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class Options:
    torch: str = "auto"
    reinstall: bool = False
    setup_only: bool = False
    with_tests: bool = False
    with_cluster: bool = False
    help: bool = False
    check_python: bool = False
    app_args: list[str] = field(default_factory=list)


TORCH_CHOICES = ("auto", "cpu", "cuda", "rocm")


def parse_options(argv: list[str]) -> Options:
    """The launcher's own flags; everything else is kept, in order, for launch.py."""
    options = Options()
    args = iter(argv)
    for arg in args:
        if arg in ("-h", "--help"):
            options.help = True
        elif arg == "--reinstall":
            options.reinstall = True
        elif arg == "--setup-only":
            options.setup_only = True
        elif arg == "--with-tests":
            options.with_tests = True
        elif arg == "--with-cluster":
            options.with_cluster = True
        elif arg == "--check-python":
            options.check_python = True
        elif arg == "--torch" or arg.startswith("--torch="):
            value = arg.partition("=")[2] if "=" in arg else next(args, "")
            if value not in TORCH_CHOICES:
                raise LauncherError(f"--torch takes one of {', '.join(TORCH_CHOICES)} (got '{value}').")
            options.torch = value
        else:
            options.app_args.append(arg)  # --cluster too: launch.py needs it, and cluster_flag reads it there
    return options


def cluster_flag(options: Options) -> str | None:
    """The flag that asks for the cluster packages (Ray), or None: they are large, so only when asked."""
    if options.with_cluster:
        return "--with-cluster"
    if any(arg == "--cluster" or arg.startswith("--cluster=") for arg in options.app_args):
        return "--cluster"
    return None


# --- Which PyTorch ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """What the install depends on, read without torch (it is not installed yet)."""

    system: str  # platform.system(): Linux, Windows, Darwin
    arch: str  # platform.machine(), lower case: x86_64, amd64, arm64, aarch64
    nvidia_driver: int | None  # major version of the NVIDIA driver, when nvidia-smi answers
    amd_gpu: bool  # Linux with ROCm's kernel driver (/dev/kfd) or rocminfo


@dataclass(frozen=True)
class TorchBuild:
    kind: str  # cpu, cuda, rocm, or default (PyPI's build: Apple silicon, Linux arm64)
    index_url: str | None  # None: pip's own index (PyPI)
    title: str  # what the console says is being installed
    fallback_to_pypi: bool = False  # the CPU index may be unreachable: then PyPI's large build


def nvidia_driver_version() -> int | None:
    """The NVIDIA driver's major version, asked of nvidia-smi (it comes with the driver)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        answer = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"\s*(\d+)\.", answer.stdout)
    return int(match.group(1)) if answer.returncode == 0 and match else None


def this_machine() -> Machine:
    system = platform.system()
    amd = system == "Linux" and (os.path.exists("/dev/kfd") or shutil.which("rocminfo") is not None)
    return Machine(system, platform.machine().lower(), nvidia_driver_version(), amd)


def torch_build(choice: str, machine: Machine) -> TorchBuild:
    """The PyTorch build to install: `choice` is --torch (auto decides from the hardware)."""
    if machine.system == "Darwin":
        if machine.arch not in ("arm64", "aarch64"):
            raise LauncherError("PyTorch no longer makes builds for Intel Macs, so Easel needs a Mac with "
                                "Apple silicon (M1 or newer).")
        if choice in ("cuda", "rocm"):
            raise LauncherError(f"--torch {choice} is not available on a Mac; start without --torch.")
        return TorchBuild("default", PYPI, "PyTorch for Apple silicon (uses the Mac's GPU)")
    if choice == "auto":
        if machine.nvidia_driver is not None:
            choice = "cuda"
        elif machine.amd_gpu:
            choice = "rocm"
        else:
            choice = "cpu"
    if choice == "cuda":
        return cuda_build(machine)
    if choice == "rocm":
        if machine.system != "Linux" or machine.arch != "x86_64":
            raise LauncherError("PyTorch's ROCm build (AMD GPUs) exists only for Linux on x86_64; "
                                "start without --torch, or with --torch cpu.")
        return TorchBuild("rocm", ROCM_INDEX, "PyTorch for AMD GPUs (ROCm), a large download")
    return cpu_build(machine)


def cuda_build(machine: Machine) -> TorchBuild:
    driver = machine.nvidia_driver
    if driver is not None and driver < CUDA12_MIN_DRIVER:
        raise LauncherError(f"Your NVIDIA driver (version {driver}) is too old for PyTorch's CUDA builds. "
                            "Update it from https://www.nvidia.com/drivers and run this again, or start with "
                            "--torch cpu to use the CPU.")
    if driver is not None and driver < CUDA13_MIN_DRIVER:
        return TorchBuild("cuda", CUDA12_INDEX, f"PyTorch with CUDA 12.6 (for driver {driver}), a large download")
    index = PYPI if machine.system == "Linux" else CUDA13_INDEX
    return TorchBuild("cuda", index, "PyTorch with CUDA for your NVIDIA GPU, a large download")


def cpu_build(machine: Machine) -> TorchBuild:
    if machine.system == "Linux" and machine.arch in ("x86_64", "amd64"):
        # PyPI's Linux x86_64 build bundles CUDA (GBs); PyTorch's CPU index has the small one.
        return TorchBuild("cpu", CPU_INDEX, "the CPU build of PyTorch (no NVIDIA GPU found)", fallback_to_pypi=True)
    return TorchBuild("cpu", PYPI, "the CPU build of PyTorch")


def forced_index(build: TorchBuild) -> TorchBuild:
    """EASEL_TORCH_INDEX replaces the index (a mirror, or a CUDA/ROCm version this file does not know)."""
    url = os.environ.get("EASEL_TORCH_INDEX")
    if not url:
        return build
    return TorchBuild(build.kind, url, f"{build.title}, from {url}")


def index_reachable(url: str, timeout: float = 15) -> bool:
    """Whether a package index answers at all (any HTTP answer counts; no answer does not)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def large_build_notice(url: str) -> str:
    host = urllib.request.urlparse(url).hostname or url
    return (f"PyTorch's site for its small CPU build ({host}) cannot be reached from this computer. The only "
            f"build available is PyPI's, which includes NVIDIA's CUDA libraries: about {LARGE_BUILD_DOWNLOAD_GB:.0f} "
            f"GB to download and {LARGE_BUILD_DISK_GB:.1f} GB on disk (it runs on the CPU too). Downloading it now; "
            "press Ctrl+C to stop.")


# --- What is installed --------------------------------------------------------------------------


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def torch_pins() -> list[str]:
    """torch and torchvision as constraints.txt pins them: the pair must match, so both come from one line each."""
    pins = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        match = re.match(r"(torch|torchvision)==([^\s;]+)\s*$", line.strip())
        if match:
            pins[match.group(1)] = f"{match.group(1)}=={match.group(2)}"
    if set(pins) != {"torch", "torchvision"}:
        raise LauncherError(f"{CONSTRAINTS.name} does not pin torch and torchvision: this copy of Easel is "
                            "damaged. Download it again.")
    return [pins["torch"], pins["torchvision"]]


def requirements_digest() -> str:
    """Changes when Easel's package list or pins change, so an update installs what it needs."""
    digest = hashlib.sha256()
    for path in (PYPROJECT, CONSTRAINTS):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def read_stamp() -> dict:
    try:
        stamp = json.loads(STAMP.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def write_stamp(stamp: dict) -> None:
    STAMP.write_text(json.dumps(stamp, indent=1), encoding="utf-8")


def install_reason(options: Options, stamp: dict) -> str | None:
    """Why this start must install something, or None: then nothing is installed and nothing downloaded."""
    if options.reinstall:
        return "you asked for --reinstall"
    if not venv_python().exists() or not stamp:
        return "first start"
    if not stamp.get("complete"):
        return "the last install did not finish"
    if stamp.get("requirements") != requirements_digest():
        return "Easel's package list changed"
    if stamp.get("folder") != str(ROOT):
        return "the Easel folder moved"
    if options.with_tests and not stamp.get("tests"):
        return "the test packages are wanted"
    flag = cluster_flag(options)
    if flag and not stamp.get("cluster"):
        return f"the cluster packages are wanted ({flag})"
    if options.torch not in ("auto", stamp.get("torch")):
        return f"you asked for --torch {options.torch}"
    return None


def installed_torch_version(python: Path) -> str | None:
    """torch's version in the environment if torch and torchvision import together, else None."""
    try:
        answer = subprocess.run([str(python), "-c", "import torch, torchvision; print(torch.__version__)"],
                                capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.stdout.strip() if answer.returncode == 0 else None


def same_release(installed: str | None, pin: str) -> bool:
    """2.14.1+cu130 is the pinned 2.14.1: the local part only names the build."""
    return installed is not None and installed.split("+")[0] == pin.partition("==")[2]


# --- Installing ---------------------------------------------------------------------------------


class InstallLog:
    """logs/install.log: the full output of every step, appended; the console shows a few lines."""

    def __init__(self, path: Path | None = None):
        self.path = path = path or LOG
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def write(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def say(text: str) -> None:
    print(f"Easel: {text}", flush=True)


def run_logged(command: list[str], log: InstallLog, show=lambda line: None, env: dict | None = None) -> int:
    """Run a step with its output in the log; `show` picks the lines worth a console line."""
    log.write(f"\n$ {' '.join(command)}\n")
    # The step writes UTF-8 into the pipe (on Windows it would write the ANSI code page: accented paths garbled).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               encoding="utf-8", errors="replace", cwd=ROOT,
                               env={**(os.environ if env is None else env), "PYTHONIOENCODING": "utf-8"})
    assert process.stdout is not None
    for line in process.stdout:
        log.write(line)
        shown = show(line)
        if shown:
            print(f"  {shown}", flush=True)
    return process.wait()


def pip_progress(line: str) -> str | None:
    """pip prints no progress bar into a pipe: its download lines and its last step say it is working."""
    text = line.strip()
    if text.startswith("Downloading ") and "(" in text:
        return "downloading " + text.removeprefix("Downloading ").rsplit("/", 1)[-1]
    if text.startswith("Installing collected packages"):
        return "unpacking and installing (this can take a few minutes)..."
    return None


def pip_install(args: list[str], log: InstallLog) -> None:
    # --no-compile: Python compiles each module on its first import anyway; compiling all of them at
    # install (transformers alone has thousands Easel never imports) made the first start a minute longer.
    command = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
               "--progress-bar", "off", "--no-compile", *args]
    if run_logged(command, log, pip_progress) != 0:
        raise LauncherError(failure_sentence(log.tail()))


def failure_sentence(log_tail: str) -> str:
    """What went wrong, in words, from the end of the log."""
    text = log_tail.lower()
    if "no space left on device" in text or "not enough space" in text:
        return "The disk is full. Free some space (up to 8 GB for an NVIDIA GPU's build) and run this again."
    if "winerror 206" in text or "filename or extension is too long" in text or "long path" in text:
        return ("Windows could not write a file with a very long path. Move the Easel folder to a short path "
                "such as C:\\Easel, then start it with --reinstall.")
    network = ("failed to establish a new connection", "temporary failure in name resolution", "connecttimeout",
               "read timed out", "connection reset", "network is unreachable", "name or service not known",
               "getaddrinfo failed", "max retries exceeded")
    if any(word in text for word in network):
        return "Easel could not download its packages. Check the internet connection and run this again."
    if "no matching distribution found" in text:
        return (f"A pinned package is not available for this computer (Python "
                f"{platform.python_version()}, {platform.system()} {platform.machine()}). Install Python 3.12 "
                "from https://www.python.org/downloads/ and start with --reinstall.")
    return "Installing Easel's packages failed."


def warm_up(log: InstallLog) -> None:
    say("preparing the first start (once; about a minute) ...")
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    if run_logged([str(venv_python()), "-c", WARM_UP], log, env=env) != 0:
        raise LauncherError("Easel's packages were installed but do not work together. Start with --reinstall; "
                            "if that fails too, the log below says which package.")


def enough_disk(kind: str) -> None:
    needed = DISK_NEEDED_GB.get(kind, 7.5)
    free = shutil.disk_usage(ROOT).free / 1e9
    if free < needed:
        raise LauncherError(f"Easel needs about {needed:.0f} GB free on this disk for its packages and "
                            f"{free:.1f} GB are free. Free some space and run this again.")


def short_enough_path() -> None:
    """Windows without long paths cannot unpack PyTorch deep inside a long folder path."""
    if os.name != "nt" or len(str(VENV)) <= 100 or windows_long_paths_enabled():
        return
    raise LauncherError(f"The Easel folder's path is too long for Windows to unpack PyTorch into ({len(str(VENV))} "
                        "characters). Move the folder to a short path such as C:\\Easel and run launch.bat again.")


def windows_long_paths_enabled() -> bool:
    try:
        import winreg

        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
            return winreg.QueryValueEx(key, "LongPathsEnabled")[0] == 1
    except OSError:
        return False


def remove_venv() -> None:
    try:
        shutil.rmtree(VENV)
    except OSError as error:
        raise LauncherError(f"Could not delete {VENV} ({error.strerror or error}). Is Easel still running? "
                            "Close it, then run this again.") from None


def make_venv(log: InstallLog) -> None:
    say(f"creating a Python environment in {VENV} ...")
    if run_logged([sys.executable, "-m", "venv", str(VENV)], log) != 0:
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        hint = (f" On Debian or Ubuntu, install it with: sudo apt install python{version}-venv"
                if platform.system() == "Linux" else "")
        raise LauncherError(f"Python {version} could not create an environment (its venv module is missing).{hint}")


def install_torch(build: TorchBuild, log: InstallLog) -> None:
    source = build.index_url
    if build.fallback_to_pypi and not index_reachable(build.index_url):
        log.write(f"\n{build.index_url} cannot be reached: PyPI's build instead.\n")
        say(large_build_notice(build.index_url))
        enough_disk("cuda")
        source = PYPI
    else:
        say(f"installing {build.title} ...")
    index = ["--index-url", source] if source else []
    # Without its dependencies: the next step takes them from PyPI at their pinned versions, and a
    # PyTorch index need not carry the pinned version of every one.
    pip_install(["--force-reinstall", "--no-deps", *index, *torch_pins()], log)


def extras_spec(tests: bool, cluster: bool) -> str:
    """pip's extras after `.`: `[test]`, `[cluster]`, `[test,cluster]`, or nothing."""
    names = [name for name, wanted in (("test", tests), ("cluster", cluster)) if wanted]
    return f"[{','.join(names)}]" if names else ""


def install(options: Options, stamp: dict, reason: str) -> None:
    # Extras once installed stay wanted (a plain start after --with-tests or --cluster must not drop
    # them), through a new PyTorch build or --reinstall too: a worker machine runs only `ray start`.
    tests = bool(options.with_tests or stamp.get("tests"))
    cluster = bool(cluster_flag(options) or stamp.get("cluster"))
    log = InstallLog()
    try:
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')}: install ({reason}); Python "
                  f"{platform.python_version()} at {sys.executable}; {platform.platform()}; folder {ROOT}\n")
        say(f"installing what Easel needs ({reason}). The log is {LOG}")
        if options.reinstall and VENV.exists():
            remove_venv()
            stamp = {}
        short_enough_path()
        if not venv_python().exists():
            make_venv(log)
            stamp = {}
        kind = options.torch if options.torch != "auto" else stamp.get("torch", "auto")
        build = forced_index(torch_build(kind, this_machine()))
        log.write(f"PyTorch: {build}\n")
        pins = torch_pins()
        if stamp.get("torch") != build.kind or not same_release(installed_torch_version(venv_python()), pins[0]):
            enough_disk(build.kind)
            install_torch(build, log)
            stamp = {"torch": build.kind, "tests": tests, "cluster": cluster}  # an interrupted install keeps them
            write_stamp(stamp)
        say("installing Easel's other packages" + (" and the cluster packages (Ray)" if cluster else "") + " ...")
        pip_install(["--constraint", str(CONSTRAINTS), "--editable", f".{extras_spec(tests, cluster)}"], log)
        warm_up(log)  # never imports ray: a start without --cluster must not pay for it
        write_stamp({"complete": True, "torch": build.kind, "requirements": requirements_digest(),
                     "folder": str(ROOT), "tests": tests, "cluster": cluster, "python": platform.python_version()})
        log.write("===== done\n")
        say("installed.")
    finally:
        log.close()


# --- Starting -----------------------------------------------------------------------------------


def python_is_supported() -> bool:
    return sys.version_info[:2] in SUPPORTED_PYTHONS


def gpu_hint(stamp: dict) -> str | None:
    """A GPU driver that appeared after the CPU build was installed: say how to switch."""
    if stamp.get("torch") == "cpu" and platform.system() != "Darwin" and shutil.which("nvidia-smi"):
        launcher = "launch.bat" if os.name == "nt" else "./launch.sh"
        return (f"an NVIDIA driver is installed but Easel has the CPU build of PyTorch. To use the GPU, "
                f"start once with: {launcher} --torch cuda")
    return None


def show_help() -> int:
    print(LAUNCHER_HELP, flush=True)
    # launch.py's flags need nothing installed: its argument parser imports only the standard library.
    return subprocess.call([sys.executable, str(ROOT / "launch.py"), "--help"], cwd=ROOT)


def start_easel(app_args: list[str]) -> int:
    command = [str(venv_python()), str(ROOT / "launch.py"), *app_args]
    if os.name != "nt":
        os.execv(command[0], command)  # Easel gets the terminal and Ctrl+C directly
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is Easel's to handle: it stops cleanly
    return subprocess.call(command, cwd=ROOT)


def main(argv: list[str]) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # a Windows console in an old code page must not crash a message
        sys.stdout.reconfigure(errors="replace")
    try:
        options = parse_options(argv)
        if options.check_python:  # the launchers' question: may this Python run Easel? (its path if so)
            if not python_is_supported():
                return 1
            print(sys.executable)
            return 0
        if options.help:
            return show_help()
        os.chdir(ROOT)
        stamp = read_stamp()
        reason = install_reason(options, stamp)
        if reason:
            install(options, stamp, reason)
        else:
            hint = gpu_hint(stamp)
            if hint:
                say(hint)
    except LauncherError as error:
        print(f"\nEasel could not start: {error.message}", file=sys.stderr)
        if LOG.exists():
            print(f"The install log is {LOG}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopped. Run this again to continue the install.", file=sys.stderr)
        return 1
    except Exception as error:  # a bug here must still leave the user a sentence and the log, not only a traceback
        print(f"\nEasel could not start: something unexpected went wrong ({type(error).__name__}: {error}). "
              "Run this again; if it happens again, report it with the install log.", file=sys.stderr)
        if LOG.exists():
            print(f"The install log is {LOG}", file=sys.stderr)
        return 1
    if options.setup_only:
        return 0
    return start_easel(options.app_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
