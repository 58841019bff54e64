"""The training recipe: prepare data → build the model → run each stage → evaluate."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from llava_pl.callbacks.monitor import monitor_callbacks
from llava_pl.checkpoint.atomic import remove_partial_files
from llava_pl.checkpoint.lightning_io import AtomicCheckpointIO
from llava_pl.checkpoint.load import model_from_checkpoint
from llava_pl.checkpoint.projector_file import PROJECTOR_FILE, save_projector
from llava_pl.checkpoint.resize import ResumeOnAnyWorldSize
from llava_pl.checkpoint.resume import resume_plan, stage_checkpoint
from llava_pl.checkpoint.sharded import load_checkpoint
from llava_pl.checkpoint.unshard import unsharded_model
from llava_pl.data.counts import DataCounts
from llava_pl.data.options import data_options, datamodule_class, stage_image_aspect
from llava_pl.data.images import ImageTransform
from llava_pl.distributed.sharding import builds_sharded
from llava_pl.errors import ConfigError
from llava_pl.eval.at_end import evaluate_at_end
from llava_pl.eval.callback import eval_callbacks
from llava_pl.eval.processes import Processes
from llava_pl.eval.runner import flat_metrics
from llava_pl.fault.callbacks import fault_callbacks
from llava_pl.fault.config import FaultConfig
from llava_pl.fault.memory import explain_out_of_memory
from llava_pl.fault.preemption import StopRequest, stop_signals
from llava_pl.loggers import log_run_config
from llava_pl.model.build import build_model
from llava_pl.model.llava import LlavaModel
from llava_pl.model.pretrained_weights import PretrainedWeights, deferred_weights
from llava_pl.model.varlen_attention import use_varlen_attention
from llava_pl.module import LlavaModule
from llava_pl.precision import apply_tf32
from llava_pl.provenance import record_run
from llava_pl.quiet import quiet_libraries
from llava_pl.resolvers import register_resolvers
from llava_pl.stage import StageConfig
from llava_pl.validate import validate_config

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
            raise ConfigError(f"stage.{key} declares name {stages[-1].name!r}; the two must agree")
    if not stages:
        raise ConfigError("no stage selected: use e.g. stage=align, stage=finetune or stage=[align,finetune]")
    for stage in stages:
        if stage.dataset not in cfg.data.sets:
            raise ConfigError(f"stage {stage.name}: data.sets has no entry {stage.dataset!r}")
    return stages


def build_loggers(logger_cfg: DictConfig | None, version: str) -> list[Logger]:
    # a scalar entry is a setting the group shares (wandb's `logger.mode`), not a logger
    return [instantiate(entry, version=version) for entry in (logger_cfg or {}).values() if OmegaConf.is_dict(entry)]


def fit_stage(
    cfg: DictConfig,
    stage: StageConfig,
    model: LlavaModel,
    tokenizer: PreTrainedTokenizerBase,
    run_dir: Path,
    ckpt_path: str | None = None,
    center_projector: bool = False,
    pretrained: PretrainedWeights | None = None,
) -> L.Trainer:
    """Trains one stage (or resumes it from ``ckpt_path``); its checkpoints and projector weights go to
    ``run_dir/<stage name>/``. Afterwards ``trainer.lightning_module.model`` is the trained model as one plain
    module, also after a sharding strategy. ``center_projector``: the projector is fresh, centre it on the
    first batch's vision features. ``pretrained``: the weights of the model's empty parts (a sharded build),
    read once the strategy has sharded the model."""
    stage_dir = run_dir / stage.name
    image_aspect = stage_image_aspect(cfg.data, stage)
    data = datamodule_class(cfg.data)(  # LlavaDataModule, or data.datamodule (data=wds streams shards)
        **cfg.data.sets[stage.dataset],
        image_folder=cfg.data.image_folder,
        micro_batch_size=stage.micro_batch_size,
        max_length=stage.max_length,
        image_aspect=image_aspect,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
        **data_options(cfg.data),  # on_bad_sample, length_cache, ...
    )
    if cfg.data.get("packing"):
        log.info(f"packing: the LLM attends within each sample with {use_varlen_attention(model.llm)} attention")
    data.connect(tokenizer, instantiate(stage.template), model.vision.image_processor, model.tokens_per_image)
    module = LlavaModule(model, stage, OmegaConf.to_container(cfg.model, resolve=True), image_aspect,
                         center_projector=center_projector, pretrained=pretrained)
    checkpoint = ModelCheckpoint(dirpath=stage_dir / "checkpoints", **cfg.checkpoint)
    extra_callbacks = [instantiate(callback) for callback in (cfg.get("callbacks") or {}).values()]
    extra_callbacks.append(DataCounts())  # data/samples/<source>, data/bad_samples/<reason>, end-of-stage summary
    extra_callbacks += eval_callbacks(cfg, tokenizer, instantiate(stage.template),
                                      ImageTransform(model.vision.image_processor, image_aspect),
                                      run_dir / stage.name / "eval")
    extra_callbacks += fault_callbacks(FaultConfig.from_cfg(cfg), stage_checkpoint(run_dir, stage))
    extra_callbacks.append(ResumeOnAnyWorldSize())  # a checkpoint resumes on any number of devices
    loggers = build_loggers(cfg.get("logger"), stage.name)
    log_run_config(loggers, cfg)
    monitors = monitor_callbacks(cfg.get("monitor"), progress_bar=cfg.trainer.get("enable_progress_bar", True))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        strategy=instantiate(cfg.strategy),
        logger=loggers or False,
        callbacks=[*monitors, *extra_callbacks, checkpoint],
        plugins=[AtomicCheckpointIO()],  # atomic saves (last.ckpt included); reads sharded checkpoints too
        default_root_dir=str(stage_dir),
        max_epochs=stage.epochs,
        max_steps=stage.max_steps,
        gradient_clip_val=stage.gradient_clip_val,
        **({"val_check_interval": stage.val_check_interval} if stage.val_check_interval else {}),
        # no validation set: no validation loop (not one over an empty list, which Lightning warns about)
        **({} if cfg.data.sets[stage.dataset].get("val") else {"limit_val_batches": 0}),
    )
    trainer.accumulate_grad_batches = stage.accumulation(trainer.world_size)
    if trainer.is_global_zero:
        remove_partial_files(stage_dir / "checkpoints")  # leftovers of saves killed part-way
    with explain_out_of_memory(stage, trainer):
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    trainer.save_checkpoint(stage_checkpoint(run_dir, stage), weights_only=False)  # a full checkpoint, resumable
    module.model = unsharded_model(trainer, model, cfg.model, tokenizer, stage_checkpoint(run_dir, stage))
    if trainer.is_global_zero:
        save_projector(module.model.projector, stage_dir / PROJECTOR_FILE)
    return trainer


def evaluate(cfg: DictConfig, model: LlavaModel, tokenizer: PreTrainedTokenizerBase, run_dir: Path,
             image_aspect: str) -> dict:
    """The tasks of ``tasks`` (``eval.at_end``) on every process, each answering its share of the questions, into
    ``run_dir/eval``; every one returns ``{task: metrics}``, rank 0 logs them as ``eval/<task>/<metric>``."""
    template = instantiate(cfg.model.llm.template)
    transform = ImageTransform(model.vision.image_processor, image_aspect)
    results = evaluate_at_end(cfg, model, tokenizer, template, transform, run_dir / "eval")
    if not results or not Processes.current().is_main:
        return results
    metrics = {key: value for name, task_metrics in results.items()
               for key, value in flat_metrics(f"eval/{name}", task_metrics).items()}
    loggers = build_loggers(cfg.get("logger"), "eval")
    log_run_config(loggers, cfg)
    for logger in loggers:
        logger.log_metrics(metrics, step=0)
        logger.finalize("success")
    return results


def run(cfg: DictConfig) -> dict[str, Any]:
    """Runs every selected stage on one model, then its evaluation; returns the evaluation results.

    The config is checked before anything is built. ``faults.stop_signals`` stop the run gracefully: a checkpoint
    at the next step boundary, then ``TrainingPreempted`` (exit status ``faults.requeue_exit_code``).
    """
    quiet_libraries()
    stages = selected_stages(cfg)
    faults = validate_config(cfg, stages)
    with stop_signals(faults) as stop:
        return train_and_evaluate(cfg, stages, stop)


def train_and_evaluate(cfg: DictConfig, stages: list[StageConfig], stop: StopRequest) -> dict[str, Any]:
    """The body of ``run``: ``stop`` is checked between stages (within a stage ``GracefulStop`` acts)."""
    apply_tf32(cfg.get("allow_tf32", False))
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    for step in cfg.data.get("prepare") or []:
        instantiate(step)
    record_run(cfg, run_dir)
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    plan = resume_plan(cfg.get("ckpt_path"), stages, run_dir)
    completed = [stage for stage in stages if stage not in [planned for planned, _ in plan]]
    if completed:
        log.info(f"stages already complete in {run_dir}: {[stage.name for stage in completed]}")
        final = stage_checkpoint(run_dir, completed[-1])
        model = model_from_checkpoint(cfg.model, tokenizer, load_checkpoint(final))
        pretrained = None
    else:
        # a sharding strategy builds the pretrained backbones empty: each process reads its shards after sharding
        with deferred_weights() if builds_sharded(instantiate(cfg.strategy)) else nullcontext() as pretrained:
            model = build_model(cfg.model, tokenizer)
    # model.center_projector centres a fresh projector: neither trained by an earlier stage nor loaded
    fresh_projector = not completed and not cfg.model.get("projector_weights")
    for index, (stage, ckpt_path) in enumerate(plan):
        stop.raise_if_requested()
        center = bool(cfg.model.get("center_projector")) and fresh_projector and index == 0 and ckpt_path is None
        model = fit_stage(cfg, stage, model, tokenizer, run_dir, ckpt_path, center,
                          pretrained if index == 0 else None).lightning_module.model
    stop.raise_if_requested()
    last_aspect = stage_image_aspect(cfg.data, stages[-1])  # the model is evaluated as its last stage saw images
    results = evaluate(cfg, model, tokenizer, run_dir, last_aspect)
    draw_report(cfg)
    return results


@rank_zero_only
def draw_report(cfg: DictConfig) -> None:
    """``report.png`` from what the run wrote (``report=none``: none)."""
    if cfg.get("report"):
        instantiate(cfg.report)()
