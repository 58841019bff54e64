"""The public configs of real backbones, carried in the package under ``hub/<organisation>/<name>/``.

Each folder mirrors a Hugging Face hub id and holds what building the architecture needs without a download:
``config.json`` (the architecture values of the published config), ``preprocessor_config.json`` for vision
towers, and for language models ``special_tokens.json`` (the tokenizer's bos/eos/unk/pad tokens and the added
tokens its chat template uses) and ``chat_template.jinja`` (the tokenizer's own chat template, where it has one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HUB_DIR = Path(__file__).resolve().parent / "hub"


def carried_names() -> list[str]:
    """The hub ids the package carries a config for."""
    return sorted(str(path.parent.relative_to(HUB_DIR)) for path in HUB_DIR.glob("*/*/config.json"))


def carried_folder(name_or_path: str) -> Path | None:
    """The carried folder of a hub id (``organisation/name``), or None when the package carries none (a local
    folder, an unknown id)."""
    parts = Path(name_or_path).parts
    if len(parts) != 2 or Path(name_or_path).is_absolute() or ".." in parts:
        return None
    folder = HUB_DIR / name_or_path
    return folder if (folder / "config.json").is_file() else None


def _carried_file(name_or_path: str, file: str) -> Path:
    folder = carried_folder(name_or_path)
    if folder is None:
        raise KeyError(f"no carried config for {name_or_path!r}; carried: {', '.join(carried_names())}")
    path = folder / file
    if not path.is_file():
        raise KeyError(f"the carried copy of {name_or_path} has no {file}")
    return path


def chat_template(name_or_path: str) -> str:
    """The tokenizer's chat template of a carried language model."""
    return _carried_file(name_or_path, "chat_template.jinja").read_text(encoding="utf-8")


def special_tokens(name_or_path: str) -> dict[str, Any]:
    """``{bos_token, eos_token, unk_token, pad_token, added_tokens}`` of a carried language model's tokenizer."""
    return json.loads(_carried_file(name_or_path, "special_tokens.json").read_text(encoding="utf-8"))
