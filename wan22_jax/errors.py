"""Exception types. Every user-facing failure is one of these, with a message that names the culprit."""


class Wan22Error(Exception):
    """Base class of all errors raised on purpose by wan22_jax."""


class ConfigError(Wan22Error, ValueError):
    """A config field that is unknown, missing or inconsistent."""


class WeightMappingError(Wan22Error, ValueError):
    """A checkpoint tensor that is missing, unexpected or mis-shaped."""


class CheckpointFormatError(Wan22Error, ValueError):
    """A checkpoint file that cannot be read safely (corrupt, truncated, or carrying code)."""


class UnsupportedComponentError(Wan22Error, NotImplementedError):
    """A reference case whose component this library does not implement (yet)."""


class InputError(Wan22Error, ValueError):
    """A bad argument to a public API (shape, frame count, size, task, solver...)."""
