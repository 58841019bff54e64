"""The optimizer's side of training: the learning rate of every parameter group and the gradient norm."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.distributed.tensor import DTensor


class OptimizationMonitor(Callback):
    """Logs, at the steps Lightning writes logs at:

    - ``train/lr/<group>``: the learning rate this step used, per parameter group (``projector``,
      ``projector/no_decay``, ``llm``, …, as ``llava_pl.optim`` names them);
    - ``train/grad_norm``: the L2 norm of all trained parameters' gradients before clipping (after DDP's
      all-reduce; under a sharded strategy, of the shards of rank 0 unless they are DTensors).

    The norm is computed on the device only for the steps that are logged and read at logging time.
    """

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        every = trainer.log_every_n_steps
        if not every or (trainer.global_step + 1) % every:  # this hook runs before the step is counted
            return
        for index, group in enumerate(optimizer.param_groups):
            pl_module.log(f"train/lr/{group.get('name', index)}", group["lr"], on_step=True, on_epoch=False)
        gradients = [parameter.grad for group in optimizer.param_groups for parameter in group["params"]
                     if parameter.grad is not None]
        if gradients:
            norm = torch.nn.utils.get_total_norm(gradients)
            if isinstance(norm, DTensor):
                norm = norm.full_tensor()
            pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False)
