"""The ``python train.py ...`` command lines of README.md and docs/*.md, as Hydra overrides a test can compose.

Commands are found in code blocks and inline code, read at test time (the docs change often): a line holding
``python train.py`` (also after ``srun``, ``torchrun ...`` or an environment assignment) or ``llava-train``,
joined with its ``\\`` continuation lines and with the lines an open quote spans. Placeholders become something
composable: ``...``/``…`` alone mean "more overrides" and are dropped, ``<...>`` likewise; a path or value that
is a placeholder (``/path/...``, ``<folder>``, ``$RUN_DIR``, ``PRESET``) becomes a temporary path, or is dropped
where the key is a config group (the group's default then applies).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# where a command starts; torchrun's own options may put train.py on a continuation line
_COMMAND = re.compile(r"(?:^|[\s`(])(?:python3?\s+(?:\S+/)?train\.py|llava-train|torchrun)(?=\s|$|`)")
_INLINE = re.compile(r"`([^`\n]*(?:train\.py|llava-train)[^`\n]*)`")
_ANGLED = re.compile(r"<[^<>\n]*>")
_ENV = re.compile(r"\$\{?(\w+)\}?")
# Hydra's own flags and whether each takes a value (they are not overrides)
_HYDRA_FLAGS = {"-m": False, "--multirun": False, "-r": False, "--run": False, "--help": False, "-h": False,
                "--hydra-help": False, "--resolve": False, "--version": False, "--info": False,
                "-c": True, "--cfg": True, "-p": True, "--package": True, "-cn": True, "--config-name": True,
                "-cp": True, "--config-path": True, "-cd": True, "--config-dir": True}
_NUMBERS = {"num_nodes", "devices"}  # keys whose $VARIABLE stands for a count


@dataclass
class DocCommand:
    where: str  # file:line
    text: str  # the command as written (continuations joined)
    overrides: list[str]  # Hydra overrides, placeholders replaced
    multirun: bool  # -m / --multirun was given


def _is_placeholder(value: str) -> bool:
    return ("..." in value or "…" in value or bool(_ANGLED.search(value)) or "$" in value
            or bool(re.fullmatch(r"[A-Z][A-Z_]+", value)))


def _override(token: str, stand_in: Path, groups: set[str]) -> str | None:
    """``token`` with a placeholder value replaced; ``None`` when it is to be dropped."""
    if token in ("...", "…") or _ANGLED.fullmatch(token):
        return None
    key, sep, value = token.partition("=")
    if not sep or not _is_placeholder(value):
        return token
    if key.lstrip("+~") in groups:
        return None
    if key.rsplit(".", 1)[-1] in _NUMBERS and _ENV.fullmatch(value):
        return f"{key}=1"
    return f"{key}={stand_in}"


def _tokens(command: str) -> list[str] | None:
    try:
        return shlex.split(_ANGLED.sub("...", command), comments=True)
    except ValueError:  # an open quote: the command goes on on the next line
        return None


def _entry(tokens: list[str]) -> int | None:
    """The position of ``train.py`` / ``llava-train`` among ``tokens``."""
    return next((i for i, token in enumerate(tokens) if token.endswith("train.py") or token == "llava-train"), None)


def parse(command: str, stand_in: Path, groups: set[str]) -> tuple[list[str], bool]:
    """The overrides after ``train.py`` / ``llava-train`` and whether Hydra's multirun flag was given."""
    tokens = _tokens(command)
    if tokens is None or _entry(tokens) is None:
        raise ValueError(f"not a train.py command line: {command}")
    start = _entry(tokens)
    overrides, multirun, skip = [], False, False
    for token in tokens[start + 1:]:
        if skip:
            skip = False
            continue
        if token in _HYDRA_FLAGS:
            multirun |= token in ("-m", "--multirun")
            skip = _HYDRA_FLAGS[token]
            continue
        if token in ("&&", "||", ";", "|"):
            break
        override = _override(token, stand_in, groups)
        if override is not None:
            overrides.append(override)
    return overrides, multirun


def _block_commands(lines: list[str]) -> list[tuple[int, str]]:
    """(line number, command) for each command line, continuations and quoted line breaks joined."""
    found, index = [], 0
    while index < len(lines):
        line = lines[index]
        if not _COMMAND.search(line) or line.lstrip().startswith(("#", "|")):
            index += 1
            continue
        start, text = index + 1, line.strip()
        while index + 1 < len(lines) and (text.endswith("\\") or _tokens(text.rstrip("\\")) is None):
            index += 1
            text = text.rstrip("\\").rstrip() + ("\n" if not text.endswith("\\") else " ") + lines[index].strip()
        found.append((start, text.rstrip("\\").strip()))
        index += 1
    return found


def doc_commands(stand_in: Path, groups: set[str]) -> list[DocCommand]:
    """Every training command of README.md and docs/*.md."""
    commands = []
    for path in DOC_FILES:
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        in_fence, block = False, []
        for number, line in enumerate(lines):
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
                block.append("")
                continue
            indented = line.startswith("    ") or line.startswith("\t")
            block.append(line if in_fence or indented else "")
            if not (in_fence or indented):
                for match in _INLINE.finditer(line):
                    if _COMMAND.search(match.group(1)):
                        commands.append((path, number + 1, match.group(1).strip()))
        commands += [(path, number, text) for number, text in _block_commands(block)]
    parsed = []
    for path, number, text in commands:
        tokens = _tokens(text)
        if tokens is not None and _entry(tokens) is None:  # torchrun of another script
            continue
        overrides, multirun = parse(text, stand_in, groups)  # an unbalanced quote raises: the docs need fixing
        parsed.append(DocCommand(f"{path.relative_to(REPO)}:{number}", text, overrides, multirun))
    return parsed
