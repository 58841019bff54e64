"""Evaluation during training: every ``eval.every_n_steps`` optimizer steps, the tasks ``tasks=[...]`` selects run
on ``eval.limit`` questions each, split over every rank, and their metrics are logged as ``eval/<task>/<metric>``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from llava_pl.data.images import ImageTransform
from llava_pl.data.templates import Template
from llava_pl.distributed.fsdp import resharded_afterwards
from llava_pl.distributed.sharding import shards_parameters
from llava_pl.eval.processes import Processes
from llava_pl.eval.runner import Runner, flat_metrics
from llava_pl.eval.task import Task
from llava_pl.eval.task_config import selected_tasks

log = logging.getLogger(__name__)


class EvalDuringTraining(Callback):
    """Runs the tasks with the model being trained on every rank, each answering its share of the questions
    (in lockstep under a sharded strategy, whose forward passes need every rank); rank 0 scores and logs.

    Predictions of step ``s`` go to ``<out_dir>/step_<s>/<task>/``.
    """

    def __init__(
        self,
        tasks: dict[str, Task],
        every_n_steps: int,
        out_dir: str | Path,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        image_transform: ImageTransform,
        limit: int | None = 200,
        batch_size: int = 16,
    ) -> None:
        if every_n_steps <= 0:
            raise ValueError(f"eval.every_n_steps must be positive, got {every_n_steps}")
        self.tasks = tasks
        self.every_n_steps = every_n_steps
        self.out_dir = Path(out_dir)
        self.tokenizer = tokenizer
        self.template = template
        self.image_transform = image_transform
        self.limit = limit
        self.batch_size = batch_size
        self._last_step = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:
            return  # mid-accumulation (the step has not advanced) or not an evaluation step
        self._last_step = step
        metrics = self.evaluate(trainer, pl_module, step)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict[str, float]:
        """Every rank must call this; every rank returns the metrics rank 0 scored."""
        runner = Runner(pl_module.model, self.tokenizer, self.template, self.image_transform,
                        batch_size=self.batch_size, model_id=f"step_{step}",
                        autocast=trainer.precision_plugin.forward_context)
        processes = Processes.current(lockstep=shards_parameters(trainer.strategy))
        metrics: dict[str, float] = {}
        try:
            with resharded_afterwards(pl_module.model):
                for name, task in self.tasks.items():
                    result = runner.run(name, task, self.out_dir / f"step_{step}", limit=self.limit,
                                        processes=processes)
                    metrics |= flat_metrics(f"eval/{name}", result.metrics)
        finally:
            pl_module.train()  # the module's own train(): frozen parts stay in eval mode
        if processes.is_main:
            log.info(f"step {step}: " + ", ".join(f"{key} {value:.4g}" for key, value in metrics.items()))
        return metrics


def eval_callbacks(
    cfg: DictConfig,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    image_transform: ImageTransform,
    out_dir: str | Path,
) -> list[Callback]:
    """The evaluation callback a run's ``eval`` config asks for (none without tasks or a step interval)."""
    settings = cfg.get("eval") or {}
    if not cfg.get("tasks") or not settings.get("every_n_steps"):
        return []
    tasks = selected_tasks(cfg)
    return [EvalDuringTraining(tasks, int(settings.every_n_steps), out_dir, tokenizer, template, image_transform,
                               limit=settings.get("limit"), batch_size=int(settings.get("batch_size", 16)))]
