"""The upscalers held in memory beside the active checkpoint: at most one SD x4 upscaler pipeline and
one ESRGAN-family network, each kept until another one is asked for.

What may stay loaded beside what is the model manager's decision (it knows the memory); this piece
only holds them, loads a network, and lets go.
"""

from app.devices import DevicePlan
from app.errors import ModelLoadError
from app.memory import free_memory
from app.models.loaded import LoadedModel
from app.models.registry import ModelEntry
from app.models.safe_weights import UnreadableWeights
from app.models.upscalers import UpscalerEntry, load_network


class UpscalerSlots:
    def __init__(self):
        self._x4: LoadedModel | None = None
        # A network is tens of MB: kept beside everything else until another one is chosen.
        self._network: tuple[UpscalerEntry, object] | None = None

    @property
    def x4(self) -> LoadedModel | None:
        return self._x4

    def holds_x4(self, entry: ModelEntry) -> bool:
        return self._x4 is not None and self._x4.entry.path == entry.path

    def hold_x4(self, loaded: LoadedModel) -> None:
        self.release_x4()
        self._x4 = loaded

    def network(self, entry: UpscalerEntry, plan: DevicePlan):
        """The network of `entry` (a spandrel descriptor) on the plan's device, loaded on first use."""
        if self._network is None or self._network[0].path != entry.path:
            self.release_network()
            try:
                self._network = (entry, load_network(entry, plan.device, plan.dtype))
            except UnreadableWeights as unreadable:  # changed on disk since the last refresh
                raise ModelLoadError(f"Easel cannot use '{entry.path.name}': {unreadable.reason}") from None
        return self._network[1]

    def follow(self, plan: DevicePlan) -> None:
        """Move to another device plan: the x4 pipeline moves, the network reloads on its next use."""
        if self._x4 is not None:
            self._x4.follow(plan)
        self.release_network()

    def release_x4(self) -> None:
        if self._x4 is not None:
            self._x4.detach()
        self._x4 = None  # the last reference: freed here, before the trim
        free_memory()

    def release_network(self) -> None:
        self._network = None
        free_memory()

    def release(self) -> None:
        self.release_network()
        self.release_x4()
