"""The errors a user can meet. Each carries a `message`: what happened and what to do.

The core raises these; the edges (UI, HTTP API) show `message` as it is. Anything else that
escapes the core is a bug and is shown as one.
"""


class EaselError(Exception):
    """An error a user can meet. `message` says what happened and what to do."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(EaselError):
    """The request cannot run as given (bad size, range, image...)."""


class OutputError(EaselError):
    """An output could not be written (disk full, permissions...)."""


class ModelNotFound(EaselError):
    """A checkpoint was asked for by a name the models folder does not hold."""


class NoModelAvailable(EaselError):
    """There is no checkpoint to generate with."""


class HelperModelMissing(NoModelAvailable):
    """A model a feature needs (the safety checker) is not in its folder and could not be fetched."""


class ModelLoadError(EaselError):
    """A checkpoint exists but could not be loaded (corrupt, unsupported, unsafe)."""


class QueueFull(EaselError):
    """Too many jobs are waiting; the user should try again shortly."""


class AccessDenied(EaselError):
    """Missing or wrong credentials, or too many wrong ones in a row."""


class TooManyAttempts(AccessDenied):
    """Too many wrong passwords from one address: wait `seconds` before the next try."""

    def __init__(self, message: str, seconds: float):
        super().__init__(message)
        self.seconds = seconds
