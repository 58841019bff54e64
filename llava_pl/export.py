"""Export to a native Hugging Face Llava folder: ``python -m llava_pl.export ckpt=PATH out=DIR``.

The folder loads with ``LlavaForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained``
and no llava_pl code: config, safetensors weights as ``save_pretrained`` writes them, tokenizer, image
processor.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerBase

from llava_pl.constants import IMAGE_PLACEHOLDER
from llava_pl.fault.atomic import atomic_path
from llava_pl.lora import has_lora
from llava_pl.model.llava import LlavaModel
from llava_pl.model.projector import HF_LLAVA_LAYERS, INPUT_CENTER, MLPProjector
from llava_pl.model.vision import VisionEncoder


class ExportError(ValueError):
    """The model has a part that ``LlavaForConditionalGeneration`` cannot hold."""


def _check_backbones(model: LlavaModel) -> None:
    if not isinstance(model.vision, VisionEncoder):
        raise ExportError(
            f"the vision encoder {type(model.vision).__name__} fuses several towers; LlavaForConditionalGeneration "
            "holds one vision tower"
        )
    softcapping = getattr(model.llm.config, "final_logit_softcapping", None)
    if softcapping:
        raise ExportError(
            f"{type(model.llm).__name__} caps its logits (final_logit_softcapping={softcapping}) but "
            "LlavaForConditionalGeneration computes logits without the cap, so the export would answer differently"
        )


def feature_select_strategy(model: LlavaModel) -> str:
    """Hugging Face's name for the encoder's feature selection: ``default`` drops the CLS token."""
    vision = model.vision
    if vision.num_prefix_tokens > 1:
        raise ExportError(
            f"the vision tower puts {vision.num_prefix_tokens} tokens before the patches (CLS and registers); "
            "LlavaForConditionalGeneration can drop only one"
        )
    if vision.num_prefix_tokens == 1 and vision.select_feature == "patch":
        return "default"
    return "full"


def _projector_state(model: LlavaModel) -> dict[str, torch.Tensor]:
    projector = model.projector
    if not (isinstance(projector, MLPProjector) and len(projector) == 3):
        raise ExportError(
            f"the projector {type(projector).__name__} ({projector}) cannot be held by "
            "LlavaForConditionalGeneration, whose projector is linear → GELU → linear; train with "
            "model/projector=mlp2x_gelu to export"
        )
    layers = dict(projector.state_dict())
    center = layers.pop(INPUT_CENTER)
    # linear_1 reads uncentred features: W @ (x - center) + b == W @ x + (b - W @ center)
    weight, bias = layers["0.weight"], layers["0.bias"]
    layers["0.bias"] = (bias.float() - weight.float() @ center.float()).to(bias.dtype)
    state = {}
    for key, tensor in layers.items():
        index, name = key.split(".")
        state[f"model.multi_modal_projector.{HF_LLAVA_LAYERS[index]}.{name}"] = tensor
    return state


def _merged_llm(model: LlavaModel) -> torch.nn.Module:
    llm = model.llm
    if has_lora(llm):  # fold the LoRA adapters into the weights, leaving the trained model as it was
        llm = copy.deepcopy(llm).merge_and_unload()
    return llm


def _image_token_id(tokenizer: PreTrainedTokenizerBase, llm: torch.nn.Module) -> int:
    """The id of ``<image>``, adding it to the tokenizer (and a zero embedding row) when it is missing."""
    if IMAGE_PLACEHOLDER not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if token_id >= llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(token_id + 1, mean_resizing=False)
        with torch.no_grad():
            llm.get_input_embeddings().weight[token_id:].zero_()
    return token_id


def to_hf_llava(
    model: LlavaModel, tokenizer: PreTrainedTokenizerBase
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Builds a ``LlavaForConditionalGeneration`` (and its processor) holding exactly this model's weights."""
    _check_backbones(model)
    strategy = feature_select_strategy(model)
    projector = _projector_state(model)
    llm = _merged_llm(model)
    image_token_id = _image_token_id(tokenizer, llm)
    text_config = llm.config
    config = LlavaConfig(
        vision_config=model.vision.tower.config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=image_token_id,
        image_seq_length=model.tokens_per_image,
        projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=model.vision.select_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    hf_model = LlavaForConditionalGeneration(config)
    state = {f"model.vision_tower.{k}": v for k, v in model.vision.tower.state_dict().items()}
    state |= projector
    base = llm.get_decoder() if hasattr(llm, "get_decoder") else llm.model
    state |= {f"model.language_model.{k}": v for k, v in base.state_dict().items()}
    state["lm_head.weight"] = llm.get_output_embeddings().weight
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    missing = [key for key in missing if key != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ExportError(f"weights do not map onto LlavaForConditionalGeneration: missing {missing}, unexpected {unexpected}")
    processor = LlavaProcessor(
        image_processor=model.vision.image_processor,
        tokenizer=tokenizer,
        patch_size=model.vision.tower.config.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=model.vision.num_prefix_tokens,
        image_token=IMAGE_PLACEHOLDER,
    )
    return hf_model.eval(), processor


def export(model: LlavaModel, tokenizer: PreTrainedTokenizerBase, out: str | Path) -> Path:
    """Writes the folder atomically: ``out`` holds either the previous export or the complete new one."""
    hf_model, processor = to_hf_llava(model, tokenizer)
    out = Path(out)
    with atomic_path(out) as partial:
        hf_model.save_pretrained(partial)
        processor.save_pretrained(partial)
    return out


def main() -> None:
    from llava_pl.checkpoint import load_for_inference

    args = OmegaConf.from_cli()
    if "ckpt" not in args or "out" not in args:
        raise SystemExit("usage: python -m llava_pl.export ckpt=PATH out=DIR")
    loaded = load_for_inference(str(args.ckpt))
    print(f"exported to {export(loaded.model, loaded.tokenizer, args.out)}")


if __name__ == "__main__":
    main()
