"""Mistakes in what the user gave (a config value, a data file, a path, a command line) and how the command-line
entry points report them: ``error: <message>`` on standard error and exit status 1 (2 for a malformed command
line), no traceback. Every other exception is a program bug and keeps its traceback. ``HYDRA_FULL_ERROR=1`` shows
the traceback of user errors too (Hydra's own switch, so one variable serves every command).

Which exceptions count as the user's is decided here, deliberately and by type, never by catching broad
built-ins like ``ValueError`` (which program bugs raise as well):

- ``UserError`` and its subclasses: raised by llava_pl where it checks what it was given (``ConfigError``,
  ``DataError``, ``UsageError``, ``llava_pl.data.conversation.SampleError``);
- ``FileNotFoundError``: in this program a missing file is a path the user named (data, images, checkpoint);
- Lightning's ``MisconfigurationException``: Lightning's verdict on trainer settings (e.g. an accelerator the
  machine lacks);
- Hydra's parse and composition errors (an unknown key or preset), when a command composes its config itself;
- any of these raised in a DataLoader worker process, which torch re-raises as a ``RuntimeError`` holding the
  worker's traceback as text: the original message is recovered from it;
- any of these as the cause of Hydra's ``InstantiationException``.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from llava_pl.quiet import quiet_libraries


class UserError(Exception):
    """Something the user gave is wrong; the message says what, naming the key, file or sample."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A config value (or a combination of them) cannot work; the message names each key."""


class DataError(UserError, ValueError):
    """A data file or folder as a whole cannot be used (not JSON, an unfinished conversion, ...)."""


class UsageError(UserError):
    """A malformed command line: an unknown or missing key, a value of the wrong kind."""

    exit_code = 2


# (module, class name) of the other libraries' user errors, looked up only where the module is already loaded
_FOREIGN_USER_ERRORS = (
    ("lightning.fabric.utilities.exceptions", "MisconfigurationException"),
    ("hydra.errors", "OverrideParseException"),
    ("hydra.errors", "ConfigCompositionException"),  # MissingConfigException too (a subclass)
)
_WORKER_ERROR = re.compile(r"Caught (?P<name>\w+) in DataLoader worker process (?P<worker>\d+)\.\nOriginal Traceback")


def _subclasses(cls: type) -> Iterator[type]:
    yield cls
    for subclass in cls.__subclasses__():
        yield from _subclasses(subclass)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types reported as one line (see the module docstring)."""
    foreign = [getattr(sys.modules[module], name) for module, name in _FOREIGN_USER_ERRORS if module in sys.modules]
    return (UserError, FileNotFoundError, *foreign)


def _worker_error(error: BaseException) -> tuple[str, int] | None:
    """The message and exit status of a user error raised in a DataLoader worker, from torch's re-raised text."""
    text = str(error)
    match = _WORKER_ERROR.match(text)
    if match is None:
        return None
    for base in user_error_types():
        for cls in _subclasses(base):
            if cls.__name__ != match["name"]:
                continue
            name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
            start = text.rfind(f"\n{name}: ")  # the traceback's last line: the raised exception itself
            if start >= 0:
                return text[start + len(name) + 3:].strip(), getattr(cls, "exit_code", 1)
    return None


def user_error(error: BaseException) -> tuple[str, int] | None:
    """``(message, exit status)`` when ``error`` is the user's mistake; ``None`` for a program bug."""
    from_worker = _worker_error(error)
    if from_worker is not None:
        return from_worker
    hydra_errors = sys.modules.get("hydra.errors")
    if hydra_errors is not None and isinstance(error, hydra_errors.InstantiationException):
        return user_error(error.__cause__) if error.__cause__ is not None else None
    if isinstance(error, user_error_types()):
        return str(error), getattr(error, "exit_code", 1)
    return None


def full_traceback_wanted() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


Function = TypeVar("Function", bound=Callable[..., Any])


def reports_user_errors(function: Function) -> Function:
    """Decorates a command's entry point: a user error ends the process with ``error: <message>`` on standard
    error and its exit status; other exceptions propagate. Goes under ``@hydra.main`` (Hydra unwraps it to find
    the config path). Every command starts here, so the known library noise is silenced here too
    (``llava_pl.quiet``)."""

    @functools.wraps(function)
    def entry_point(*args: Any, **kwargs: Any) -> Any:
        quiet_libraries()
        try:
            return function(*args, **kwargs)
        except Exception as error:
            found = user_error(error)
            if found is None or full_traceback_wanted():
                raise
            message, status = found
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(status) from None

    return entry_point  # type: ignore[return-value]
