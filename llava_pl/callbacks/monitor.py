"""The ``monitor`` config group as Lightning callbacks."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ProgressBar


def monitor_callbacks(monitor_cfg: Any, progress_bar: bool) -> list[Callback]:
    """The group's callbacks in their YAML order (``ThroughputMonitor`` first, so that its clock stops before
    the others' work at a logging step). A progress bar is left out when the trainer's is disabled, since
    Lightning refuses a progress bar callback then."""
    callbacks = [instantiate(entry) for entry in (monitor_cfg or {}).values() if entry]
    return [callback for callback in callbacks if progress_bar or not isinstance(callback, ProgressBar)]
