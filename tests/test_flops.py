"""The FLOPs counter behind MFU, against numbers worked out by hand and against torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llava_pl.constants import IMAGE_TOKEN_ID
from llava_pl.lora import apply_lora
from llava_pl.metrics.flops import FlopsCounter
from tests.tiny_llava import VOCAB, freeze_all_but, tiny_llava

# Matmul weights of tests/tiny_llava.py's model, by hand:
VISION_LINEAR = 4 * 8 * 8 + 8 * 16 + 16 * 8  # q, k, v, out + fc1 + fc2 = 512
PATCH_CONV = 8 * 3 * 8 * 8  # 8 channels out, 3 in, 8 x 8 kernel = 1536
PROJECTOR = 8 * 16 + 16 * 16  # 128 + 256 = 384
LLM = 4 * 16 * 16 + 2 * 16 * 32 + 32 * 16 + VOCAB * 16  # q, k, v, o + gate, up + down + lm_head = 3200
LORA = 2 * (2 * 16 + 16 * 2)  # r=2 adapters (A: 2x16, B: 16x2) on q_proj and v_proj = 128

# A batch of two samples, 10 and 7 tokens long (padding excluded), each with one image of 4 image tokens.
TOKENS, SQUARED, IMAGES = 10 + 7, 10**2 + 7**2, 2  # 17, 149, 2

# The frozen vision tower runs forward only: 2 FLOPs per weight per position.
VISION_FORWARD = (2 * VISION_LINEAR * (IMAGES * 5)  # 5 tokens per image: 4 patches + CLS = 10240
                  + 2 * PATCH_CONV * (IMAGES * 4)  # the patch convolution once per patch = 24576
                  + 4 * 1 * 8 * (IMAGES * 5**2))  # attention: 4 x layers x width x L² per image = 1600
PROJECTOR_TRAINED = 6 * PROJECTOR * (IMAGES * 4)  # 18432
LLM_ATTENTION_WITH_GRADIENT = 3 * 4 * 1 * 16 * SQUARED  # forward 4·layers·width·ΣL², backward twice that = 28608


def test_hand_calculation_for_align_finetune_vision_and_lora() -> None:
    assert (VISION_LINEAR, PATCH_CONV, PROJECTOR, LLM, LORA) == (512, 1536, 384, 3200, 128)
    assert VISION_FORWARD == 10240 + 24576 + 1600 == 36416

    # align: projector trains; gradients pass through the frozen LLM: 4·N per token
    align = FlopsCounter.from_model(freeze_all_but(tiny_llava(), ["projector"]))
    llm_frozen = 4 * LLM * TOKENS + LLM_ATTENTION_WITH_GRADIENT  # 217600 + 28608
    assert align.parts(TOKENS, SQUARED, IMAGES) == {"vision": 36416, "projector": 18432, "llm": 246208}
    assert align.flops(TOKENS, SQUARED, IMAGES) == VISION_FORWARD + PROJECTOR_TRAINED + llm_frozen == 301056

    # finetune: projector and LLM train: 6·N per token
    finetune = FlopsCounter.from_model(freeze_all_but(tiny_llava(), ["projector", "llm"]))
    llm_trained = 6 * LLM * TOKENS + LLM_ATTENTION_WITH_GRADIENT  # 326400 + 28608
    assert finetune.flops(TOKENS, SQUARED, IMAGES) == VISION_FORWARD + PROJECTOR_TRAINED + llm_trained == 409856

    # the vision tower trains too: 6·N, and its attention backward
    everything = FlopsCounter.from_model(freeze_all_but(tiny_llava(), ["vision", "projector", "llm"]))
    vision_trained = 6 * VISION_LINEAR * 10 + 6 * PATCH_CONV * 8 + 3 * 1600  # 30720 + 73728 + 4800
    assert everything.parts(TOKENS, SQUARED, IMAGES)["vision"] == vision_trained == 109248
    assert everything.flops(TOKENS, SQUARED, IMAGES) == 109248 + 18432 + 355008

    # LoRA: the LLM's own weights are frozen (4·N), the adapters train (6·N)
    model = tiny_llava()
    apply_lora(model, {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    model.vision.requires_grad_(False)
    lora = FlopsCounter.from_model(model)
    llm_lora = 4 * LLM * TOKENS + 6 * LORA * TOKENS + LLM_ATTENTION_WITH_GRADIENT  # 217600 + 13056 + 28608
    assert lora.parts(TOKENS, SQUARED, IMAGES)["llm"] == llm_lora == 259264


def test_flops_add_up_over_micro_batches() -> None:
    counter = FlopsCounter.from_model(freeze_all_but(tiny_llava(), ["projector"]))
    first, second = counter.flops(10, 100, 1), counter.flops(7, 49, 1)
    assert first + second == counter.flops(TOKENS, SQUARED, IMAGES)


def test_describe_names_what_each_part_is_charged() -> None:
    lines = FlopsCounter.from_model(freeze_all_but(tiny_llava(), ["projector"])).describe().splitlines()
    assert lines[0].startswith("vision") and "N=         2,048" in lines[0] and "2·N (frozen, forward only)" in lines[0]
    assert lines[1].startswith("projector") and "6·N (trained)" in lines[1]
    assert lines[2].startswith("llm") and "4·N (frozen, gradients pass)" in lines[2]


def _real_flops(model, length: int = 10) -> int:
    """What torch counts for one forward and backward pass of two unpadded samples of ``length`` tokens."""
    torch.manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (2, length))
    input_ids[:, 1:5] = IMAGE_TOKEN_ID
    with FlopCounterMode(display=False) as counter:
        loss = model(input_ids, torch.ones_like(input_ids), torch.randn(2, 3, 16, 16), torch.tensor([1, 1]),
                     labels=input_ids.clamp(min=0))["loss"]
        loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("trains", "lora", "not_computed"),
    [
        # autograd skips the input gradient of the first trained layer, whose input needs none: the projector's
        # first linear layer (2 x 128 weights x 8 image tokens) or the patch convolution (2 x 1536 x 8 patches)
        (["projector"], False, 2 * 128 * 8),
        (["projector", "llm"], False, 2 * 128 * 8),
        (["projector", "llm"], True, 2 * 128 * 8),
        (["vision", "projector", "llm"], False, 2 * 1536 * 8),
    ],
)
def test_counter_matches_torch_flop_counter(trains: list[str], lora: bool, not_computed: int) -> None:
    model = freeze_all_but(tiny_llava(attention="eager"), trains)  # eager: attention as matmuls torch can count
    if lora:
        apply_lora(model, {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    counted = FlopsCounter.from_model(model).flops(tokens=20, squared_lengths=200, images=2)
    assert _real_flops(model) == counted - not_computed
