"""The ``faults:`` section of ``conf/train.yaml`` as a typed object."""

from __future__ import annotations

import signal
from dataclasses import dataclass, fields
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

NonFinitePolicy = Literal["stop", "skip_step"]
NON_FINITE_POLICIES: tuple[NonFinitePolicy, ...] = ("stop", "skip_step")


@dataclass(frozen=True)
class FaultConfig:
    """What the run does when something goes wrong.

    Attributes:
        on_nonfinite: ``stop`` raises at the first non-finite loss or gradient norm (before the weights
            change); ``skip_step`` drops that optimizer step and trains on. Both log the batch's sample ids.
        stop_signals: signals that ask for a graceful stop: checkpoint at the next optimizer-step boundary,
            then exit with ``requeue_exit_code`` (or, for a signal a launcher handles too, as its handler says:
            submitit's requeues the job). SIGUSR1 is what ``scripts/slurm/train.sbatch`` asks SLURM to send
            before the time limit, SIGUSR2 what submitit asks for (``hydra/launcher=slurm``).
        requeue_exit_code: the exit status of a gracefully stopped run (75, ``EX_TEMPFAIL``: try again).
    """

    on_nonfinite: NonFinitePolicy = "stop"
    stop_signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1", "SIGUSR2")
    requeue_exit_code: int = 75

    def __post_init__(self) -> None:
        if self.on_nonfinite not in NON_FINITE_POLICIES:
            raise ValueError(
                f"faults.on_nonfinite must be one of {list(NON_FINITE_POLICIES)}, got {self.on_nonfinite!r}"
            )
        unknown = [name for name in self.stop_signals
                   if name not in signal.Signals.__members__ or name in ("SIGKILL", "SIGSTOP")]
        if unknown:
            raise ValueError(f"faults.stop_signals: {unknown} are not signals a process can handle "
                             "(e.g. SIGTERM, SIGUSR1)")
        if not 3 <= self.requeue_exit_code <= 255:
            raise ValueError(
                "faults.requeue_exit_code must be in 3..255 (1 and 2 are Python's own errors), "
                f"got {self.requeue_exit_code}"
            )

    @property
    def signals(self) -> tuple[signal.Signals, ...]:
        return tuple(signal.Signals[name] for name in self.stop_signals)

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> FaultConfig:
        """Reads ``cfg.faults``; keys it does not know are refused by name."""
        section = cfg.get("faults") or {}
        values: dict[str, Any] = OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else {}
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"faults: unknown key(s) {unknown}; known keys are {sorted(known)}")
        if "stop_signals" in values:
            values["stop_signals"] = tuple(values["stop_signals"] or ())
        return cls(**values)
