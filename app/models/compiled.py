"""torch.compile for the active checkpoint's UNet, prepared in the background.

Why it works this way:
- Compiling takes minutes on a CPU (inductor writes and builds C++), so it never holds up a job. A UNet
  call takes the compiled graph only when the graph for its exact inputs (shapes, dtypes) is ready;
  until then it runs eager, and the first eager call with new inputs starts compiling them in the
  background, one input set at a time.
- Inductor's freezing folds the weights into the graph (on the CPU that is most of the gain: prepacked
  weights). So a graph is used only while the UNet has the checkpoint's own weights (not while LoRAs
  are patched in, app.generation.lora_patch), and a graph built while they changed is thrown away.
- The compiled code is cached on disk (inductor's cache, in Easel's cache folder): a user compiles once
  per model and image size; a later start only traces again, in the background.
- The UNet stays the same module: the graph is installed as the module's compiled call (what
  `nn.Module.compile()` does), so pipelines, LoRA patching and offload code see nothing new.
"""

import logging
import os
import queue
import threading
import warnings
from contextlib import contextmanager, nullcontext
from enum import Enum
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)

# A user who switches between many sizes should not spend the CPU compiling each of them.
MAX_GRAPHS = 4

# Tracing diffusers' upsampling (an lru_cache'd helper) prints this into the user's terminal, in the
# middle of Easel's lines; torch says it has seen no harm from it, and no user can act on it.
warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`", category=UserWarning)



def compiles_on(device: str, memory_mode_offloads: bool) -> bool:
    """Whether the UNet is compiled in this placement: on the CPU or a CUDA GPU with the whole model on it
    (offload hooks move weights during the call, which a frozen graph cannot follow; MPS is not supported)."""
    return device in ("cpu", "cuda") and not memory_mode_offloads


class CompileState(str, Enum):
    WAITING = "waiting"        # nothing compiled yet: the first job's UNet call starts it
    PREPARING = "preparing"    # compiling in the background; jobs run eager meanwhile
    READY = "ready"            # a graph is ready (for the inputs the jobs used)
    UNAVAILABLE = "unavailable"  # compiling failed here (e.g. no C++ compiler): eager from now on


class BackgroundCompiler:
    """One thread that compiles, one task at a time (two compiles at once would only share the cores),
    and the on-disk cache they write to. Owned by the ModelManager; closed with it."""

    def __init__(self, cache_dir: Path):
        # Inductor reads its cache folder from the environment at every use. Importing it already set the
        # variable to a temporary folder (wiped at reboot), so set it outright: `cache_dir` is the user's.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
        self._dummy_traced = False
        self._tasks: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="easel-compile", daemon=True)
        self._thread.start()

    def prepare(self) -> None:
        """Once, before the first model that may be compiled is used, while no other thread runs a model
        (the ModelManager calls it holding its lock): see `_trace_inductors_dummy_now`. Not at startup,
        where importing inductor would delay the page by seconds."""
        if not self._dummy_traced:
            _trace_inductors_dummy_now()
            self._dummy_traced = True

    @property
    def prepared(self) -> bool:
        return self._dummy_traced

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)

    def close(self, timeout: float = 1.0) -> None:
        self._tasks.put(None)
        self._thread.join(timeout)  # a compile in progress cannot be stopped; the thread is a daemon

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Whether every submitted task finished within `timeout` (for benches and tests)."""
        done = threading.Event()
        self._tasks.put(done.set)
        return done.wait(timeout)

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                task()
            except Exception:  # a task records its own failure; the thread must survive anything
                log.exception("A background compile task failed")


def _trace_inductors_dummy_now() -> None:
    """Inductor's first lowering in a process runs `torch.fx.symbolic_trace` once (a cached dummy graph), and
    while it traces, `torch.nn.Module.__call__` is swapped out for every thread: a job's model call at that
    moment fails ("module is not installed as a submodule"). Run that one trace before any compile starts."""
    from torch._inductor.loop_body import InterpreterShim

    InterpreterShim._dummy_gm()


def inputs_key(args: tuple, kwargs: dict) -> tuple | None:
    """What a compiled graph is specialised on: each tensor's shape, dtype and device, and the values
    of plain arguments. None when an argument is of a kind we do not describe: such a call stays eager."""
    def describe(value):
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), value.dtype, value.device.type)
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (tuple, list)):
            return tuple(describe(item) for item in value)
        if isinstance(value, dict):
            return tuple((key, describe(item)) for key, item in sorted(value.items()))
        raise TypeError

    try:
        return describe(args), describe(kwargs)
    except TypeError:
        return None


class CompiledUnet:
    """A UNet whose calls take the compiled graph for their inputs once it is ready.

    `weights_token` says which weights the UNet has now: None while they are not the checkpoint's own
    (LoRAs patched in), else a value that changes whenever they were touched."""

    def __init__(self, unet: torch.nn.Module, weights_token: Callable[[], object], compiler: BackgroundCompiler):
        self._unet = unet
        self._weights_token = weights_token
        self._compiler = compiler
        self._graph = torch.compile(unet._call_impl, dynamic=False, options={"freezing": True})
        self._ready: set[tuple] = set()
        self._tried: set[tuple] = set()  # ready, compiling, or failed: never submitted twice
        self._preparing = 0
        self._problem: str | None = None
        self._lock = threading.Lock()
        self._released = False
        self._eager_only = 0  # > 0 inside `eager()`
        unet._compiled_call_impl = self._call  # what nn.Module.__call__ runs when set (nn.Module.compile)

    @property
    def state(self) -> CompileState:
        with self._lock:
            if self._problem is not None:
                return CompileState.UNAVAILABLE
            if self._preparing:
                return CompileState.PREPARING
            return CompileState.READY if self._ready else CompileState.WAITING

    @property
    def problem(self) -> str | None:
        return self._problem

    @contextmanager
    def eager(self):
        """Calls within run eager and start no compile (a calibration's inputs are not a job's)."""
        self._eager_only += 1
        try:
            yield
        finally:
            self._eager_only -= 1

    def release(self) -> None:
        """Back to the plain module, and the compiled graphs (which hold the frozen weights) dropped."""
        with self._lock:
            self._released = True
            had_graphs = bool(self._ready)
            self._ready.clear()
        if getattr(self._unet, "_compiled_call_impl", None) == self._call:
            self._unet._compiled_call_impl = None
        self._graph = None
        if had_graphs:
            # dynamo keeps its graphs with the (shared) code they compiled; only a reset lets go of them
            self._compiler.submit(torch._dynamo.reset)

    def _call(self, *args, **kwargs):
        if self._eager_only:
            return self._unet._call_impl(*args, **kwargs)
        key = inputs_key(args, kwargs)
        with self._lock:
            ready = key in self._ready and self._weights_token() is not None and not torch.is_grad_enabled()
            start = (key is not None and key not in self._tried and self._problem is None
                     and len(self._tried) < MAX_GRAPHS and not self._released)
            if start:
                self._tried.add(key)
                self._preparing += 1
        if ready:
            return self._graph(*args, **kwargs)
        if start:
            example = _detached_copy(args), _detached_copy(kwargs)  # the job goes on using its own tensors
            self._compiler.submit(lambda: self._prepare(key, *example))
        return self._unet._call_impl(*args, **kwargs)

    def _prepare(self, key: tuple, args: tuple, kwargs: dict) -> None:
        """Compile the graph for `key` (in the compiler's thread) and keep it if the weights held still."""
        try:
            token = self._weights_token()
            if token is None or self._released:
                with self._lock:
                    self._tried.discard(key)  # LoRAs were in: try again on a later call with plain weights
                return
            with torch.no_grad():
                self._graph(*args, **kwargs)
            with self._lock:
                if token == self._weights_token() and not self._released:
                    self._ready.add(key)
                else:
                    self._tried.discard(key)
        except Exception as error:
            log.warning("torch.compile failed; images run without it: %s", error)
            with self._lock:
                self._problem = _problem_sentence(error)
        finally:
            with self._lock:
                self._preparing -= 1


def _detached_copy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached_copy(item) for item in value)
    if isinstance(value, dict):
        return {key: _detached_copy(item) for key, item in value.items()}
    return value


def _problem_sentence(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "compiler" in text.lower() or "cpp" in text.lower() or "cl.exe" in text.lower():
        return ("The faster compiled mode needs a C++ compiler, which this machine lacks; images run at normal "
                "speed. Install one (gcc on Linux, Xcode tools on macOS, Visual Studio Build Tools on Windows) "
                "and restart Easel to get it.")
    return f"The faster compiled mode could not be prepared ({text[:200]}); images run at normal speed."


def eager_calls(compiled: CompiledUnet | None):
    """A context in which the UNet runs eager (a no-op without a compiled UNet)."""
    return compiled.eager() if compiled is not None else nullcontext()


def compile_sentence(state: CompileState | None, problem: str | None) -> str:
    """One sentence for the page about the compiled mode ("" when there is nothing to say)."""
    if state is CompileState.PREPARING:
        return ("A faster compiled mode for this model and image size is being prepared in the background (a few "
                "minutes, once: it is kept on disk); images are made at normal speed meanwhile.")
    if state is CompileState.READY:
        return "Compiled mode ready: images of the sizes made so far run faster."
    if state is CompileState.UNAVAILABLE:
        return problem or ""
    return ""
