"""Projector weights as a safetensors file: what the align stage hands to the finetune stage."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llava_pl.checkpoint.atomic import atomic_path
from llava_pl.model.projector import INPUT_CENTER

PROJECTOR_FILE = "projector.safetensors"


def save_projector(projector: nn.Module, path: str | Path) -> Path:
    """Writes atomically: the file is also the stage's completion marker (see ``checkpoint.resume.stage_is_complete``)."""
    path = Path(path)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in projector.state_dict().items()}
    with atomic_path(path) as partial:
        save_file(state, str(partial))
    return path


def load_projector(projector: nn.Module, path: str | Path) -> None:
    """Loads weights from a file, or from ``projector.safetensors`` inside a folder (an align run's stage folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / PROJECTOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"projector weights not found: {path}")
    state = load_file(str(path))
    expected = projector.state_dict()
    if INPUT_CENTER in expected and INPUT_CENTER not in state:  # written before projectors had a centre
        state[INPUT_CENTER] = torch.zeros_like(expected[INPUT_CENTER])
    if set(state) != set(expected):
        raise ValueError(f"{path}: projector keys {sorted(state)} do not match the model's {sorted(expected)}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{path}: projector weight {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[name].shape)}"
            )
    projector.load_state_dict(state)
