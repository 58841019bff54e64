"""What one training stage is: which parts train, on which data, with which hyperparameters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from llava_pl.common.images import IMAGE_ASPECTS, ImageAspect
from llava_pl.errors import ConfigError

Part = Literal["vision", "projector", "llm"]
PARTS: tuple[Part, ...] = ("vision", "projector", "llm")
LossAverage = Literal["token", "sample"]
LOSS_AVERAGES: tuple[str, ...] = get_args(LossAverage)


@dataclass
class StageConfig:
    """One stage of training, as a file of ``conf/stage/`` declares it.

    Attributes:
        name: the stage's name (its key under ``stage:``); also names its output folder.
        trains: the parts whose parameters learn; all others are frozen and kept in eval mode.
        dataset: the key of this stage's data under ``data.sets``.
        template: the conversation template (a Hydra-instantiable config).
        lr: the learning rate of every trained part without its own entry in ``part_lr``.
        part_lr: per-part learning rates (``vision``, ``projector``, ``llm``); ``null`` means ``lr``.
        global_batch_size: samples per optimizer step over all devices; accumulation is derived.
        lora: LoRA settings (``r``, ``alpha``, ``dropout``, ``target_modules``) or ``null`` to train the
            LLM's own weights.
        gradient_checkpointing: recompute the activations of the LLM's blocks (and of the vision tower's, when
            it trains) in the backward pass instead of keeping them.
        compile_blocks: ``torch.compile`` each LLM decoder block.
        supervised_logits_only: compute the LM head only where the next token is supervised (the loss is the
            same; image and prompt positions cost no vocabulary projection).
        vision_feature_cache: keep the frozen tower's features of every distinct image in host memory, so
            that each image is encoded once (``llava_pl.model.feature_cache``).
        loss_average: ``token`` averages a micro-batch's loss over its supervised tokens (LLaVA), ``sample``
            over its samples, each the mean of its own tokens (a one-word answer weighs as much as a long one).
        image_aspect: how images reach the encoder's input size (``llava_pl.data.images.ImageTransform``):
            LLaVA-1.5 uses ``crop`` to align and ``pad`` to finetune; ``data.image_aspect``, when set, overrides it.
    """

    name: str
    trains: list[Part]
    dataset: str
    template: Any
    lr: float
    part_lr: dict[str, float | None]
    global_batch_size: int
    micro_batch_size: int
    epochs: int
    max_steps: int
    warmup_ratio: float
    weight_decay: float
    betas: tuple[float, float]
    gradient_clip_val: float
    max_length: int
    gradient_checkpointing: bool
    val_check_interval: float | int | None
    lora: dict[str, Any] | None
    compile_blocks: bool = False
    supervised_logits_only: bool = True
    vision_feature_cache: bool = False
    decay_ratio: float | None = None
    loss_average: LossAverage = "token"
    image_aspect: ImageAspect = "pad"

    def __post_init__(self) -> None:
        for key, parts in (("trains", self.trains), ("part_lr", self.part_lr)):
            unknown = [part for part in parts if part not in PARTS]
            if unknown:
                raise ConfigError(f"stage {self.name}: {key} has unknown part(s) {unknown}; choose from {list(PARTS)}")
        for key in ("lr", "global_batch_size", "micro_batch_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"stage {self.name}: {key} must be positive, got {getattr(self, key)}")
        for part, value in self.part_lr.items():
            if value is not None and value <= 0:
                raise ConfigError(f"stage {self.name}: part_lr.{part} must be positive, got {value}")
        if self.loss_average not in LOSS_AVERAGES:
            raise ConfigError(f"stage {self.name}: loss_average must be one of {list(LOSS_AVERAGES)}, "
                             f"got {self.loss_average!r}")
        if self.image_aspect not in IMAGE_ASPECTS:
            raise ConfigError(f"stage {self.name}: image_aspect must be one of {list(IMAGE_ASPECTS)}, "
                             f"got {self.image_aspect!r}")
        if self.vision_feature_cache and "vision" in self.trains:
            raise ConfigError(f"stage {self.name}: vision_feature_cache needs a frozen vision tower, but trains has 'vision'")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"stage {self.name}: warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.decay_ratio is not None and not 0 < self.decay_ratio <= 1 - self.warmup_ratio:
            raise ConfigError(f"stage {self.name}: decay_ratio must be null or in (0, 1 - warmup_ratio], "
                             f"got {self.decay_ratio}")

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step so that ``global_batch_size`` samples make one step."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"stage {self.name}: global_batch_size {self.global_batch_size} is not divisible by "
                f"micro_batch_size {self.micro_batch_size} x world size {world_size}"
            )
        return self.global_batch_size // per_step

    def require_steps(self, steps: int, samples: int, world_size: int) -> None:
        """``ConfigError`` when the stage would make no optimizer step: fewer ``samples`` per epoch than one full
        micro-batch per process (a loader drops the last incomplete one), which would hand on untrained weights."""
        if steps > 0:
            return
        key = f"stage.{self.name}"
        processes = f" on each of {world_size} processes" if world_size > 1 else ""
        fits = max(1, samples // world_size)
        raise ConfigError(
            f"stage {self.name} would make 0 optimizer steps: its data gives {samples} training sample(s) per epoch, "
            f"fewer than one micro-batch of {key}.micro_batch_size={self.micro_batch_size}{processes} "
            f"({key}.global_batch_size={self.global_batch_size}). Give the stage more data, or lower "
            f"{key}.micro_batch_size to at most {fits} and {key}.global_batch_size to a multiple of it"
        )

    def lr_of(self, part: str) -> float:
        return self.part_lr.get(part) or self.lr

    def warmup_steps(self, total_steps: int) -> int:
        return math.ceil(self.warmup_ratio * total_steps)

    def decay_steps(self, total_steps: int) -> int | None:
        """Steps of the final decay; None: the decay spans every step after warmup."""
        if self.decay_ratio is None:
            return None
        return max(1, min(math.ceil(self.decay_ratio * total_steps), total_steps - self.warmup_steps(total_steps)))
