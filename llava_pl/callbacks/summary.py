"""The start-of-stage summary: what trains, on how much data, in which batches, with which strategy."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


def stage_facts(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """The numbers of the summary, also logged as the loggers' ``summary`` hyperparameters."""
    stage = pl_module.stage
    data = trainer.datamodule
    parameters = list(pl_module.model.parameters())
    optimizer = trainer.optimizers[0]
    return {
        "stage": stage.name,
        "parameters": sum(parameter.numel() for parameter in parameters),
        "trainable_parameters": sum(parameter.numel() for parameter in parameters if parameter.requires_grad),
        "train_samples": data.train_samples_per_epoch() if hasattr(data, "train_samples_per_epoch")
        else len(data.train_set),
        "val_samples": len(data.val_set) if data.val_set is not None else 0,
        "batches_per_epoch": data.train_batches_per_epoch(),
        "global_batch_size": stage.global_batch_size,
        "micro_batch_size": stage.micro_batch_size,
        "world_size": trainer.world_size,
        "accumulation": trainer.accumulate_grad_batches,
        "optimizer_steps": pl_module.total_steps(),
        "epochs": stage.epochs,
        "max_length": stage.max_length,
        "tokens_per_image": pl_module.model.tokens_per_image,
        # the schedule's peak: at the start of warm-up the current rate is 0
        "learning_rates": {group.get("name", str(index)): group.get("initial_lr", group["lr"])
                           for index, group in enumerate(optimizer.param_groups)},
        "optimizer": type(optimizer).__name__,
        "strategy": type(trainer.strategy).__name__,
        "precision": trainer.precision,
        "accelerator": type(trainer.accelerator).__name__,
        "devices": trainer.num_devices,
        "nodes": trainer.num_nodes,
    }


def format_summary(facts: dict[str, Any], parameter_table: str) -> str:
    lrs = ", ".join(f"{name} {lr:g}" for name, lr in facts["learning_rates"].items() if not name.endswith("/no_decay"))
    return "\n".join([
        f"stage {facts['stage']}: {facts['trainable_parameters']:,} of {facts['parameters']:,} parameters train",
        parameter_table,
        f"data       {facts['train_samples']:,} train samples ({facts['batches_per_epoch']:,} micro-batches per epoch "
        f"per rank), {facts['val_samples']:,} validation samples",
        f"batch      global {facts['global_batch_size']} = micro {facts['micro_batch_size']} x {facts['world_size']} "
        f"process(es) x accumulation {facts['accumulation']}; {facts['optimizer_steps']:,} optimizer steps "
        f"({facts['epochs']} epoch(s))",
        f"sequences  at most {facts['max_length']} tokens, {facts['tokens_per_image']} per image",
        f"optimizer  {facts['optimizer']}, peak lr {lrs}",
        f"hardware   {facts['strategy']}, precision {facts['precision']}, {facts['accelerator']} x {facts['devices']} "
        f"device(s) x {facts['nodes']} node(s)",
    ])


class RunSummary(Callback):
    """Prints the summary on rank 0 when a stage starts, and logs its numbers as hyperparameters."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        facts = stage_facts(trainer, pl_module)
        if trainer.is_global_zero:
            log.info(format_summary(facts, pl_module.parameter_table))
        for logger in trainer.loggers:
            logger.log_hyperparams({"summary": facts})
