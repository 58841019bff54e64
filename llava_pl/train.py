"""The training recipe: prepare data → build the model → run each stage → evaluate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from llava_pl.data.datamodule import LlavaDataModule
from llava_pl.data.images import ImageTransform
from llava_pl.model.llava import LlavaModel
from llava_pl.module import LlavaModule
from llava_pl.projector_io import PROJECTOR_FILE, load_projector, save_projector
from llava_pl.resolvers import register_resolvers
from llava_pl.stage import StageConfig

log = logging.getLogger(__name__)
register_resolvers()


def selected_stages(cfg: DictConfig) -> list[StageConfig]:
    """The stages to run, in order, validated before anything is built.

    Every file of the ``stage`` group declares its ``name``; an entry without one only tunes a stage that
    was not selected (e.g. the demo's settings for ``finetune`` when ``stage=align`` runs) and is skipped.
    """
    stages = []
    for key, stage in (cfg.get("stage") or {}).items():
        if "name" not in stage:
            continue
        stages.append(StageConfig(**OmegaConf.to_container(stage, resolve=True)))
        if stages[-1].name != key:
            raise ValueError(f"stage.{key} declares name {stages[-1].name!r}; the two must agree")
    if not stages:
        raise ValueError("no stage selected: use e.g. stage=align, stage=finetune or stage=[align,finetune]")
    for stage in stages:
        if stage.dataset not in cfg.data.sets:
            raise ValueError(f"stage {stage.name}: data.sets has no entry {stage.dataset!r}")
    return stages


def build_model(model_cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> LlavaModel:
    """Vision encoder, projector sized from both backbones, and the LLM sized to the tokenizer."""
    vision = instantiate(model_cfg.vision)
    llm = instantiate(model_cfg.llm.model, tokenizer=tokenizer)
    model = LlavaModel(vision, instantiate(model_cfg.projector), llm)
    if model_cfg.get("projector_weights"):
        load_projector(model.projector, model_cfg.projector_weights)
    return model


def build_loggers(logger_cfg: DictConfig | None, version: str) -> list[Logger]:
    return [instantiate(entry, version=version) for entry in (logger_cfg or {}).values() if entry]


def fit_stage(
    cfg: DictConfig, stage: StageConfig, model: LlavaModel, tokenizer: PreTrainedTokenizerBase, run_dir: Path
) -> L.Trainer:
    """Trains one stage; its checkpoints and projector weights go to ``run_dir/<stage name>/``."""
    stage_dir = run_dir / stage.name
    data = LlavaDataModule(
        **cfg.data.sets[stage.dataset],
        image_folder=cfg.data.image_folder,
        micro_batch_size=stage.micro_batch_size,
        max_length=stage.max_length,
        image_aspect=cfg.data.image_aspect,
        num_workers=cfg.data.num_workers,
    )
    data.connect(tokenizer, instantiate(stage.template), model.vision.image_processor, model.tokens_per_image)
    module = LlavaModule(model, stage)
    checkpoint = ModelCheckpoint(dirpath=stage_dir / "checkpoints", save_last=True, save_top_k=1)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        strategy=instantiate(cfg.strategy),
        logger=build_loggers(cfg.get("logger"), stage.name) or False,
        callbacks=[checkpoint],
        default_root_dir=str(stage_dir),
        max_epochs=stage.epochs,
        max_steps=stage.max_steps,
        gradient_clip_val=stage.gradient_clip_val,
        **({"val_check_interval": stage.val_check_interval} if stage.val_check_interval else {}),
    )
    trainer.accumulate_grad_batches = stage.accumulation(trainer.world_size)
    trainer.fit(module, datamodule=data)
    if trainer.is_global_zero:
        save_projector(model.projector, stage_dir / PROJECTOR_FILE)
    return trainer


@rank_zero_only
def evaluate(cfg: DictConfig, model: LlavaModel, tokenizer: PreTrainedTokenizerBase, run_dir: Path) -> dict:
    evaluation = instantiate(cfg.evaluation)
    template = instantiate(cfg.model.llm.template)
    transform = ImageTransform(model.vision.image_processor, cfg.data.image_aspect)
    results = evaluation(model, tokenizer, template, transform, run_dir)
    metrics = {f"eval/{kind}/{key}": value for kind, row in results.items() for key, value in row.items()}
    for logger in build_loggers(cfg.get("logger"), "eval"):
        logger.log_metrics(metrics, step=0)
        logger.finalize("success")
    return results


def run(cfg: DictConfig) -> dict[str, Any]:
    """Runs every selected stage on one model, then its evaluation; returns the evaluation results."""
    stages = selected_stages(cfg)
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    for step in cfg.data.get("prepare") or []:
        instantiate(step)
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    model = build_model(cfg.model, tokenizer)
    for stage in stages:
        fit_stage(cfg, stage, model, tokenizer, run_dir)
    if not cfg.get("evaluation"):
        return {}
    results = evaluate(cfg, model, tokenizer, run_dir) or {}
    if results:
        from llava_pl.eval.shapes import format_table

        print(format_table(results))
    return results
