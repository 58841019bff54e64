"""Loading a trained model: from a llava_pl checkpoint's weights (``model_from_checkpoint``), or for inference
from a Lightning checkpoint or an exported Hugging Face folder (``load_for_inference``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from transformers import PreTrainedTokenizerBase

from llava_pl.data.images import ImageTransform
from llava_pl.data.templates import Template
from llava_pl.checkpoint.sharded import is_sharded_checkpoint, load_checkpoint
from llava_pl.lora import apply_lora
from llava_pl.model.build import build_empty_model, build_model, materialize
from llava_pl.model.llava import LlavaModel


@dataclass
class LoadedModel:
    model: LlavaModel
    tokenizer: PreTrainedTokenizerBase
    template: Template
    image_transform: ImageTransform


def load_trained_weights(model: LlavaModel, checkpoint: dict[str, Any]) -> None:
    """Loads a llava_pl Lightning checkpoint's weights, wrapping the LLM in LoRA first if the stage did."""
    lora = checkpoint["hyper_parameters"]["stage"].get("lora")
    if lora:
        apply_lora(model, lora)
    model.load_state_dict({key.removeprefix("model."): value for key, value in checkpoint["state_dict"].items()})


def model_from_checkpoint(
    model_cfg: Any, tokenizer: PreTrainedTokenizerBase, checkpoint: dict[str, Any]
) -> LlavaModel:
    """The model of a llava_pl checkpoint, built empty and then given the checkpoint's weights: the pretrained
    weights its config names are never read (a checkpoint holds every weight of the model)."""
    model = materialize(build_empty_model(model_cfg, tokenizer))
    load_trained_weights(model, checkpoint)
    return model


def _is_hf_llava_folder(path: Path) -> bool:
    config = path / "config.json"
    return path.is_dir() and config.is_file() and json.loads(config.read_text()).get("model_type") == "llava"


def load_for_inference(path: str | Path, template: dict[str, Any] | None = None) -> LoadedModel:
    """A Lightning ``.ckpt`` written by llava_pl (it carries its model config) or an exported Llava folder.

    Args:
        template: a template config to use instead of the one the checkpoint recorded (for an exported
            folder the default is the tokenizer's chat template).
    """
    path = Path(path)
    if _is_hf_llava_folder(path):
        model_cfg = {
            "vision": {"_target_": "llava_pl.model.hf_llava.vision_from_llava", "name_or_path": str(path)},
            "projector": {"_target_": "llava_pl.model.hf_llava.projector_from_llava", "_partial_": True,
                          "name_or_path": str(path)},
            "llm": {
                "tokenizer": {"_target_": "llava_pl.model.llm.load_tokenizer", "name_or_path": str(path)},
                "model": {"_target_": "llava_pl.model.hf_llava.llm_from_llava", "name_or_path": str(path)},
            },
        }
        template = template or {"_target_": "llava_pl.data.templates.ChatTemplate"}
        image_aspect = None  # from the folder's image processor, below
        checkpoint = None
    elif path.is_file() or is_sharded_checkpoint(path):  # a sharded folder (FSDP, ZeRO) is consolidated in memory
        checkpoint = load_checkpoint(path)
        recorded = checkpoint.get("hyper_parameters", {})
        if "model" not in recorded:
            raise ValueError(f"{path} is not a llava_pl checkpoint: it records no model config")
        model_cfg = recorded["model"]
        template = template or recorded["stage"]["template"]
        image_aspect = recorded.get("image_aspect", "pad")
    else:
        raise FileNotFoundError(f"no checkpoint file or exported Llava folder at {path}")
    tokenizer = instantiate(model_cfg["llm"]["tokenizer"])
    if checkpoint is None:
        model = build_model({**model_cfg, "projector_weights": None}, tokenizer)
    else:
        model = model_from_checkpoint(model_cfg, tokenizer, checkpoint)
    model.eval()
    processor = model.vision.image_processor
    # a LlavaImageProcessor (llava_pl's exports) pads or not itself (do_pad); a bare CLIP one gets LLaVA-1.5's pad
    # (by class name: without torchvision, naming transformers' LlavaImageProcessor warns and falls back to PIL)
    pads_itself = any(kind.__name__ in ("LlavaImageProcessor", "LlavaImageProcessorPil")
                      for kind in type(processor).__mro__)
    image_aspect = image_aspect or ("crop" if pads_itself else "pad")
    return LoadedModel(model, tokenizer, instantiate(template), ImageTransform(processor, image_aspect))
