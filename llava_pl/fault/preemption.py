"""Graceful stop on ``faults.stop_signals`` (SIGTERM; SIGUSR1, what ``scripts/slurm/train.sbatch`` asks SLURM
for before the time limit; SIGUSR2, what submitit's jobs get, ``hydra/launcher=slurm``): checkpoint at the next
optimizer-step boundary, then exit with a status that tells the launcher to requeue.

A launcher that handles the signal itself (submitit: its handler checkpoints the job's call and requeues it) gets
the signal once the checkpoint is saved: its handler runs then, instead of mid-step.

Lightning's own SIGTERM handling stops after the current micro-batch (possibly mid-accumulation, so the
accumulated gradients would be lost), saves nothing and exits with status 0; its SLURM handler saves from
inside the signal handler, mid-step. Here the handler only records the request; ``GracefulStop`` acts on it
where the training state is exactly the one a periodic checkpoint holds, so the resumed run logs the same
losses as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from llava_pl.fault.config import FaultConfig

log = logging.getLogger(__name__)


class TrainingPreempted(SystemExit):
    """The run stopped on request after saving; its exit status (``code``) asks the launcher to requeue."""


class StopRequest:
    """Remembers that a stop signal arrived. Signals are process-wide, so there is one: ``STOP_REQUEST``."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.received: list[signal.Signals] = []  # in order of arrival, each once
        self.exit_code = FaultConfig.requeue_exit_code
        self.launcher_handlers: dict[signal.Signals, Any] = {}  # the process's handlers before the run

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        received = signal.Signals(signum)
        self.signal_name = received.name  # only a flag: the training loop acts on it
        if received not in self.received:
            self.received.append(received)

    def reset(self, exit_code: int) -> None:
        self.signal_name = None
        self.received = []
        self.exit_code = exit_code

    def hand_over(self) -> None:
        """Runs, after the checkpoint, the handler the process had for each signal received (submitit's requeues
        the job and exits; a launcher's handler that returns leaves the exit to ``TrainingPreempted``)."""
        for received in self.received:
            handler = self.launcher_handlers.get(received)
            if callable(handler) and handler is not self.handle:
                log.info(f"checkpoint saved; handing {received.name} to the launcher's handler {handler!r}")
                handler(int(received), None)

    def install(self, signals: tuple[signal.Signals, ...]) -> dict[signal.Signals, Any]:
        """Makes ``handle`` the handler of ``signals``; returns the handlers it replaced. Only the main thread
        may handle signals: elsewhere (a run started in a thread) nothing is installed."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {signum: signal.signal(signum, self.handle) for signum in signals}

    def preempted(self, where: str) -> TrainingPreempted:
        log.warning(f"stopping on {self.signal_name} {where}; exit status {self.exit_code} asks for a requeue, "
                    "and the same command with ckpt_path=last resumes")
        return TrainingPreempted(self.exit_code)

    def raise_if_requested(self, where: str = "between stages") -> None:
        if self.requested:
            raise self.preempted(where)


STOP_REQUEST = StopRequest()


@contextmanager
def stop_signals(faults: FaultConfig) -> Iterator[StopRequest]:
    """Handles ``faults.stop_signals`` for the duration of the block (restoring the previous handlers after).

    A stop that Lightning's own SIGTERM handling turned into ``SIGTERMException`` (a signal in the short
    window before the first batch) leaves with the requeue status too. On a stop, the handlers the process had
    before (a launcher's) run for the signals received, once everything is saved (``StopRequest.hand_over``).
    """
    STOP_REQUEST.reset(faults.requeue_exit_code)
    warn_if_launcher_signal_missing(faults.signals)
    previous = STOP_REQUEST.install(faults.signals)
    STOP_REQUEST.launcher_handlers = previous
    try:
        try:
            yield STOP_REQUEST
        except SIGTERMException as error:
            raise STOP_REQUEST.preempted("before the first step boundary") from error
    except TrainingPreempted:
        STOP_REQUEST.hand_over()
        raise
    finally:
        STOP_REQUEST.launcher_handlers = {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def submitit_signal() -> signal.Signals | None:
    """Inside a submitit job (``hydra/launcher=slurm`` or ``submitit_local``): the signal submitit asks for
    ``signal_delay_s`` before the time limit and handles itself (``SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return signal.Signals[name] if name in signal.Signals.__members__ else None


def warn_if_launcher_signal_missing(signals: tuple[signal.Signals, ...]) -> None:
    launcher = submitit_signal()
    if launcher is not None and launcher not in signals:
        log.warning(f"submitit sends {launcher.name} before the time limit, but faults.stop_signals is "
                    f"{[s.name for s in signals]}: submitit will requeue from the last periodic checkpoint instead "
                    f"of one saved at the signal; add {launcher.name} to faults.stop_signals")


class GracefulStop(Callback):
    """On a stop request: saves ``checkpoint_path`` at the next optimizer-step boundary, then leaves ``fit``
    with ``TrainingPreempted`` before anything else runs (validation, the next batch, the epoch's end).

    Every rank takes part in the decision, so all of them stop after the same step.
    """

    def __init__(self, checkpoint_path: str | Path, signals: tuple[signal.Signals, ...]) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self.signals = signals
        self._last_step = -1
        self._saved = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installed its own SIGTERM handler when fit began; ours takes over for the training loop
        # (Lightning restores the previous handlers when fit ends).
        STOP_REQUEST.install(self.signals)
        self._last_step = trainer.global_step
        self._saved = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._last_step:
            return  # mid-accumulation: the optimizer has not stepped
        self._last_step = trainer.global_step
        if trainer.strategy.reduce_boolean_decision(STOP_REQUEST.requested, all=False):
            trainer.save_checkpoint(self.checkpoint_path, weights_only=False)
            self._saved = True

    def _leave_if_saved(self, trainer: L.Trainer) -> None:
        if self._saved:
            raise STOP_REQUEST.preempted(f"after step {trainer.global_step} (checkpoint {self.checkpoint_path})")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._leave_if_saved(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._leave_if_saved(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._leave_if_saved(trainer)
