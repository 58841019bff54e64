"""Any strategy's Lightning checkpoint as one dict: a file, or a sharded folder consolidated in memory.

A checkpoint written under ``strategy=fsdp`` is a folder of ``.distcp`` shards (torch distributed checkpoint)
plus Lightning's ``meta.pt``; under ``deepspeed_zero*`` a folder of per-rank DeepSpeed files. Both become the
dict a single-device ``.ckpt`` holds, which any strategy and any number of devices resume from, and which
``python -m llava_pl.export``, ``predict`` and ``evaluate`` read directly (``consolidate`` writes it to a file).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

DCP_METADATA = ".metadata"  # torch distributed checkpoint's index file
LIGHTNING_META = "meta.pt"  # what Lightning saves beside the shards: loops, callbacks, hyperparameters


def is_distcp_checkpoint(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / DCP_METADATA).is_file()


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "latest").is_file()


def is_sharded_checkpoint(path: str | Path) -> bool:
    return is_distcp_checkpoint(path) or is_deepspeed_checkpoint(path)


def _indexed_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """A distributed checkpoint keys optimizer state by parameter name; ``Optimizer.load_state_dict`` wants the
    parameters' positions across the parameter groups, in order (the order ``configure_optimizers`` made)."""
    groups = state["param_groups"]
    names = [name for group in groups for name in group["params"]]
    if all(isinstance(name, int) for name in names):
        return state
    index = {name: position for position, name in enumerate(names)}
    return {
        "state": {index[name]: value for name, value in state.get("state", {}).items()},
        "param_groups": [{**group, "params": [index[name] for name in group["params"]]} for group in groups],
    }


def _from_distcp(path: Path) -> dict[str, Any]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as scratch:
        dcp_to_torch_save(path, Path(scratch) / "full.pt")
        shards = torch.load(Path(scratch) / "full.pt", map_location="cpu", weights_only=False)
    checkpoint = torch.load(path / LIGHTNING_META, map_location="cpu", weights_only=False)
    checkpoint["state_dict"] = shards.pop("state_dict")
    optimizers = sorted((key for key in shards if key.startswith("optimizer_")), key=lambda key: int(key.split("_")[1]))
    checkpoint["optimizer_states"] = [_indexed_optimizer_state(shards[key]) for key in optimizers]
    return checkpoint


def _from_deepspeed(path: Path) -> dict[str, Any]:
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    with tempfile.TemporaryDirectory() as scratch:
        convert_zero_checkpoint_to_fp32_state_dict(str(path), str(Path(scratch) / "full.ckpt"))
        checkpoint = torch.load(Path(scratch) / "full.ckpt", map_location="cpu", weights_only=False)
    # DeepSpeed's optimizer state is partitioned for its own world size; the weights carry over, the moments
    # do not, so the checkpoint holds no optimizer state (Lightning then starts the optimizer afresh).
    checkpoint.pop("optimizer_states", None)
    return checkpoint


def refuse_deepspeed_resume(path: str | Path) -> None:
    """Raises for a DeepSpeed folder given to another strategy to resume from: its optimizer state is partitioned
    for DeepSpeed's own world size and does not carry over."""
    if is_deepspeed_checkpoint(path):
        raise ValueError(f"{path} is a DeepSpeed checkpoint: it resumes under strategy=deepspeed_* on the same number "
                         "of GPUs only; python -m llava_pl.export reads it, and python -m "
                         "llava_pl.checkpoint.consolidate writes its weights to one file")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as one dict, whichever strategy wrote it (a file or a sharded folder)."""
    path = Path(path)
    if is_distcp_checkpoint(path):
        return _from_distcp(path)
    if is_deepspeed_checkpoint(path):
        return _from_deepspeed(path)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False)
    raise FileNotFoundError(f"no checkpoint at {path}: neither a file nor a sharded checkpoint folder "
                            f"(a {DCP_METADATA} file or DeepSpeed's 'latest')")
