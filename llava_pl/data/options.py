"""Which data module a data config builds, and the options of the data config that reach it."""

from __future__ import annotations

from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig

DEFAULT_DATAMODULE = "llava_pl.data.datamodule.LlavaDataModule"
# data.<key> options passed to the data module when the data config has them
OPTIONS = ("on_bad_sample", "length_cache", "length_pool", "shuffle_buffer", "resampled", "packing")


def datamodule_class(data_cfg: DictConfig) -> type:
    """``data.datamodule`` (an import path), else ``LlavaDataModule``."""
    return get_class(data_cfg.get("datamodule") or DEFAULT_DATAMODULE)


def data_options(data_cfg: DictConfig) -> dict[str, Any]:
    return {key: data_cfg[key] for key in OPTIONS if key in data_cfg}
