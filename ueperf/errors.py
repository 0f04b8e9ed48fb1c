"""User-facing errors.

Every error a user can cause by what they pass in (a path, a config value, a file) is a
:class:`UeperfError`. The CLIs print its message (no traceback) and exit with status 2. The
message says what was wrong, which file or value, and what to do next.
"""


class UeperfError(Exception):
    """Base class of errors caused by user input; the message is meant for the user."""


class ConfigError(UeperfError, ValueError):
    """A bad config key, value, type, or an unknown registered name."""


class DataError(UeperfError):
    """A dataset that is missing, malformed, corrupt, unsafe or inconsistent."""


class ModelError(UeperfError):
    """A checkpoint that does not fit the model, or a bad model request."""


class TrainingDiverged(UeperfError):
    """The loss became NaN or infinite."""


def require(checks) -> None:
    """Raise :class:`ConfigError` with the message of the first ``(ok, message)`` pair not ok."""
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
