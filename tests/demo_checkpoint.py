"""A random-weight demo checkpoint in the layout a finetune run writes, for the chat and web demo tests."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from llava_pl.chat_engine import ChatModel
from llava_pl.data.options import stage_image_aspect
from llava_pl.model.build import build_model
from llava_pl.module import LlavaModule
from llava_pl.train import selected_stages
from tests.conftest import CONF_DIR, small_overrides


def save_demo_checkpoint(data_dir: Path, folder: Path, seed: int = 0, overrides: Sequence[str] = ()) -> Path:
    """The demo model (tiny CLIP tower, tiny Llama, the demo tokenizer's ChatML template) with random weights,
    saved as a finetune ``last.ckpt`` holds it: the Lightning module's state dict and hyperparameters.
    ``overrides``: more config overrides (another tokenizer or template, say)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*small_overrides(data_dir, folder / "run"), "stage=finetune", *overrides])
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    torch.manual_seed(seed)
    model = build_model(cfg.model, tokenizer)
    stage = selected_stages(cfg)[0]
    module = LlavaModule(model, stage, OmegaConf.to_container(cfg.model, resolve=True),
                         stage_image_aspect(cfg.data, stage))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    return path


def seeded_checkpoints(data_dir: Path, folder: Path, seeds: int) -> Iterator[tuple[Path, ChatModel]]:
    """Random demo checkpoints of seeds 0, 1, ... (each in ``folder/seed<n>``) and a chat model on each, for tests
    that need random weights with some property: random weights often answer everything alike."""
    for seed in range(seeds):
        checkpoint = save_demo_checkpoint(data_dir, folder / f"seed{seed}", seed=seed)
        yield checkpoint, ChatModel.from_path(checkpoint, device="cpu")


def draw_shapes(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    """A small picture the test made itself: a red disc and a blue square on white."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((4, 4, 28, 28), fill="red")
    draw.rectangle((36, 16, 58, 40), fill="blue")
    image.save(path)
    return path


@pytest.fixture(scope="module")
def demo_checkpoint(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_demo_checkpoint(data_dir, tmp_path_factory.mktemp("demo_checkpoint"))
