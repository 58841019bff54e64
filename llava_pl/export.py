"""Export to a native Hugging Face Llava folder: ``python -m llava_pl.export ckpt=PATH out=DIR``.

The folder loads with ``LlavaForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained``
and no llava_pl code: config, safetensors weights as ``save_pretrained`` writes them, tokenizer, and a processor
whose chat template and image processor give the model its training inputs (``llava_pl.export_processor``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerBase

from llava_pl.cli import answer_help, main_argv, parse_key_values
from llava_pl.constants import IMAGE_PLACEHOLDER
from llava_pl.data.images import ImageAspect, ImageTransform
from llava_pl.data.templates import ChatTemplate, Template
from llava_pl.errors import ConfigError, reports_user_errors
from llava_pl.export_processor import hf_processor
from llava_pl.checkpoint.atomic import atomic_path
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


def _template(template: Template | None, tokenizer: PreTrainedTokenizerBase) -> Template:
    if template is not None:
        return template
    if not getattr(tokenizer, "chat_template", None):
        raise ExportError("the tokenizer has no chat template: pass the template the model trained with "
                          "(python -m llava_pl.export reads it from the checkpoint)")
    return ChatTemplate()


def to_hf_llava(
    model: LlavaModel,
    tokenizer: PreTrainedTokenizerBase,
    template: Template | None = None,
    image_aspect: ImageAspect = "pad",
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Builds a ``LlavaForConditionalGeneration`` (and its processor) holding exactly this model's weights.

    Args:
        template: the template the model trained with (default: the tokenizer's chat template); the processor's
            chat template renders as it does.
        image_aspect: the aspect the model trained with; the processor's image processor reproduces it.
    """
    _check_backbones(model)
    template = _template(template, tokenizer)
    strategy = feature_select_strategy(model)
    projector = _projector_state(model)
    llm = _merged_llm(model)
    tokenizer = copy.deepcopy(tokenizer)  # it gains <image> and the chat template; the caller's stays as it was
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
    try:
        processor = hf_processor(tokenizer, template, ImageTransform(model.vision.image_processor, image_aspect),
                                 model.vision.tower.config.patch_size, strategy, model.vision.num_prefix_tokens)
    except ValueError as error:
        raise ExportError(str(error)) from error
    # generate() stops where llava_pl's answers stop: at the template's end-of-turn token
    hf_model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(template.stop_token(tokenizer))
    hf_model.generation_config.pad_token_id = tokenizer.pad_token_id
    return hf_model.eval(), processor


def export(
    model: LlavaModel,
    tokenizer: PreTrainedTokenizerBase,
    out: str | Path,
    template: Template | None = None,
    image_aspect: ImageAspect = "pad",
) -> Path:
    """Writes the folder atomically: ``out`` holds either the previous export or the complete new one.
    ``template`` and ``image_aspect`` as for ``to_hf_llava``."""
    hf_model, processor = to_hf_llava(model, tokenizer, template, image_aspect)
    out = Path(out)
    with atomic_path(out) as partial:
        hf_model.save_pretrained(partial)
        processor.save_pretrained(partial)
    return out


USAGE = "python -m llava_pl.export ckpt=PATH out=DIR"


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    from llava_pl.checkpoint.load import load_for_inference

    argv = main_argv(argv)
    answer_help(argv, __doc__ + f"\nusage: {USAGE}")
    args, _ = parse_key_values(argv, {"ckpt": str, "out": str}, USAGE, required=("ckpt", "out"))
    if not Path(args["ckpt"]).exists():
        raise FileNotFoundError(f"ckpt: no checkpoint file or exported folder at {args['ckpt']}")
    loaded = load_for_inference(args["ckpt"])
    try:
        out = export(loaded.model, loaded.tokenizer, args["out"], loaded.template, loaded.image_transform.aspect)
    except ExportError as error:  # the model has a part the Hugging Face class cannot hold: the user's choice
        raise ConfigError(str(error)) from error
    print(f"exported to {out}")


if __name__ == "__main__":
    main()
