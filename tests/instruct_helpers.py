"""Shared pieces of the instruction-data tests (`python -m llava_pl.make_instruct`): the config, the prompts and
the context records of LLaVA's caps_boxes excerpt."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from llava_pl.data.instruct.context import ImageContext, read_contexts
from llava_pl.data.instruct.prompts import KindPrompt, load_prompts
from tests.conftest import CONF_DIR, formats_file

EXCERPT = "caps_boxes_coco2014_val_80.sample.jsonl"
KINDS = ["conversation", "detail", "reasoning"]


def compose_make_instruct(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("make_instruct", overrides=list(overrides))


def kind_prompts() -> dict[str, KindPrompt]:
    """The prompt of each kind as conf/make_instruct.yaml composes them."""
    cfg = compose_make_instruct("in=x", "out=y")
    return load_prompts(OmegaConf.to_container(cfg.prompts, resolve=True), KINDS)


def excerpt_contexts() -> list[ImageContext]:
    """The excerpt's records; skips the test where the shared excerpts are absent."""
    return read_contexts(formats_file(EXCERPT))
