"""The ``key=value`` command lines of the commands that do not use ``@hydra.main`` (predict, export, to_wds, and
the inspector's own keys): ``--help`` and every malformed argument are answered before anything is loaded."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from llava_pl.errors import UsageError

HELP_FLAGS = ("-h", "--help")
Converter = Callable[[str], Any]


def boolean(text: str) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``), any case."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise ValueError(f"expected true or false, got {text!r}")
    return value


def choice(*options: str) -> Converter:
    """A converter that accepts one of ``options``."""

    def convert(text: str) -> str:
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {text!r}")
        return text

    return convert


def answer_help(argv: Sequence[str], help_text: str) -> None:
    """Prints ``help_text`` and exits with status 0 when ``argv`` asks for help."""
    if any(argument in HELP_FLAGS for argument in argv):
        print(help_text.strip())
        raise SystemExit(0)


def parse_key_values(
    argv: Sequence[str],
    keys: Mapping[str, Converter],
    usage: str,
    required: Sequence[str] = (),
    passthrough: Callable[[str], bool] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """``(values, passed through)``: ``key=value`` arguments whose key is in ``keys``, converted by its converter,
    and the arguments ``passthrough(key)`` accepts, as they are (for example Hydra overrides). Anything else, a
    value that does not convert or a ``required`` key left out raises ``UsageError`` naming it, with ``usage``."""
    values: dict[str, Any] = {}
    passed: list[str] = []
    for argument in argv:
        key, sep, text = argument.partition("=")
        if passthrough is not None and passthrough(key):
            passed.append(argument)
        elif not sep:
            raise UsageError(f"expected key=value, got {argument!r}\n{_usage(usage)}")
        elif key not in keys:
            raise UsageError(f"unknown key {key!r} (known: {', '.join(keys)})\n{_usage(usage)}")
        else:
            try:
                values[key] = keys[key](text)
            except ValueError as error:
                raise UsageError(f"{key}: {error}\n{_usage(usage)}") from None
    missing = [key for key in required if key not in values]
    if missing:
        raise UsageError(f"missing {', '.join(f'{key}=' for key in missing)}\n{_usage(usage)}")
    return values, passed


def require_keys(cfg: DictConfig, keys: Sequence[str], usage: str) -> None:
    """For ``@hydra.main`` commands: ``UsageError`` naming the keys that are mandatory (``???``) or null."""
    missing = [key for key in keys if OmegaConf.is_missing(cfg, key) or cfg[key] is None]
    if missing:
        raise UsageError(f"missing {', '.join(f'{key}=' for key in missing)}\n{_usage(usage)}")


def _usage(usage: str) -> str:
    return f"usage: {usage.strip()}\n(--help for more)"


def main_argv(argv: Sequence[str] | None) -> list[str]:
    return list(sys.argv[1:] if argv is None else argv)
