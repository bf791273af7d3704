"""Exception and warning types. Every user-facing failure is one of these, with a message that names the culprit.

One type per kind of mistake, so that callers (and the CLI, which prints `error: <message>` and exits with 2 for
any of them) can tell them apart:

  ConfigError              a config field (checkpoint config, task file, training config) unknown or invalid
  WeightMappingError       a checkpoint tensor missing, unexpected or mis-shaped
  CheckpointFormatError    a checkpoint file that cannot be read (corrupt, truncated, carrying code)
  InputError               a bad argument to a public API or a CLI option (value, shape, type, combination)
  InputFileError           a file named by an argument (--image, --prompt-embeds) missing or unreadable
  InsufficientMemoryError  a request whose compiled program needs more memory than is available
"""


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


class InputFileError(InputError, FileNotFoundError):
    """A file given as an argument (an image, prompt embeddings) that does not exist or cannot be read."""


class InsufficientMemoryError(Wan22Error, MemoryError):
    """A request that would not fit: its compiled program needs more memory than the device has free."""


class Wan22Warning(UserWarning):
    """Base class of the warnings wan22_jax issues for legal but probably unintended values."""


class UnusualInputWarning(Wan22Warning):
    """A legal but odd argument (a size the model was not trained at, a negative prompt guidance ignores...)."""


class UnknownTokenWarning(Wan22Warning):
    """Words of a prompt that the tokenizer maps to its unknown token (the model cannot see them)."""
