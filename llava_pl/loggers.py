"""Logger factories (every logger config is called with ``version=<stage name>``) and what every logger
records about the run besides its metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from llava_pl.provenance import git_state


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
        raise ValueError(f"logger.wandb.mode must be online, offline or disabled, got {mode!r}")
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
