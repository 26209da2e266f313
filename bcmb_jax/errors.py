"""Input errors: what every command reports as one line (`error: <where>: <what>`) and exit status 2.

Every error that means "the input is wrong" (a file, a key, a value, a checkpoint) is an `InputError`;
`cli.command` prints it as one line. Anything else raised inside the package is a bug and keeps its
traceback. Each concern has its own subclass, so callers can catch just theirs.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: the message names the file, key or line and says what was expected."""


class ConfigError(InputError):
    """A configuration value is missing, unknown or unsupported."""


class DataError(InputError):
    """Bad data input: a missing path, an unreadable file, a missing field or column."""


class WeightsError(InputError):
    """A checkpoint cannot be read or does not match the model."""


class DamagedCheckpoint(WeightsError):
    """A checkpoint whose files cannot be read (truncated, corrupt), as opposed to one of another model."""


class ConversionError(InputError):
    """The conversion was asked for something it cannot do (wrong kind of source, bad option)."""


class TaskDataError(InputError):
    """Malformed task input: names the file (and line) and what was expected."""


class FinetuneError(InputError):
    """A fine-tuning run was asked for something it cannot do."""


__all__ = ["InputError", "ConfigError", "DataError", "WeightsError", "DamagedCheckpoint", "ConversionError",
           "TaskDataError", "FinetuneError"]
