#!/usr/bin/env python3
"""Start Easel: command-line flags → Settings → Engine → web UI.

    python launch.py            # open http://127.0.0.1:7860 in the browser
    python launch.py --demo     # no model yet? a tiny random one shows every part working
"""

import os

# A terminal for people, not a log: the ML libraries' own progress bars and notices would drown
# Easel's few lines. Errors still show. Set before the libraries are imported.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import argparse
import logging
import sys
import threading
from pathlib import Path

import app  # noqa: E402,F401  first of ours: switches off hub lookups and analytics before anything imports them
from app.errors import EaselError


def build_parser() -> argparse.ArgumentParser:
    """Easel's flags. Standard library only, so the launchers' --help works before anything is installed."""
    # No abbreviated flags: the launcher looks for --cluster itself, to install Ray only when it is asked for.
    parser = argparse.ArgumentParser(prog="launch.py", description="Easel: a local Stable Diffusion studio.",
                                     allow_abbrev=False)
    parser.add_argument("--models-dir", type=Path, help="folder with Stable-diffusion/ inside (default: models)")
    parser.add_argument("--outputs-dir", type=Path, help="where images are saved (default: outputs)")
    parser.add_argument("--port", type=int, help="port to serve on (default: 7860)")
    parser.add_argument("--listen", action="store_true", help="serve to other machines on the network (0.0.0.0)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="where to run (default: auto)")
    parser.add_argument("--medvram", action="store_true", help="GPU with little memory: one model part at a time on it")
    parser.add_argument("--lowvram", action="store_true", help="GPU with very little memory: one layer at a time (slow)")
    parser.add_argument("--precision", choices=("auto", "full"),
                        help="full: float32 everywhere, CPU included (default auto: float16 on GPUs, bfloat16 on "
                             "CPUs that do it in hardware)")
    parser.add_argument("--no-half", action="store_true", help="the same as --precision full (A1111's name)")
    parser.add_argument("--demo", action="store_true", help="add a tiny random model (draws noise) to try the app")
    parser.add_argument("--no-compile", action="store_true",
                        help="do not compile the UNet in the background (it makes images faster after a few minutes)")
    parser.add_argument("--no-watermark", action="store_true", help="do not add the invisible watermark")
    parser.add_argument("--styles-file", type=Path, metavar="FILE",
                        help="the saved styles, in A1111's styles.csv format (default: styles.csv in the Easel folder)")
    parser.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                        help="any setting of configs/defaults.yaml, e.g. --set queue_size=20 (repeatable)")
    sharing = parser.add_argument_group("sharing on the network")
    sharing.add_argument("--auth", metavar="USER:PASS[,USER2:PASS2]", help="who may sign in (page and API)")
    sharing.add_argument("--auth-file", type=Path, metavar="FILE",
                         help="a file with one user:password per line (passwords may be hashed: --hash-password)")
    sharing.add_argument("--api-auth", metavar="USER:PASS[,...]", help="other credentials for the HTTP API only")
    sharing.add_argument("--insecure", action="store_true",
                         help="with --listen, let anyone on the network in without a password")
    sharing.add_argument("--hash-password", action="store_true",
                         help="print a hashed password for --auth-file (asks for the password), then exit")
    team = parser.add_argument_group("workers on other GPUs or machines (Ray; see the README's team cluster section)")
    team.add_argument("--cluster", metavar="auto|ray://HOST:PORT|local:N",
                      help="run the generation on a Ray cluster: auto joins the one this machine is part of "
                           "(ray start), ray://HOST:PORT a remote head, local:N starts N workers here")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def settings_overrides(args: argparse.Namespace) -> dict:
    """Flags given on the command line; paths relative to where the user typed the command."""
    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EaselError(f"--set {item}: write it as setting=value, e.g. --set queue_size=20.")
        extra[key.strip()] = value
    flags = {
        "models_dir": str(args.models_dir.resolve()) if args.models_dir else None,
        "outputs_dir": str(args.outputs_dir.resolve()) if args.outputs_dir else None,
        "port": args.port,
        "host": "0.0.0.0" if args.listen else None,
        "open_browser": False if args.no_browser else None,
        "device": args.device,
        "medvram": True if args.medvram else None,
        "lowvram": True if args.lowvram else None,
        "precision": "full" if args.no_half else args.precision,
        "demo": True if args.demo else None,
        "watermark": False if args.no_watermark else None,
        "torch_compile": False if args.no_compile else None,
        "styles_file": str(args.styles_file.resolve()) if args.styles_file else None,
        "auth": args.auth,
        "auth_file": str(args.auth_file.resolve()) if args.auth_file else None,
        "api_auth": args.api_auth,
        "insecure": True if args.insecure else None,
    }
    return {**extra, **{key: value for key, value in flags.items() if value is not None}}


def offer_download(engine) -> None:
    """First run with no model, in a terminal: offer the default model (only if the user says yes)."""
    folder = engine.model_folders().checkpoints
    print(f"No checkpoint found in {folder}.")
    default = engine.download_catalog()[0]
    if not sys.stdin.isatty():
        print("Put a model there, use 'Download a model' in the page, or start with --demo to try Easel.")
        return
    size = f"{default.size / 1e9:.1f} GB" if default.size else "a few GB"
    answer = input(f"Download {default.title} ({size}) from huggingface.co now? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        print("Fine. You can download one later from the page, or start with --demo to try Easel.")
        return

    def show(progress) -> None:
        total = f"/{progress.total_bytes / 1e9:.2f}" if progress.total_bytes else ""
        print(f"\r  {progress.done_bytes / 1e9:.2f}{total} GB  {progress.bytes_per_second / 1e6:.1f} MB/s   ", end="", flush=True)

    try:
        entry = engine.download_model(default.id, on_progress=show)
        print(f"\nDownloaded and checked: {entry.title}")
    except KeyboardInterrupt:
        print("\nDownload stopped; it resumes where it stopped next time.")
    except EaselError as error:
        print(f"\n{error.message}", file=sys.stderr)


def report_problem_files(engine) -> None:
    for entry in engine.checkpoints():
        if entry.problem:
            print(entry.problem, file=sys.stderr)


def load_first_checkpoint(engine) -> None:
    """Load the first checkpoint, so the first Generate does not wait for it. Runs beside the server:
    the page answers at once and says a checkpoint is loading; a job sent meanwhile waits for it."""
    from diffusers.utils import logging as diffusers_logging  # the first diffusers import: not before the page

    diffusers_logging.disable_progress_bar()  # a terminal for people: Easel's lines, not loading bars
    if not engine.generating_checkpoints():
        return
    try:
        entry = engine.select_checkpoint()
        print(f"Loaded checkpoint: {entry.title}", flush=True)
    except EaselError as error:  # the UI still runs; the user can pick another checkpoint
        print(error.message, file=sys.stderr, flush=True)


def cluster_workers(value: str, settings):
    """The workers --cluster names (None: run on this machine alone, as the user chose when the
    cluster could not be reached). Ray is imported here and only here."""
    try:
        from app.cluster.connect import ClusterUnreachable, connect
    except ImportError:
        raise EaselError("The cluster packages (Ray) are not installed. Start Easel with the launcher "
                         "(./launch.sh or launch.bat) and --cluster: it installs them.") from None
    print("Starting the workers (this takes a little while) ...", flush=True)
    try:
        return connect(value, settings)
    except ClusterUnreachable as error:
        print(error.message, file=sys.stderr, flush=True)
        if not sys.stdin.isatty():
            raise EaselError("Start Easel without --cluster to run on this machine alone.") from None
        answer = input("Run Easel on this machine alone instead? [Y/n] ").strip().lower()
        if answer not in ("", "y", "yes"):
            raise EaselError("Not started. Start the cluster, then start Easel again.") from None
        return None


def print_password_hash() -> int:
    import getpass

    from app.auth import hash_password

    password = getpass.getpass("Password to hash: ")
    if not password:
        print("No password given; nothing printed.", file=sys.stderr)
        return 1
    print(f"Put this line in your --auth-file (change 'name'):\nname:{hash_password(password)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.hash_password:
        return print_password_hash()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    from app.auth import server_access
    from app.engine import create_engine
    from app.hardware import use_physical_cores
    from app.memory import freeze_imports, one_heap_for_all_threads
    from app.preferences import Preferences
    from app.settings import load_settings
    from server.compose import lan_urls, serve
    from ui.app import build_ui

    freeze_imports()  # before any model exists: see its docstring
    use_physical_cores()
    one_heap_for_all_threads()

    try:
        settings = load_settings(settings_overrides(args))
        listening = settings.host not in ("127.0.0.1", "localhost", "::1")
        access = server_access(listening, settings.auth, settings.auth_file, settings.api_auth, settings.insecure,
                               settings.access_file)
        workers = cluster_workers(args.cluster, settings) if args.cluster else None
        engine = create_engine(settings, workers=workers)
    except EaselError as error:
        print(f"Easel could not start: {error.message}", file=sys.stderr)
        return 2
    print(engine.status().device)
    report_problem_files(engine)
    if not engine.generating_checkpoints():
        offer_download(engine)  # asks in the terminal: before the server, whose output would interleave
    preferences = Preferences(settings.preferences_file)
    addresses = lan_urls(settings.host, settings.port)
    try:
        server = serve(build_ui(engine, preferences, addresses), engine, settings, access)
    except OSError as error:
        print(f"Easel could not start: {error}", file=sys.stderr)
        engine.close()
        return 2
    print(f"Easel is running at {server.url}  (press Ctrl+C to stop)", flush=True)
    threading.Thread(target=load_first_checkpoint, args=(engine,), name="easel-preload", daemon=True).start()
    for url in server.lan_urls:
        print(f"Other computers on your network: {url}")
    if access.notice:
        print(access.notice)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("Stopping Easel.")
    finally:
        server.close()
        engine.close()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is saved and closed by now. A compile may still be running in its background thread,
    # inside C++; the interpreter's normal shutdown would tear that thread down mid-call and abort
    # ("terminate called without an active exception"). Leave without that shutdown.
    os._exit(code)
