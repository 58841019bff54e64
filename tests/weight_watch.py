"""A callback that records which parts of the model a run trained. It lives in its own module so that Hydra's
import of it (by dotted path) and the test's are the same module, with the same dictionaries."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

CHANGED: dict[str, bool] = {}  # part → whether any of its weights changed during fit (in-process runs)
TRAINABLE: dict[str, int] = {}  # part → how many of its parameters required gradients


class WatchWeights(Callback):
    """Records which parts' weights training changed: a copy at the start of fit, compared at its end."""

    parts = ("vision", "projector", "llm")

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.before = {part: [p.detach().clone() for p in getattr(pl_module.model, part).parameters()]
                       for part in self.parts}
        TRAINABLE.update({part: sum(p.requires_grad for p in getattr(pl_module.model, part).parameters())
                          for part in self.parts})

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        for part in self.parts:
            after = getattr(pl_module.model, part).parameters()
            CHANGED[part] = any(not torch.equal(old, new.detach()) for old, new in zip(self.before[part], after))
