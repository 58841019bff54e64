"""Which data module a data config builds, and the options of the data config that reach it."""

from __future__ import annotations

from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig

from llava_pl.data.images import IMAGE_ASPECTS, ImageAspect
from llava_pl.stage import StageConfig

DEFAULT_DATAMODULE = "llava_pl.data.datamodule.LlavaDataModule"
# data.<key> options passed to the data module when the data config has them
OPTIONS = ("on_bad_sample", "length_cache", "length_pool", "shuffle_buffer", "resampled", "packing")


def datamodule_class(data_cfg: DictConfig) -> type:
    """``data.datamodule`` (an import path), else ``LlavaDataModule``."""
    return get_class(data_cfg.get("datamodule") or DEFAULT_DATAMODULE)


def data_options(data_cfg: DictConfig) -> dict[str, Any]:
    return {key: data_cfg[key] for key in OPTIONS if key in data_cfg}


def stage_image_aspect(data_cfg: DictConfig, stage: StageConfig) -> ImageAspect:
    """The image aspect a stage trains with: ``data.image_aspect`` when set (it overrides every stage), else the
    stage's own ``image_aspect`` (``conf/stage``: LLaVA-1.5's ``crop`` for align, ``pad`` for finetune)."""
    aspect = data_cfg.get("image_aspect") or stage.image_aspect
    if aspect not in IMAGE_ASPECTS:
        raise ValueError(f"data.image_aspect must be null (each stage's own) or one of {list(IMAGE_ASPECTS)}, "
                         f"got {aspect!r}")
    return aspect
