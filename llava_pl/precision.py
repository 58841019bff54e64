"""The training precision policy: which dtype each parameter is held in, set once the stage has decided what
trains and before the optimizer exists, plus TF32 matmuls on GPUs.

Mixed precision computes in a low-precision dtype but keeps float32 master weights: an update of lr 2e-5 to a
weight of 0.02 is far below a float16 or bfloat16 weight's spacing (~1.5e-5 and ~1.2e-4 there) and would round
away. Checkpoints are often saved in 16 bits (Vicuna's config says float16, Llama-3's and Qwen2.5's bfloat16)
and ``dtype: auto`` loads them so, so the policy casts what trains to float32 whatever the checkpoint holds.
docs/precision.md has the rules per strategy and what they cost in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import nn


@dataclass(frozen=True)
class PrecisionPolicy:
    """The dtypes ``apply`` gives a model's parameters.

    Attributes:
        trainable: the dtype of every parameter that requires grad, and so of its gradient and optimizer state;
            ``None`` leaves them as they are (the strategy or precision plugin casts the module itself).
        frozen: the dtype frozen parameters wider than it are cast down to; ``None`` leaves them. Frozen
            parameters already this narrow or narrower (a float16 checkpoint) are never changed: that would only
            round them, and a later stage may train them.
    """

    trainable: torch.dtype | None = torch.float32
    frozen: torch.dtype | None = None

    def apply(self, model: nn.Module) -> dict[str, int]:
        """Casts ``model``'s floating-point parameters in place (the ``Parameter`` objects stay, so tied weights
        stay tied); returns how many parameter elements were cast to each dtype, e.g. ``{"float32": 6_738_415_616}``."""
        cast: dict[str, int] = {}
        with torch.no_grad():
            for parameter in model.parameters():
                if not parameter.is_floating_point():
                    continue
                target = self.trainable if parameter.requires_grad else self._frozen_target(parameter.dtype)
                if target is None or parameter.dtype == target:
                    continue
                parameter.data = parameter.data.to(target)
                name = str(target).removeprefix("torch.")
                cast[name] = cast.get(name, 0) + parameter.numel()
        return cast

    def _frozen_target(self, dtype: torch.dtype) -> torch.dtype | None:
        if self.frozen is None or torch.finfo(dtype).bits <= torch.finfo(self.frozen).bits:
            return None
        return self.frozen


def precision_policy(precision: str, strategy: type) -> PrecisionPolicy:
    """The policy for Lightning's ``trainer.precision`` under a strategy class (the trainer's strategy's type).

    - ``*-mixed`` and ``32-true``: trainable parameters float32 (the optimizer's master weights); under
      ``bf16-mixed`` frozen float32 parameters (a frozen vision tower) are held in bfloat16, the dtype autocast
      computes them in anyway.
    - ``bf16-true``, ``16-true``, ``64-true``: nothing; Lightning's precision plugin converts the whole module.
    - DeepSpeed: nothing; its engine casts the module to the bf16/fp16 compute dtype (Lightning to float32
      under ``32-true``) and its ZeRO optimizer keeps float32 master partitions and Adam moments of the
      trainable parameters itself. A float32 copy made beforehand would only cost host memory.
    """
    precision = str(precision)
    if issubclass(strategy, DeepSpeedStrategy) or not (precision.endswith("-mixed") or precision == "32-true"):
        return PrecisionPolicy(trainable=None, frozen=None)
    return PrecisionPolicy(trainable=torch.float32, frozen=torch.bfloat16 if precision == "bf16-mixed" else None)


def apply_tf32(allowed: bool) -> None:
    """TF32 tensor cores for float32 matmuls and convolutions on CUDA GPUs (Ampere and later), as LLaVA's
    ``--tf32 True``: float32 work outside autocast (and ``32-true`` runs) at ~10 mantissa bits, several times
    faster. CPUs are unaffected."""
    if not isinstance(allowed, bool):
        raise TypeError(f"allow_tf32 must be true or false, got {allowed!r}")
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed
