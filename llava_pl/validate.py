"""Checks of the composed config that run before anything is built, each problem named by its config key.

``selected_stages`` already refuses a stage's own bad values (non-positive lr or batch sizes, unknown parts);
these are the checks that need more than one value or more than the stage. An unknown preset never gets
this far: Hydra refuses to compose it, naming the group and listing its options.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, InterpolationToMissingValueError, MissingMandatoryValue

from llava_pl.config_dir import CONF_DIR

from llava_pl.data.images import IMAGE_ASPECTS
from llava_pl.errors import ConfigError  # the config cannot train; the message lists every problem with its key
from llava_pl.fault.config import FaultConfig
from llava_pl.stage import StageConfig


def _uses_cpu(trainer_cfg: DictConfig) -> bool:
    accelerator = trainer_cfg.get("accelerator", "auto")
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def known_world_size(trainer_cfg: DictConfig) -> int | None:
    """Processes the trainer will run, when the config fixes it or the machine tells (``devices: auto`` is one
    process on a CPU and every visible GPU on a GPU machine, as Lightning counts them)."""
    devices, nodes = trainer_cfg.get("devices", "auto"), trainer_cfg.get("num_nodes", 1)
    if isinstance(devices, int) and devices > 0:
        count = devices
    elif OmegaConf.is_list(devices) or isinstance(devices, list):
        count = len(devices)
    elif devices in ("auto", -1, "-1") and _uses_cpu(trainer_cfg):
        count = 1
    elif devices in ("auto", -1, "-1") and trainer_cfg.get("accelerator", "auto") in ("auto", "gpu", "cuda") \
            and torch.cuda.device_count():
        count = torch.cuda.device_count()
    else:
        return None
    return count * nodes if isinstance(nodes, int) and nodes > 0 else None


def _batch_problems(stage: StageConfig, world_size: int | None) -> Iterator[str]:
    key = f"stage.{stage.name}"
    per_step = stage.micro_batch_size * (world_size or 1)
    if stage.global_batch_size % per_step:
        over = f" x {world_size} processes (trainer.devices x trainer.num_nodes)" if (world_size or 1) > 1 else ""
        yield (f"{key}.global_batch_size={stage.global_batch_size} is not divisible by "
               f"{key}.micro_batch_size={stage.micro_batch_size}{over}")
    if stage.epochs < 1:
        yield f"{key}.epochs must be at least 1, got {stage.epochs}"
    if stage.max_steps == 0 or stage.max_steps < -1:
        yield f"{key}.max_steps must be positive or -1 (run the epochs), got {stage.max_steps}"
    if stage.gradient_clip_val < 0:
        yield f"{key}.gradient_clip_val must be >= 0 (0: no clipping), got {stage.gradient_clip_val}"


def _sized_nodes(node: Any, key: str) -> Iterator[tuple[str, dict]]:
    """Every mapping under ``node`` that has both an ``image_size`` and a ``patch_size``, with its key."""
    if isinstance(node, dict):
        if "image_size" in node and "patch_size" in node:
            yield key, node
        for name, child in node.items():
            yield from _sized_nodes(child, f"{key}.{name}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _sized_nodes(child, f"{key}.{index}")


def _vision_problems(cfg: DictConfig) -> Iterator[str]:
    vision = cfg.get("model", {}).get("vision")
    if vision is None:
        return
    for key, node in _sized_nodes(OmegaConf.to_container(vision, resolve=True), "model.vision"):
        size, patch = node["image_size"], node["patch_size"]
        if isinstance(size, int) and isinstance(patch, int) and (patch <= 0 or size % patch):
            yield (f"{key}.image_size={size} is not a multiple of {key}.patch_size={patch} "
                   "(the tower would drop the pixels past the last whole patch)")


def _checkpoint_problems(cfg: DictConfig) -> Iterator[str]:
    checkpoint = cfg.get("checkpoint") or {}
    keep = checkpoint.get("save_top_k", 1)
    if checkpoint.get("monitor") is None and keep not in (-1, 0, 1):
        yield (f"checkpoint.save_top_k={keep} needs checkpoint.monitor (monitor: step, mode: max keeps the "
               "most recent ones)")
    every = checkpoint.get("every_n_train_steps")
    if every is not None and every < 0:
        yield f"checkpoint.every_n_train_steps must be >= 0, got {every}"


def _strategy_problems(cfg: DictConfig) -> Iterator[str]:
    target = (cfg.get("strategy") or {}).get("_target_") if OmegaConf.is_dict(cfg.get("strategy")) else None
    precision = str(cfg.trainer.get("precision")) if "trainer" in cfg else None
    if target and target.endswith("FSDP2Strategy") and precision in ("16-mixed", "16"):
        yield (f"trainer.precision={precision} is not supported by strategy ({target}); use bf16-mixed, "
               "bf16-true or 32-true")
    if not target or "deepspeed" not in target.lower():
        return
    if importlib.util.find_spec("deepspeed") is None:
        yield f"strategy ({target}) needs the deepspeed package: DS_BUILD_OPS=0 pip install 'deepspeed>=0.19,<0.20'"
    if "trainer" in cfg and _uses_cpu(cfg.trainer):
        yield (f"strategy ({target}) runs on CUDA GPUs only, but trainer.accelerator="
               f"{cfg.trainer.get('accelerator', 'auto')} here means the CPU; use strategy=fsdp or ddp on CPUs")


def _hardware_problems(trainer_cfg: DictConfig) -> Iterator[str]:
    """GPUs asked for that this machine lacks (Lightning would say so only once the model is built)."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator not in ("gpu", "cuda"):
        return
    if accelerator == "gpu" and torch.backends.mps.is_available():
        return
    available, devices = torch.cuda.device_count(), trainer_cfg.get("devices", "auto")
    if not available:
        yield (f"trainer.accelerator={accelerator}, but this machine has no CUDA GPU; use trainer.accelerator=cpu "
               "(or auto)")
    elif isinstance(devices, int) and devices > available:
        yield f"trainer.devices={devices}, but this machine has {available} CUDA GPU(s)"


def check_experiment(cfg: DictConfig, choices: Mapping[str, Any]) -> None:
    """Refuses an experiment run with other presets than those it declares it is tuned for (its ``tuned_for``,
    e.g. the demo's ``{model: tiny, data: shapes}``), compared with Hydra's runtime choices; the message names
    the experiment to use instead: the one named like the chosen model preset, else ``experiment=none``."""
    tuned_for = cfg.get("tuned_for") or {}
    others = {group: choices.get(group) for group, preset in tuned_for.items() if choices.get(group) != preset}
    if not others:
        return
    matching = [name for name in others.values() if name and (CONF_DIR / "experiment" / f"{name}.yaml").is_file()]
    use = f"experiment={matching[0]} (or experiment=none)" if matching else "experiment=none (or one of conf/experiment)"
    tuned = ", ".join(f"{group}={preset}" for group, preset in tuned_for.items())
    chosen = " ".join(f"{group}={name}" for group, name in others.items())
    raise ConfigError(f"experiment={choices.get('experiment')} is tuned for {tuned}; with {chosen} use {use}")


def _unset(resolve: Callable[[], Any]) -> tuple[str, str] | None:
    """``(missing key, message)`` when ``resolve`` meets a ``???`` value, directly or through an interpolation."""
    try:
        resolve()
    except InterpolationToMissingValueError as error:
        found = re.search(r"Missing mandatory value: (\S+)", str(error.msg))
        key = found.group(1) if found else "a value"
        return key, f"{key} is not set ({error.full_key} needs it): add {key}=... to the command line"
    except MissingMandatoryValue as error:
        return str(error.full_key), f"{error.full_key} is not set: add {error.full_key}=... to the command line"
    return None


def _resolve_all(node: Any) -> None:
    """Resolves ``node`` for its interpolations to ``???``; other resolution errors are not this check's (e.g.
    ``${hydra:...}`` where a config was composed outside a Hydra app)."""
    try:
        OmegaConf.to_container(node, resolve=True)
    except InterpolationToMissingValueError:
        raise
    except InterpolationResolutionError:
        pass


def _unset_data_problems(data: Any, stages: list[StageConfig]) -> Iterator[str]:
    """``???`` data values the selected stages read, directly or through an interpolation, and interpolations to
    one anywhere under ``data`` (the run saves its config resolved); one message per missing key. A selected
    stage's source left null by ``under_data_root`` (data=llava-1.5 without ``data.root``) names ``data.root``."""
    if not OmegaConf.is_dict(data):
        return
    sets = data.get("sets") or {}
    names = list(dict.fromkeys(stage.dataset for stage in stages if stage.dataset in sets))
    checks = [lambda: data.get("image_folder")]
    checks += [lambda name=name: OmegaConf.to_container(sets[name], resolve=True, throw_on_missing=True)
               for name in names]
    checks.append(lambda: _resolve_all(data))
    reported = set()
    for check in checks:
        found = _unset(check)
        if found is not None and found[0] not in reported:
            reported.add(found[0])
            yield found[1]
    if reported:
        return
    root_unset = "root" in data.keys() and OmegaConf.is_missing(data, "root")  # `in data` is false for ???
    for name in names:
        train = sets[name].get("train")
        entries = train if OmegaConf.is_list(train) else [train]
        if any(entry is None or (OmegaConf.is_dict(entry) and entry.get("path") is None) for entry in entries):
            yield (f"data.sets.{name}.train needs data.root, which is not set: add data.root=... (or your own "
                   f"data.sets.{name}.train=... data.image_folder=...)" if root_unset
                   else f"data.sets.{name}.train is null: add data.sets.{name}.train=...")


def validate_config(cfg: DictConfig, stages: list[StageConfig]) -> FaultConfig:
    """Raises ``ConfigError`` listing every problem found; returns the typed ``faults`` section."""
    problems: list[str] = []
    world_size = known_world_size(cfg.trainer) if "trainer" in cfg else None
    for stage in stages:
        problems += _batch_problems(stage, world_size)
    problems += _vision_problems(cfg)
    problems += _unset_data_problems(cfg.get("data"), stages)
    aspect = (cfg.get("data") or {}).get("image_aspect")
    if aspect is not None and aspect not in IMAGE_ASPECTS:
        problems.append(f"data.image_aspect={aspect} must be null (each stage's own) or one of {list(IMAGE_ASPECTS)}")
    problems += _checkpoint_problems(cfg)
    problems += _strategy_problems(cfg)
    problems += _hardware_problems(cfg.trainer) if "trainer" in cfg else []
    faults = None
    try:
        faults = FaultConfig.from_cfg(cfg)
    except (ValueError, TypeError) as error:
        problems.append(str(error))
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  - {problem}" for problem in problems))
    assert faults is not None
    return faults
