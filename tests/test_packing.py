"""Packing and the no-wasted-work switches: a packed batch trains exactly like the same samples padded."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from llava_pl.common.packing import unpack_rows
from llava_pl.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from llava_pl.data.collate import LlavaCollator
from llava_pl.data.packing import PackingCollator
from llava_pl.model.build import build_model
from llava_pl.model.feature_cache import VisionFeatureCache
from llava_pl.model.llava import ImageCountError
from llava_pl.model.speed import compile_blocks, llm_blocks, vision_towers
from llava_pl.model.varlen_attention import VARLEN_ATTENTION, use_varlen_attention
from llava_pl.module import LlavaModule
from llava_pl.train import run, selected_stages
from tests.tiny_llava import VOCAB, freeze_all_but, tiny_llava


def _samples(tokens_per_image: int, image_size: int) -> list[dict]:
    """Four samples of different lengths: images at different places, one text-only, several label spans."""
    generator = torch.Generator().manual_seed(0)
    image = [IMAGE_TOKEN_ID] * tokens_per_image
    layouts = [  # (ids before the image, has image, ids after, supervised tail)
        (2, True, 9, 5), (0, True, 3, 2), (6, False, 11, 7), (1, True, 14, 10),
    ]
    samples = []
    for index, (before, has_image, after, supervised) in enumerate(layouts):
        text = lambda n: torch.randint(1, VOCAB, (n,), generator=generator).tolist()  # noqa: E731
        ids = text(before) + (image if has_image else []) + text(after)
        labels = [IGNORE_INDEX] * (len(ids) - supervised) + ids[len(ids) - supervised:]
        pixels = torch.randn(int(has_image), 3, image_size, image_size, generator=generator)
        samples.append({"id": f"s{index}", "input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                        "pixel_values": pixels})
    return samples


def _loss_and_grads(
    model, batch: dict, return_logits: bool, loss_average: str = "token"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    keys = ("input_ids", "attention_mask", "pixel_values", "images_per_sample", "labels", "position_ids",
            "sample_lengths")
    inputs = {key: batch[key] for key in keys if key in batch}
    loss = model(**inputs, return_logits=return_logits, loss_average=loss_average)["loss"]
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_packing_collator_restarts_positions_and_masks_sample_boundaries() -> None:
    samples = _samples(tokens_per_image=4, image_size=16)
    batch = PackingCollator()(samples)
    lengths = [len(sample["input_ids"]) for sample in samples]
    assert batch["input_ids"].shape == (1, sum(lengths)) and batch["sample_lengths"].tolist() == lengths
    starts = torch.tensor([0, *lengths]).cumsum(0)[:-1].tolist()
    positions = batch["position_ids"][0]
    assert [int(positions[start]) for start in starts] == [0] * len(samples)
    assert positions.tolist() == [p for n in lengths for p in range(n)]
    labels = batch["labels"][0]
    assert all(int(labels[start]) == IGNORE_INDEX for start in starts)
    # elsewhere the labels are the samples' own
    for sample, start in zip(samples, starts):
        assert labels[start + 1 : start + len(sample["labels"])].tolist() == sample["labels"][1:].tolist()
    assert batch["images_per_sample"].tolist() == [1, 1, 0, 1] and batch["pixel_values"].shape[0] == 3
    assert batch["attention_mask"].all()
    torch.testing.assert_close(unpack_rows(batch["input_ids"], batch["sample_lengths"], 0),
                               LlavaCollator(0)(samples)["input_ids"])


@pytest.mark.parametrize("loss_average", ["token", "sample"])
@pytest.mark.parametrize("attention", [VARLEN_ATTENTION, "sdpa", "eager"])
@pytest.mark.parametrize("trains", [["projector", "llm"], ["projector"]], ids=["finetune", "align"])
def test_packed_loss_and_gradients_equal_padded(attention: str, trains: list[str], loss_average: str) -> None:
    torch.manual_seed(0)
    model = freeze_all_but(tiny_llava("eager" if attention == "eager" else "sdpa").double(), trains)
    samples = [{**s, "pixel_values": s["pixel_values"].double()} for s in _samples(model.tokens_per_image, 16)]
    padded_loss, padded_grads = _loss_and_grads(model, LlavaCollator(0)(samples), True, loss_average)
    if attention == VARLEN_ATTENTION:
        assert use_varlen_attention(model.llm) == VARLEN_ATTENTION
    packed_loss, packed_grads = _loss_and_grads(model, PackingCollator()(samples), False, loss_average)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-12, atol=1e-12)
    assert set(packed_grads) == set(padded_grads) and padded_grads
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)
    if trains == ["projector"]:  # align: no weight gradient of the frozen LLM is ever computed
        assert all(name.startswith("projector.") for name in packed_grads)


def test_packing_changes_the_loss_if_attention_leaks_across_samples() -> None:
    """The equality above is not trivial: the same row without sample boundaries gives another loss."""
    torch.manual_seed(0)
    model = tiny_llava().double()
    samples = [{**s, "pixel_values": s["pixel_values"].double()} for s in _samples(model.tokens_per_image, 16)]
    packed = PackingCollator()(samples)
    with torch.no_grad():
        confined = model(packed["input_ids"], None, packed["pixel_values"], packed["images_per_sample"],
                         packed["labels"], sample_lengths=packed["sample_lengths"])["loss"]
        leaking = model(packed["input_ids"], packed["attention_mask"], packed["pixel_values"],
                        labels=packed["labels"])["loss"]
    assert abs(float(confined) - float(leaking)) > 1e-4


def test_packed_image_count_error_names_the_sample() -> None:
    model = tiny_llava()
    samples = _samples(model.tokens_per_image, 16)
    samples[1]["pixel_values"] = torch.zeros(2, 3, 16, 16)  # two images, one placeholder span
    batch = PackingCollator()(samples)
    with pytest.raises(ImageCountError, match="sample s1: 4 image-token positions but 2 image"):
        model(batch["input_ids"], None, batch["pixel_values"], batch["images_per_sample"], batch["labels"],
              sample_ids=batch["sample_ids"], sample_lengths=batch["sample_lengths"])


@pytest.mark.parametrize("loss_average", ["token", "sample"])
def test_supervised_logits_only_gives_the_same_loss_on_padded_batches(loss_average: str) -> None:
    torch.manual_seed(0)
    model = tiny_llava().double()
    samples = [{**s, "pixel_values": s["pixel_values"].double()} for s in _samples(model.tokens_per_image, 16)]
    batch = LlavaCollator(0)(samples)
    full_loss, full_grads = _loss_and_grads(model, batch, True, loss_average)
    sparse_loss, sparse_grads = _loss_and_grads(model, batch, False, loss_average)
    torch.testing.assert_close(sparse_loss, full_loss, rtol=1e-12, atol=1e-12)
    for name, grad in full_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("tower_trains", [False, True])
def test_frozen_tower_runs_without_autograd(tower_trains: bool) -> None:
    model = freeze_all_but(tiny_llava(), ["projector", "llm", *(["vision"] if tower_trains else [])])
    seen = []
    model.vision.tower.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    model.encode_images(torch.randn(2, 3, 16, 16))
    assert seen == [tower_trains]


def test_switches_from_the_stage_config(compose_config) -> None:
    cfg = compose_config("stage=finetune", "stage.finetune.trains=[vision,projector,llm]",
                         "stage.finetune.gradient_checkpointing=true")
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    model = build_model(cfg.model, tokenizer)
    # SDPA is what transformers picks by default, for both backbones
    assert model.llm.config._attn_implementation == "sdpa"
    assert model.vision.tower.config._attn_implementation == "sdpa"
    module = LlavaModule(model, selected_stages(cfg)[0])
    assert module.stage.supervised_logits_only and not module.stage.compile_blocks
    assert model.llm.is_gradient_checkpointing
    assert all(tower.is_gradient_checkpointing for tower in vision_towers(model.vision))

    names_before = list(model.state_dict())
    assert compile_blocks(model) == cfg.model.llm.model.config.num_hidden_layers
    assert all(block._compiled_call_impl is not None for block in llm_blocks(model))
    assert list(model.state_dict()) == names_before  # checkpoints keep their keys


def test_feature_cache_encodes_each_distinct_image_once() -> None:
    torch.manual_seed(0)
    model = freeze_all_but(tiny_llava(), ["projector"])
    images = torch.randn(3, 3, 16, 16)
    pixels = images[[0, 1, 0, 2]]  # the first image twice
    expected = model.encode_images(pixels)
    model.feature_cache = VisionFeatureCache()
    encoded = []
    model.vision.tower.register_forward_hook(lambda _, args, __: encoded.append(args[0].shape[0]))
    torch.testing.assert_close(model.encode_images(pixels), expected)
    torch.testing.assert_close(model.encode_images(pixels[[3, 1]]), expected[[3, 1]])
    assert encoded == [3]  # three distinct images, encoded in the first call only
    assert (model.feature_cache.misses, model.feature_cache.hits) == (3, 3)


def test_feature_cache_refuses_a_training_tower(compose_config) -> None:
    with pytest.raises(ValueError, match="stage finetune: vision_feature_cache needs a frozen vision tower"):
        selected_stages(compose_config("stage=finetune", "stage.finetune.trains=[vision,projector,llm]",
                                       "stage.finetune.vision_feature_cache=true"))


@pytest.mark.slow
def test_finetune_with_packing_trains(compose_config) -> None:
    cfg = compose_config(
        "stage=finetune", "tasks=[]", "report=none", "data.packing=true", "stage.finetune.max_steps=4",
        "stage.finetune.micro_batch_size=4", "stage.finetune.global_batch_size=4", "checkpoint.every_n_train_steps=100",
        "~monitor.samples",  # generations are not what this test is about
    )
    run(cfg)
    with (Path(cfg.run_dir) / "logs" / "finetune" / "metrics.csv").open() as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/loss")]
    assert len(rows) == 4 and all(float(row["train/loss"]) > 0 for row in rows)
    padding = [float(row["data/padding_fraction"]) for row in rows if row.get("data/padding_fraction")]
    assert padding and all(value == 0.0 for value in padding)
