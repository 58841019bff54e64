"""The LightningModule: one stage's freezing, training and validation steps, and optimizer."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from llava_pl.distributed.fsdp import FSDP2Strategy
from llava_pl.lora import apply_lora, has_lora
from llava_pl.model.centering import check_unsharded, feature_sum, set_input_center
from llava_pl.model.feature_cache import VisionFeatureCache
from llava_pl.model.llava import LlavaModel
from llava_pl.model.pretrained_weights import PretrainedWeights
from llava_pl.model.speed import compile_blocks, vision_towers
from llava_pl.optim import lr_schedule, parameter_groups
from llava_pl.precision import precision_policy
from llava_pl.stage import PARTS, StageConfig


def set_trainable(model: LlavaModel, trains: list[str]) -> str:
    """Freezes every part not in ``trains``; returns a table of trainable/frozen parameters per part.

    A LoRA-wrapped LLM that trains keeps peft's choice: only its adapters learn.
    """
    rows = [f"{'part':<10} {'status':<10} {'parameters':>14} {'trainable':>14}"]
    for part in PARTS:
        module = getattr(model, part)
        trainable = part in trains
        if not (trainable and has_lora(module)):
            module.requires_grad_(trainable)
        total = sum(parameter.numel() for parameter in module.parameters())
        learning = sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)
        status = ("lora" if has_lora(module) else "trainable") if trainable else "frozen"
        rows.append(f"{part:<10} {status:<10} {total:>14,} {learning:>14,}")
    return "\n".join(rows)


class LlavaModule(L.LightningModule):
    """Trains the parts of a ``LlavaModel`` that the stage selects; frozen parts stay in eval mode."""

    def __init__(
        self,
        model: LlavaModel,
        stage: StageConfig,
        model_config: dict[str, Any] | None = None,
        image_aspect: str = "pad",
        center_projector: bool = False,
        pretrained: PretrainedWeights | None = None,
    ) -> None:
        """``model_config`` (the resolved ``model`` config) is recorded so that a checkpoint can rebuild
        the model for inference and export on its own. ``center_projector``: before the first optimizer step
        of a run that starts at step 0, set the projector's input centre to the mean vision feature of the first
        batch over all processes (``llava_pl.model.centering``). ``pretrained``: the weights of the model's
        empty parts (a sharded build), read once the strategy has sharded the model."""
        super().__init__()
        self.model = model
        self.stage = stage
        self.save_hyperparameters({"stage": vars(stage), "model": model_config, "image_aspect": image_aspect})
        if stage.lora and "llm" in stage.trains:
            apply_lora(model, stage.lora)
        self.parameter_table = set_trainable(model, stage.trains)
        if stage.gradient_checkpointing:
            checkpointing = {"activation_checkpointing_kwargs": {"use_reentrant": False}}
            model.llm.activation_checkpointing_enable(**checkpointing)
            if "vision" in stage.trains:
                for tower in vision_towers(model.vision):
                    tower.activation_checkpointing_enable(**checkpointing)
        if stage.compile_blocks:
            compile_blocks(model)
        model.feature_cache = VisionFeatureCache() if stage.vision_feature_cache else None
        self.center_projector = center_projector
        self.pretrained = pretrained

    def configure_model(self) -> None:
        """Applies the precision policy (``llava_pl.precision``: what trains in float32, before the optimizer
        and before a checkpoint's weights are restored), then shards the model per transformer block under
        ``strategy=fsdp`` (Lightning calls this once the processes exist); other strategies wrap or partition
        the model themselves. A sharded build's empty parts then get their pretrained weights
        (``fill_pretrained``: each process reads only its shards)."""
        cast = precision_policy(self.trainer.precision, type(self.trainer.strategy)).apply(self.model)
        if cast:
            self.print("precision policy: cast " + ", ".join(f"{count:,} parameters to {dtype}"
                                                            for dtype, count in cast.items()))
        if isinstance(self.trainer.strategy, FSDP2Strategy):
            self.trainer.strategy.shard(self.model, self.model.block_classes())
        if self.pretrained:  # the empty parts get this process's shards of their weights
            self.trainer.strategy.fill_pretrained(self.model, self.pretrained)
            self.print(f"sharded build: each process read its shards of {len(self.pretrained)} pretrained tensors")
            self.pretrained = None

    def train(self, mode: bool = True) -> LlavaModule:
        super().train(mode)
        for part in PARTS:
            if part not in self.stage.trains:
                getattr(self.model, part).eval()  # no dropout, no batch-norm statistics updates
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Random state too, so that dropout after a resume draws what it would have drawn.
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["rng_state"]["torch"])

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            images_per_sample=batch["images_per_sample"],
            labels=batch["labels"],
            position_ids=batch.get("position_ids"),
            sample_ids=batch.get("sample_ids"),
            sample_lengths=batch.get("sample_lengths"),
            return_logits=not self.stage.supervised_logits_only,
            loss_average=self.stage.loss_average,
        )

    def _center_projector_on(self, pixel_values: torch.Tensor) -> None:
        """Centres the projector on this batch's vision features, summed over all processes, once it has seen
        any (a resumed run has centred already: its weights come from the checkpoint)."""
        if self.trainer.global_step > 0:
            self.center_projector = False
            return
        check_unsharded(self.model.projector, self.model.vision.hidden_size)  # before the tower runs unwrapped
        with torch.no_grad():
            if len(pixel_values):
                total, count = feature_sum(self.model.vision, pixel_values)
            else:
                total, count = torch.zeros(self.model.vision.hidden_size, device=self.device), 0
        total = self.trainer.strategy.reduce(total, reduce_op="sum")
        count = int(self.trainer.strategy.reduce(torch.tensor(float(count), device=self.device), reduce_op="sum"))
        if count == 0:
            return  # a text-only first batch: try the next one
        mean = total / count
        set_input_center(self.model.projector, mean)
        self.center_projector = False
        self.print(f"centred the projector on the mean of {count} vision features (norm {mean.norm():.2f})")

    def training_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor:
        if self.center_projector:
            self._center_projector_on(batch["pixel_values"])
        loss = self(batch)["loss"]
        size = len(batch["images_per_sample"])  # samples, also when packed into one row
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=False, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor:
        loss = self(batch)["loss"]
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["images_per_sample"]))
        return loss

    def total_steps(self) -> int:
        """Optimizer steps of the whole stage, for the schedule.

        Computed from the data module rather than with ``trainer.estimated_stepping_batches``, which
        builds the train loader before a checkpoint's data position is restored and so defeats resume.
        """
        data = self.trainer.datamodule
        batches = data.train_batches_per_epoch()
        total = math.ceil(batches / self.trainer.accumulate_grad_batches) * self.stage.epochs
        self.stage.require_steps(total, data.train_samples_per_epoch(), self.trainer.world_size)
        return min(total, self.stage.max_steps) if self.stage.max_steps > 0 else total

    def configure_optimizers(self) -> dict[str, Any]:
        stage = self.stage
        parts = [(part, getattr(self.model, part), stage.lr_of(part)) for part in PARTS if part in stage.trains]
        optimizer = torch.optim.AdamW(
            parameter_groups(parts, stage.weight_decay), lr=stage.lr, betas=tuple(stage.betas)
        )
        total = self.total_steps()
        scheduler = lr_schedule(optimizer, total, stage.warmup_steps(total), stage.decay_steps(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
