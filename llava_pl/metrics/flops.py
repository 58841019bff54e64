"""Model FLOPs of a LLaVA training step, counted from the built model and from which of its weights train.

The count follows the convention MFU is defined with (PaLM, appendix B), made frozen-aware:

- every matmul weight (linear layers, the vision tower's patch convolution) costs 2 FLOPs per position it is
  applied to in the forward pass, 2 more for the gradient of its input when a gradient flows through it, and
  2 more for its own gradient when it trains: 6·N for a trained part, 4·N for a frozen part that gradients
  pass through (the LLM in the align stage), 2·N for a part with nothing trainable in or before it (the frozen
  vision tower, forward only);
- attention adds 4·layers·width·L² per sequence of L tokens forward (QKᵀ and AV; causal masking is not
  discounted, as in the PaLM convention), and twice that backward when a gradient flows;
- the LLM's L are the real per-sample lengths (padding excluded), image positions included; a vision tower's
  L is its patches plus its prefix tokens (CLS, registers); the projector runs on the image tokens.

Biases, norms, activations and the loss are elementwise and left out. Two known approximations: the first
trained layer is charged an input gradient autograd does not compute (the projector's first linear layer,
2·N per image token), and a pooling head that runs on one probe token (SigLIP's) is charged per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig

from llava_pl.model.fused_vision import FusedVisionEncoder
from llava_pl.model.llava import LlavaModel
from llava_pl.model.vision import VisionEncoder


@dataclass(frozen=True)
class Weights:
    """Matmul weight elements of a module, split by whether they train."""

    trainable: int = 0
    frozen: int = 0

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    def __add__(self, other: Weights) -> Weights:
        return Weights(self.trainable + other.trainable, self.frozen + other.frozen)


def matmul_weights(module: nn.Module, kinds: tuple[type[nn.Module], ...]) -> Weights:
    """The ``weight`` elements of the submodules of the given kinds (LoRA adapters are linear layers too)."""
    trainable = frozen = 0
    for submodule in module.modules():
        if isinstance(submodule, kinds):
            if submodule.weight.requires_grad:
                trainable += submodule.weight.numel()
            else:
                frozen += submodule.weight.numel()
    return Weights(trainable, frozen)


def trains(module: nn.Module) -> bool:
    """Whether any parameter of the module learns (a trainable embedding table alone makes gradients flow)."""
    return any(parameter.requires_grad for parameter in module.parameters())


@dataclass(frozen=True)
class Attention:
    """The attention shape of a transformer: ``width`` is query heads x head dimension."""

    layers: int
    width: int

    @classmethod
    def of(cls, config: PretrainedConfig) -> Attention:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(config.num_hidden_layers, heads * head_dim)


@dataclass(frozen=True)
class TowerShape:
    """One vision tower: its linear layers run on every token of its sequence, its patch embedding once per
    patch."""

    linear: Weights
    patch_embedding: Weights
    attention: Attention
    sequence: int
    patches: int
    trains: bool

    @classmethod
    def of(cls, encoder: VisionEncoder) -> TowerShape:
        return cls(
            linear=matmul_weights(encoder.tower, (nn.Linear,)),
            patch_embedding=matmul_weights(encoder.tower, (nn.Conv2d,)),
            attention=Attention.of(encoder.tower.config),
            sequence=encoder.num_patches + encoder.num_prefix_tokens,
            patches=encoder.num_patches,
            trains=trains(encoder),
        )


def linear_flops(weights: Weights, positions: int, gradient_flows: bool) -> int:
    """Forward 2·N, input gradient 2·N where a gradient flows, weight gradient 2·N for trained weights."""
    return 2 * positions * (weights.total * (2 if gradient_flows else 1) + weights.trainable)


def attention_flops(attention: Attention, squared_lengths: int, gradient_flows: bool) -> int:
    forward = 4 * attention.layers * attention.width * squared_lengths
    return forward * (3 if gradient_flows else 1)


class FlopsCounter:
    """FLOPs of one training micro-batch (forward and backward), given its non-padding token count, the sum
    of its squared per-sample lengths and its number of images. The count is linear in all three, so sums
    over any number of micro-batches give the FLOPs of all of them.

    Args:
        towers: the vision tower(s); several are a fused encoder, each running on every image.
        projector: the projector's matmul weights, applied to ``image_tokens`` positions per image.
        projector_trains: whether any projector parameter learns.
        llm: the LLM's matmul weights (the output head included, the input embedding lookup not).
        llm_attention: the LLM's attention shape.
        llm_trains: whether any LLM parameter learns.
        image_tokens: LLM positions per image.
    """

    def __init__(
        self,
        towers: Sequence[TowerShape],
        projector: Weights,
        projector_trains: bool,
        llm: Weights,
        llm_attention: Attention,
        llm_trains: bool,
        image_tokens: int,
    ) -> None:
        self.towers = list(towers)
        self.projector = projector
        self.llm = llm
        self.llm_attention = llm_attention
        self.image_tokens = image_tokens
        vision_trains = any(tower.trains for tower in self.towers)
        # A gradient flows through a part when it or anything before it (vision → projector → LLM) learns.
        self.projector_gradient = vision_trains or projector_trains
        self.llm_gradient = self.projector_gradient or llm_trains

    @classmethod
    def from_model(cls, model: LlavaModel) -> FlopsCounter:
        """Reads the model as it is now: call it after freezing and after LoRA adapters are added."""
        vision = model.vision
        encoders = list(vision.encoders.values()) if isinstance(vision, FusedVisionEncoder) else [vision]
        return cls(
            towers=[TowerShape.of(encoder) for encoder in encoders],
            projector=matmul_weights(model.projector, (nn.Linear,)),
            projector_trains=trains(model.projector),
            llm=matmul_weights(model.llm, (nn.Linear,)),
            llm_attention=Attention.of(model.llm.config.get_text_config()),
            llm_trains=trains(model.llm),
            image_tokens=model.tokens_per_image,
        )

    def parts(self, tokens: int, squared_lengths: int, images: int) -> dict[str, int]:
        """FLOPs per part: ``vision``, ``projector``, ``llm``."""
        vision = sum(
            linear_flops(tower.linear, images * tower.sequence, tower.trains)
            + linear_flops(tower.patch_embedding, images * tower.patches, tower.trains)
            + attention_flops(tower.attention, images * tower.sequence**2, tower.trains)
            for tower in self.towers
        )
        projector = linear_flops(self.projector, images * self.image_tokens, self.projector_gradient)
        llm = linear_flops(self.llm, tokens, self.llm_gradient) + attention_flops(
            self.llm_attention, squared_lengths, self.llm_gradient
        )
        return {"vision": vision, "projector": projector, "llm": llm}

    def flops(self, tokens: int, squared_lengths: int, images: int) -> int:
        """Forward and backward FLOPs of micro-batches with ``tokens`` non-padding tokens in all, per-sample
        lengths whose squares sum to ``squared_lengths``, and ``images`` images."""
        return sum(self.parts(tokens, squared_lengths, images).values())

    def describe(self) -> str:
        """One line per part: its matmul weights and what its FLOPs count (2, 4 or 6 per weight and position)."""

        def factor(weights: Weights, gradient_flows: bool) -> str:
            if weights.trainable == weights.total and gradient_flows:
                return "6·N (trained)"
            if weights.trainable == 0:
                return "4·N (frozen, gradients pass)" if gradient_flows else "2·N (frozen, forward only)"
            return f"4·N + 2·{weights.trainable:,} trained"

        towers = [(tower.linear + tower.patch_embedding, tower.trains) for tower in self.towers]
        rows = [("vision", weights, flows) for weights, flows in towers]
        rows += [("projector", self.projector, self.projector_gradient), ("llm", self.llm, self.llm_gradient)]
        return "\n".join(f"{name:<10} N={weights.total:>14,}  {factor(weights, flows)}"
                         for name, weights, flows in rows)

