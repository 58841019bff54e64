"""Building without weights: empty (meta-device) models, materialising them, restoring checkpoints into them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from llava_pl.checkpoint.load import model_from_checkpoint
from llava_pl.constants import IMAGE_TOKEN_ID
from llava_pl.model.architecture import architecture_only, is_architecture_only
from llava_pl.model.build import build_empty_model, build_model, materialize
from tests.test_config import saved_backbones  # noqa: F401  (fixture: tiny CLIP and Llama folders)


def _logits(model, tokens_per_image: int, image_size: int) -> torch.Tensor:
    ids = torch.tensor([[5, *[IMAGE_TOKEN_ID] * tokens_per_image, 6, 7]])
    torch.manual_seed(1)
    pixels = torch.randn(1, 3, image_size, image_size)
    with torch.no_grad():
        return model.eval()(ids, torch.ones_like(ids), pixels, torch.tensor([1]))["logits"]


def test_empty_model_allocates_nothing_and_the_switch_is_scoped(compose_config) -> None:
    cfg = compose_config()
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    model = build_empty_model(cfg.model, tokenizer)
    assert all(tensor.is_meta for tensor in [*model.parameters(), *model.buffers()])
    assert not is_architecture_only()
    with architecture_only():
        assert is_architecture_only()
    assert not build_model(cfg.model, tokenizer).llm.lm_head.weight.is_meta


def test_materialized_model_is_initialised_like_a_built_one(compose_config) -> None:
    cfg = compose_config()
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    built = build_model(cfg.model, tokenizer)
    model = materialize(build_empty_model(cfg.model, tokenizer))
    assert not any(tensor.is_meta for tensor in [*model.parameters(), *model.buffers()])
    # buffers no checkpoint holds are recomputed (rotary frequencies, position ids), tied weights re-tied
    built_buffers = dict(built.named_buffers())
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(buffer, built_buffers[name], msg=name)
    assert model.llm.lm_head.weight is model.llm.get_input_embeddings().weight
    for name, parameter in model.named_parameters():  # initialised, not left as whatever memory held
        assert torch.isfinite(parameter).all() and parameter.abs().max() < 10, name
    model.load_state_dict(built.state_dict())
    size = model.vision.tower.config.image_size
    torch.testing.assert_close(_logits(model, model.tokens_per_image, size), _logits(built, built.tokens_per_image, size))


def _checkpoint(model) -> dict:
    """What LlavaModule's checkpoints hold of the model: every weight, and the stage's LoRA setting."""
    return {"state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
            "hyper_parameters": {"stage": {"lora": None}}}


@pytest.mark.parametrize("preset", ["pretrained_parts", "llava_hf"])
def test_checkpoint_is_restored_without_reading_pretrained_weights(preset, compose_config, saved_backbones,
                                                                   tmp_path) -> None:
    folders = {name: tmp_path / name for name in ("clip", "llm", "llava")}
    for name, folder in folders.items():
        shutil.copytree(saved_backbones[name], folder)
    overrides = (["model=llava_hf", f"model.name_or_path={folders['llava']}"] if preset == "llava_hf" else
                 ["model/vision=pretrained", f"model.vision.name_or_path={folders['clip']}", "model/llm=pretrained",
                  f"model.llm.name_or_path={folders['llm']}"])
    cfg = compose_config(*overrides)
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    trained = build_model(cfg.model, tokenizer)
    with torch.no_grad():  # stands in for training: the checkpoint differs from the pretrained weights
        for parameter in trained.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    checkpoint = _checkpoint(trained)
    for weights in [*tmp_path.glob("*/*.safetensors")]:
        weights.unlink()  # the pretrained weights are gone; configs, tokenizer and image processor stay

    restored = model_from_checkpoint(cfg.model, tokenizer, checkpoint)
    size = trained.vision.tower.config.image_size
    torch.testing.assert_close(_logits(restored, restored.tokens_per_image, size),
                               _logits(trained, trained.tokens_per_image, size))
    with pytest.raises(Exception, match="no file named model.safetensors"):  # building with weights needs them
        build_model(cfg.model, tokenizer)


@pytest.mark.slow
def test_resumed_run_restores_completed_stages_from_their_checkpoint(compose_config, tmp_path) -> None:
    from llava_pl.train import run

    def small(stage: str) -> list[str]:
        return [f"stage.{stage}.{key}={value}" for key, value in
                (("max_steps", 2), ("warmup_ratio", 0), ("micro_batch_size", 8), ("global_batch_size", 8))]

    run(compose_config("stage=align", "tasks=[]", *small("align")))
    run_dir = Path(compose_config().run_dir)
    align_checkpoint = run_dir / "align" / "checkpoints" / "last.ckpt"
    aligned = torch.load(align_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    written = align_checkpoint.stat().st_mtime_ns

    # finetune trains only the LLM, so its projector is align's exactly if align's checkpoint was restored
    run(compose_config("stage=[align,finetune]", "ckpt_path=last", "tasks=[]", *small("align"),
                       *small("finetune"), "stage.finetune.trains=[llm]"))
    assert align_checkpoint.stat().st_mtime_ns == written  # align was complete: it did not run again
    finetuned = torch.load(run_dir / "finetune" / "checkpoints" / "last.ckpt", map_location="cpu",
                           weights_only=False)["state_dict"]
    projector = [key for key in aligned if key.startswith("model.projector.")]
    assert projector and all(torch.equal(aligned[key], finetuned[key]) for key in projector)

    # control: the same finetune from a fresh model keeps a projector unlike align's
    run(compose_config("stage=finetune", f"run_dir={tmp_path / 'fresh'}", "tasks=[]", *small("finetune"),
                       "stage.finetune.trains=[llm]"))
    fresh = torch.load(tmp_path / "fresh" / "finetune" / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"]
    assert not all(torch.equal(aligned[key], fresh[key]) for key in projector)
