"""The LightningModule: one stage's freezing, training and validation steps, and optimizer."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from transformers import get_cosine_schedule_with_warmup

from llava_pl.model.llava import LlavaModel
from llava_pl.optim import parameter_groups
from llava_pl.stage import PARTS, StageConfig


def set_trainable(model: LlavaModel, trains: list[str]) -> str:
    """Freezes every part not in ``trains``; returns a table of trainable/frozen parameters per part."""
    rows = [f"{'part':<10} {'status':<10} {'parameters':>14}"]
    for part in PARTS:
        module = getattr(model, part)
        trainable = part in trains
        module.requires_grad_(trainable)
        count = sum(parameter.numel() for parameter in module.parameters())
        rows.append(f"{part:<10} {'trainable' if trainable else 'frozen':<10} {count:>14,}")
    return "\n".join(rows)


class LlavaModule(L.LightningModule):
    """Trains the parts of a ``LlavaModel`` that the stage selects; frozen parts stay in eval mode."""

    def __init__(self, model: LlavaModel, stage: StageConfig) -> None:
        super().__init__()
        self.model = model
        self.stage = stage
        self.save_hyperparameters({"stage": {k: v for k, v in vars(stage).items() if k != "template"}})
        self.parameter_table = set_trainable(model, stage.trains)
        if stage.gradient_checkpointing:
            model.llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def train(self, mode: bool = True) -> LlavaModule:
        super().train(mode)
        for part in PARTS:
            if part not in self.stage.trains:
                getattr(self.model, part).eval()  # no dropout, no batch-norm statistics updates
        return self

    def on_fit_start(self) -> None:
        rank_zero_info(f"stage {self.stage.name}\n{self.parameter_table}")

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            images_per_sample=batch["images_per_sample"],
            labels=batch["labels"],
            sample_ids=batch.get("sample_ids"),
        )

    def training_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor:
        loss = self(batch)["loss"]
        size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=False, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor:
        loss = self(batch)["loss"]
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        stage = self.stage
        parts = [(part, getattr(self.model, part)) for part in PARTS if part in stage.trains]
        optimizer = torch.optim.AdamW(
            parameter_groups(parts, stage.lr, stage.weight_decay), lr=stage.lr, betas=tuple(stage.betas)
        )
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_cosine_schedule_with_warmup(optimizer, stage.warmup_steps(total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
