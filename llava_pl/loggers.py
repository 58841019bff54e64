"""Logger factories and classes (every logger config is called with ``version=<stage name>``) and what every
logger records about the run besides its metrics."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig, OmegaConf

from llava_pl.errors import ConfigError
from llava_pl.checkpoint.atomic import atomic_path
from llava_pl.provenance import git_state


def _step(row: dict[str | None, Any]) -> float:
    """The row's step; ``inf`` for a row with fewer fields than the header (cut short by a kill mid-write)."""
    if None in row or None in row.values():
        return float("inf")
    try:
        return float(row["step"])
    except (KeyError, ValueError):
        return float("inf")


class _ResumingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it keeps the ``metrics.csv`` an earlier launch left in the folder
    (Lightning's deletes it): the earlier rows before the first step this launch logs stay; those from that step
    on are replaced by this launch's, which logs them again (a resumed run redoes the steps after its checkpoint).
    """

    def __init__(self, log_dir: str) -> None:
        self._earlier: list[dict[str, str]] | None = None
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:  # the base class's constructor deletes metrics.csv here
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self._earlier = list(csv.DictReader(file))

    def save(self) -> None:
        if self._earlier is not None and self.metrics:
            first = min(float(row["step"]) for row in self.metrics)
            kept = [row for row in self._earlier if _step(row) < first]
            self.metrics_keys = sorted(set().union(*kept, *self.metrics))
            with atomic_path(Path(self.metrics_file_path)) as partial, partial.open("w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            self._earlier = None
        super().save()  # appends this launch's rows under the same header


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resumed launch into the same folder (``_ResumingWriter``)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _ResumingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(log_dir=self.log_dir)
        return self._experiment


class _StageWandbLogger(WandbLogger):
    """A wandb run per stage; finishing it at the end of the stage lets the next stage open its own."""

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None


def wandb_logger(
    version: str,
    project: str = "llava_pl",
    entity: str | None = None,
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    mode: Literal["online", "offline", "disabled"] = "online",
    save_dir: str = ".",
    **kwargs: Any,
) -> WandbLogger:
    """A wandb logger whose run is named ``<name>-<stage>``; ``offline``/``disabled`` need no account."""
    if mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"logger.mode (or WANDB_MODE) must be online, offline or disabled, got {mode!r}")
    return _StageWandbLogger(
        name=f"{name}-{version}" if name else version,
        project=project,
        entity=entity,
        group=group,
        tags=list(tags or []),
        mode=mode,
        save_dir=save_dir,
        **kwargs,
    )


def log_run_config(loggers: Sequence[Logger], cfg: DictConfig) -> None:
    """The resolved Hydra config (``config``) and the code's git commit (``git``: ``commit``, ``dirty``) as
    every logger's hyperparameters: the wandb run's config, the CSV logger's ``hparams.yaml``, TensorBoard's
    hparams."""
    if not loggers:
        return
    params = {"config": OmegaConf.to_container(cfg, resolve=True), "git": git_state()}
    for logger in loggers:
        logger.log_hyperparams(params)
