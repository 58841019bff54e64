"""Time the training loop spends waiting for its next batch.

Lightning brackets exactly that wait (``next()`` on the train loader) with its profiler's ``start``/``stop`` and
offers no other hook there, so the wait is read by wrapping whatever profiler the trainer has: every call is
passed on unchanged, and the train loader's waits are also summed here.
"""

from __future__ import annotations

import time
from lightning.pytorch.profilers import PassThroughProfiler, Profiler

TRAIN_FETCH_SUFFIX = "train_dataloader_next"
"""The end of the action name Lightning's training loop profiles its batch fetch under."""


class DataWaitProfiler(Profiler):
    """Passes every profiler call on to ``inner`` and sums the seconds spent fetching training batches."""

    def __init__(self, inner: Profiler | None = None) -> None:
        super().__init__()
        self.inner = inner if inner is not None else PassThroughProfiler()
        self.waited = 0.0
        self._started: float | None = None

    def start(self, action_name: str) -> None:
        if action_name.endswith(TRAIN_FETCH_SUFFIX):
            self._started = time.perf_counter()
        self.inner.start(action_name)

    def stop(self, action_name: str) -> None:
        self.inner.stop(action_name)
        if self._started is not None and action_name.endswith(TRAIN_FETCH_SUFFIX):
            self.waited += time.perf_counter() - self._started
            self._started = None

    def take(self) -> float:
        """The seconds waited since the last ``take``."""
        waited, self.waited = self.waited, 0.0
        return waited

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        self.inner.setup(stage, local_rank, log_dir)

    def teardown(self, stage: str | None) -> None:
        self.inner.teardown(stage)

    def describe(self) -> None:
        self.inner.describe()

    def summary(self) -> str:
        return self.inner.summary()

