"""The strategy group: every option composes with every stage and model preset and instantiates; DeepSpeed's
config comes from the Hydra values and passes DeepSpeed's own validation; text-only micro-batches use the same
parameters as image batches; impossible batch and device combinations fail before a model is built."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, ModelParallelStrategy

from llava_pl.distributed.deepspeed import LlavaDeepSpeedStrategy, deepspeed_config
from llava_pl.distributed.fsdp import FSDP2Strategy
from llava_pl.model.build import build_empty_model
from llava_pl.model.loss import causal_lm_loss
from llava_pl.train import run, selected_stages
from llava_pl.validate import ConfigError
from tests.conftest import CONF_DIR
from tests.tiny_llava import VOCAB, tiny_llava

STRATEGIES = sorted(path.stem for path in (CONF_DIR / "strategy").glob("*.yaml"))
STAGES = sorted(path.stem for path in (CONF_DIR / "stage").glob("*.yaml"))
MODELS = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml") if path.stem not in {"tiny", "llava_hf"})
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
DEEPSPEED_INSTALL = "DS_BUILD_OPS=0 pip install 'deepspeed>=0.19,<0.20'"


def test_the_group_has_every_strategy_of_the_issue() -> None:
    assert STRATEGIES == ["auto", "ddp", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload", "fsdp",
                          "fsdp_grad_op"]


@pytest.fixture(scope="module")
def presets(data_dir: Path) -> dict[str, tuple[int, int]]:
    """Per real model preset, composed each with another strategy and built once on the meta device: its shard
    units (blocks) and the LLM's hidden size."""
    from hydra import compose, initialize_config_dir

    found = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for index, model in enumerate(MODELS):
            strategy = STRATEGIES[index % len(STRATEGIES)]
            cfg = compose("train", overrides=[f"model={model}", f"strategy={strategy}", "stage=finetune",
                                              "experiment=none", f"paths.data_dir={data_dir}"])
            alone = compose("train", overrides=[f"strategy={strategy}", f"paths.data_dir={data_dir}"])
            assert cfg.strategy == alone.strategy, (model, strategy)  # the two groups do not touch each other
            built = build_empty_model(cfg.model)
            blocks = built.block_classes()
            found[model] = (sum(isinstance(module, blocks) for module in built.modules()) if blocks else 0,
                            built.llm.config.get_text_config().hidden_size)
    return found


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_composes_with_every_stage_and_preset(strategy, compose_config, presets) -> None:
    cfg = compose_config(f"strategy={strategy}", "stage=[align,finetune,finetune_lora]", "experiment=none",
                         "trainer.devices=8")
    assert [stage.name for stage in selected_stages(cfg)] == ["align", "finetune", "finetune_lora"]
    cls = get_class(cfg.strategy._target_) if strategy != "auto" else str
    if issubclass(cls, DeepSpeedStrategy) and not HAS_DEEPSPEED:
        pytest.skip(f"instantiating DeepSpeedStrategy needs deepspeed: {DEEPSPEED_INSTALL}")
    built = instantiate(cfg.strategy)
    expected = {"auto": str, "ddp": DDPStrategy, "fsdp": FSDP2Strategy, "fsdp_grad_op": FSDP2Strategy}
    assert isinstance(built, expected.get(strategy, LlavaDeepSpeedStrategy))
    if isinstance(built, FSDP2Strategy):
        assert isinstance(built, ModelParallelStrategy)
        assert built.reshard_after_forward is (strategy == "fsdp")
    if isinstance(built, LlavaDeepSpeedStrategy):
        assert built.zero_stage_3 is (strategy != "deepspeed_zero2")
    for model, (blocks, hidden) in presets.items():  # every real preset: shard units, DeepSpeed's sizes
        assert blocks >= 2, model
        if strategy.startswith("deepspeed"):
            for stage in selected_stages(cfg):
                config = deepspeed_config(stage, 8, "bf16-mixed", cfg.strategy.zero_optimization, hidden)
                assert "auto" not in str(config) and config["train_batch_size"] == stage.global_batch_size, model


def deepspeed_values(compose_config, strategy: str, devices: int = 8) -> tuple[dict, object]:
    cfg = compose_config("model=llava-1.5-7b", "stage=finetune", f"strategy={strategy}", "experiment=none",
                         f"trainer.devices={devices}", "trainer.precision=bf16-mixed", "stage.finetune.gradient_clip_val=0.5")
    stage = selected_stages(cfg)[0]
    hidden = build_empty_model(cfg.model).llm.config.hidden_size
    return deepspeed_config(stage, devices, cfg.trainer.precision, cfg.strategy.zero_optimization, hidden), stage


def validated_by_deepspeed(config: dict, world_size: int, monkeypatch: pytest.MonkeyPatch):
    """DeepSpeed's own config class, as ``deepspeed.initialize`` builds it on each of ``world_size`` ranks."""
    if not HAS_DEEPSPEED:
        pytest.skip(f"validating with DeepSpeed's own config class needs deepspeed: {DEEPSPEED_INSTALL}")
    import deepspeed.runtime.config as ds_config

    monkeypatch.setattr(ds_config.dist, "get_rank", lambda *args, **kwargs: 0)
    return ds_config.DeepSpeedConfig(config, mpu=SimpleNamespace(get_data_parallel_world_size=lambda: world_size))


def test_deepspeed_config_comes_from_the_hydra_values(compose_config, monkeypatch) -> None:
    """LLaVA-1.5's finetune recipe on 8 GPUs: global batch 128 = micro 16 x 8 GPUs x accumulation 1."""
    config, stage = deepspeed_values(compose_config, "deepspeed_zero3")
    assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) \
        == (128, 16, 1)
    assert config["gradient_clipping"] == 0.5 and config["bf16"] == {"enabled": True} and not config["fp16"]["enabled"]
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["reduce_bucket_size"] == 4096 * 4096  # Vicuna-7B's hidden size, squared
    assert zero["stage3_param_persistence_threshold"] == 40960
    checked = validated_by_deepspeed(config, 8, monkeypatch)
    assert (checked.train_batch_size, checked.train_micro_batch_size_per_gpu, checked.gradient_accumulation_steps) \
        == (128, 16, 1)
    assert checked.zero_optimization_stage == 3 and checked.bfloat16_config.enabled and checked.gradient_clipping == 0.5

    config, _ = deepspeed_values(compose_config, "deepspeed_zero2", devices=2)  # fewer GPUs: more accumulation
    assert config["gradient_accumulation_steps"] == 4 and config["zero_optimization"]["stage"] == 2
    assert validated_by_deepspeed(config, 2, monkeypatch).gradient_accumulation_steps == 4
    config, _ = deepspeed_values(compose_config, "deepspeed_zero3_offload")
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu" and not config["zero_force_ds_cpu_optimizer"]
    assert validated_by_deepspeed(config, 8, monkeypatch).zero_config.offload_optimizer.device == "cpu"
    with pytest.raises(ValueError, match="global_batch_size 128 is not divisible by micro_batch_size 16 x world size 3"):
        deepspeed_config(stage, 3, "bf16-mixed", {"stage": 2}, 4096)


def test_text_only_micro_batch_runs_the_vision_tower_and_projector() -> None:
    """Under ZeRO-3/FSDP every rank must gather and reduce the same parameters in every step: a rank whose
    micro-batch has no image still runs the tower and projector, and that changes neither loss nor gradients."""
    torch.manual_seed(0)
    model = tiny_llava()
    model.vision.requires_grad_(True)  # the widest case: every part trains
    image_ids = torch.tensor([[-200] * model.tokens_per_image + [5, 6, 7, 8]])
    with_image = {"input_ids": image_ids, "pixel_values": torch.randn(1, 3, 16, 16),
                  "images_per_sample": torch.tensor([1]), "labels": image_ids.clamp(min=-100)}
    text_ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    text_only = {"input_ids": text_ids, "pixel_values": torch.zeros(0, 3, 16, 16),
                 "images_per_sample": torch.tensor([0]), "labels": text_ids}

    def used(batch: dict) -> set[str]:
        model.zero_grad(set_to_none=True)
        model(**batch)["loss"].backward()
        return {name for name, parameter in model.named_parameters() if parameter.grad is not None}

    trained = used(with_image)
    assert used(text_only) == trained
    assert {name for name, _ in model.projector.named_parameters(prefix="projector")} <= trained
    assert any(name.startswith("vision.") for name in trained)
    used(text_only)  # ... with zero gradients: the blank image adds nothing
    for name, parameter in model.named_parameters():
        if name.startswith(("vision.", "projector.")) and name in trained:
            assert not parameter.grad.any(), name
    # the text's loss is that of the LLM alone
    logits = model.llm(inputs_embeds=model.llm.get_input_embeddings()(text_ids)).logits
    torch.testing.assert_close(model(**text_only)["loss"], causal_lm_loss(logits, text_ids))
    assert logits.shape[-1] == VOCAB


def test_impossible_batch_over_nodes_and_devices_fails_before_the_model_exists(compose_config, nothing_built) -> None:
    cfg = compose_config("stage=finetune", "strategy=fsdp", "trainer.devices=3", "trainer.num_nodes=2",
                         "stage.finetune.global_batch_size=16", "stage.finetune.micro_batch_size=2")
    with pytest.raises(ConfigError, match=r"stage\.finetune\.global_batch_size=16 is not divisible by "
                                          r"stage\.finetune\.micro_batch_size=2 x 6 processes"):
        run(cfg)
    assert nothing_built(cfg)
    cfg = compose_config("stage=align", "strategy=fsdp", "trainer.precision=16-mixed")
    with pytest.raises(ConfigError, match=r"trainer\.precision=16-mixed is not supported by strategy"):
        run(cfg)
    cfg = compose_config("stage=align", "strategy=deepspeed_zero2", "trainer.accelerator=cpu")
    with pytest.raises(ConfigError, match=r"runs on CUDA GPUs only, but trainer\.accelerator=cpu"):
        run(cfg)
    assert nothing_built(cfg)


def test_slurm_launcher_takes_nodes_and_gpus_from_the_trainer(data_dir) -> None:
    """``hydra/launcher=slurm`` submits one SLURM task per device on ``trainer.num_nodes`` nodes."""
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip("needs hydra-submitit-launcher: pip install 'hydra-submitit-launcher>=1.2,<1.3'")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer.num_nodes=4", "trainer.devices=8",
                                          "hydra.launcher.partition=gpu", "hydra.launcher.account=vlm",
                                          "strategy=deepspeed_zero3", f"paths.data_dir={data_dir}"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (4, 8, 8)
    assert (launcher.partition, launcher.account, launcher.signal_delay_s) == ("gpu", "vlm", 120)


def test_fsdp_shards_per_block_with_activation_checkpointing_and_changes_no_numbers() -> None:
    """``strategy=fsdp``'s sharding on a process group of one: every named block is its own FSDP unit (with
    activation checkpointing), names are unchanged (checkpoints keep their keys), loss and gradients equal the
    unsharded model's."""
    import copy

    import torch.distributed as dist
    from torch.distributed._composable import _get_registry
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    torch.manual_seed(0)
    model = tiny_llava()
    model.llm_block_classes = (LlamaDecoderLayer,)
    reference = copy.deepcopy(model)
    ids = torch.tensor([[-200] * model.tokens_per_image + [5, 6, 7, 8]])
    batch = {"input_ids": ids, "pixel_values": torch.randn(1, 3, 16, 16), "images_per_sample": torch.tensor([1]),
             "labels": ids.clamp(min=-100)}
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        strategy = FSDP2Strategy(activation_checkpointing=True)
        strategy._device_mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
        strategy.shard(model, model.block_classes())
        blocks = [module for module in model.modules() if isinstance(module, LlamaDecoderLayer)]
        assert blocks and all(isinstance(block, FSDPModule) for block in blocks) and isinstance(model, FSDPModule)
        assert all("checkpoint" in _get_registry(block) for block in blocks)  # torch's composable checkpoint
        assert not any(isinstance(module, FSDPModule) for module in model.vision.modules())  # no block class named
        assert [name for name, _ in model.named_parameters()] == [name for name, _ in reference.named_parameters()]
        loss = model(**batch)["loss"]
        expected = reference(**batch)["loss"]
        loss.backward()
        expected.backward()
        torch.testing.assert_close(loss, expected)
        for (name, parameter), (_, unsharded) in zip(model.named_parameters(), reference.named_parameters()):
            if unsharded.grad is not None:
                torch.testing.assert_close(parameter.grad.full_tensor(), unsharded.grad, msg=name)
    finally:
        dist.destroy_process_group()
