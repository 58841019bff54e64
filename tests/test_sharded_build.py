"""The sharded build (``strategy=fsdp``): pretrained backbones built empty, each process reading only its shards of
their weights after sharding, ends with exactly the weights of a whole build that is then sharded, and trains
with the same per-step losses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import CLIPConfig, CLIPModel, CLIPImageProcessor, LlamaConfig, LlamaForCausalLM

from llava_pl.distributed.partition_on_load import partition_on_load
from llava_pl.lora import apply_lora
from llava_pl.model.build import build_model, materialize
from llava_pl.model.pretrained_weights import deferred_weights
from tests.conftest import free_port
from tests.test_scaling_equivalence import COMMON, assert_same_losses, finish, start_two_processes, step_losses

LLAMA_BLOCK = "transformers.models.llama.modeling_llama.LlamaDecoderLayer"
CLIP_BLOCK = "transformers.models.clip.modeling_clip.CLIPEncoderLayer"


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, data_dir: Path) -> dict[str, Path]:
    """A whole CLIP checkpoint (the tower reads its vision half) and a Llama with tied embeddings whose row
    count (the vocabulary) does not split evenly over two processes."""
    from llava_pl.model.llm import load_tokenizer

    root = tmp_path_factory.mktemp("pretrained")
    tokenizer = load_tokenizer(str(data_dir / "tokenizer"))
    torch.manual_seed(0)
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "image_size": 32, "patch_size": 8}
    CLIPModel(CLIPConfig(vision_config=tower, text_config={**tower, "num_hidden_layers": 1})).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer) | 1, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, tie_word_embeddings=True)).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    return {"clip": root / "clip", "llm": root / "llm"}


def pretrained_overrides(backbones: dict[str, Path]) -> list[str]:
    return ["model/vision=pretrained", f"model.vision.name_or_path={backbones['clip']}", f"+model.vision.block_class={CLIP_BLOCK}",
            "model/llm=pretrained", f"model.llm.name_or_path={backbones['llm']}", "model.llm.tokenizer.pad_token='<pad>'",
            f"model.llm.block_class={LLAMA_BLOCK}"]


def test_deferred_build_is_empty_where_pretrained_and_fills_to_the_whole_build(compose_config, backbones) -> None:
    cfg = compose_config(*pretrained_overrides(backbones))
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    torch.manual_seed(3)
    whole = build_model(cfg.model, tokenizer)
    drawn = torch.get_rng_state()
    torch.manual_seed(3)
    with deferred_weights() as weights:
        model = build_model(cfg.model, tokenizer)
    assert all(tensor.is_meta for part in (model.vision, model.llm) for tensor in part.state_dict().values())
    # the projector (random) drew the same numbers: the pretrained parts drew none in either build
    assert all(not tensor.is_meta for tensor in model.projector.state_dict().values())
    assert torch.equal(torch.get_rng_state(), drawn)
    for name, tensor in model.projector.state_dict().items():
        assert torch.equal(tensor, whole.projector.state_dict()[name]), name
    assert len(weights) == len(whole.vision.state_dict()) + len(whole.llm.state_dict()) - 1  # the tied head
    materialize(model)
    weights.fill()
    assert model.llm.lm_head.weight is model.llm.get_input_embeddings().weight
    expected = whole.state_dict()
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name
    for name, buffer in model.named_buffers():  # non-persistent ones too (rotary frequencies)
        torch.testing.assert_close(buffer, dict(whole.named_buffers())[name], msg=name)


def test_lora_adapters_of_an_empty_model_start_as_peft_starts_them(compose_config, backbones) -> None:
    cfg = compose_config(*pretrained_overrides(backbones))
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    whole = build_model(cfg.model, tokenizer)
    with deferred_weights() as weights:
        model = build_model(cfg.model, tokenizer)
    apply_lora(model, {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]})
    materialize(model)
    weights.fill()
    attention = model.llm.base_model.model.model.layers[0].self_attn.q_proj
    assert not attention.lora_B["default"].weight.any() and attention.lora_A["default"].weight.any()
    assert torch.equal(attention.base_layer.weight, whole.llm.model.layers[0].self_attn.q_proj.weight)


def test_a_checkpoint_in_another_dtype_is_cast_to_the_built_one(compose_config, backbones, tmp_path) -> None:
    """A bfloat16 checkpoint builds bfloat16 parameters (``dtype: auto``) and float32 ones when asked."""
    folder = tmp_path / "llm16"
    LlamaForCausalLM.from_pretrained(backbones["llm"], dtype=torch.bfloat16).save_pretrained(folder)
    for dtype in ("auto", "float32"):
        cfg = compose_config(*pretrained_overrides({**backbones, "llm": folder}), f"model.llm.model.dtype={dtype}",
                             f"model.llm.tokenizer.name_or_path={backbones['llm']}")
        tokenizer = instantiate(cfg.model.llm.tokenizer)
        whole = build_model(cfg.model, tokenizer)
        with deferred_weights() as weights:
            model = build_model(cfg.model, tokenizer)
        materialize(model)
        weights.fill()
        assert model.llm.dtype == whole.llm.dtype == (torch.bfloat16 if dtype == "auto" else torch.float32)
        for name, tensor in model.llm.state_dict().items():
            assert torch.equal(tensor, whole.llm.state_dict()[name]), (dtype, name)


def test_a_bin_checkpoint_is_read_tensor_by_tensor_too(compose_config, backbones, tmp_path) -> None:
    """PyTorch ``.bin`` files (Vicuna's, say) are memory-mapped and read per tensor as safetensors are."""
    folder = tmp_path / "llm_bin"
    llama = LlamaForCausalLM.from_pretrained(backbones["llm"])
    llama.config.save_pretrained(folder)
    torch.save(llama.state_dict(), folder / "pytorch_model.bin")
    cfg = compose_config(*pretrained_overrides({**backbones, "llm": folder}),
                         f"model.llm.tokenizer.name_or_path={backbones['llm']}")
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    whole = build_model(cfg.model, tokenizer)
    with deferred_weights() as weights:
        model = build_model(cfg.model, tokenizer)
    assert any(slot.file.name == "pytorch_model.bin" for slot in weights.slots)
    materialize(model)
    weights.fill()
    for name, tensor in whole.llm.state_dict().items():
        assert torch.equal(model.llm.state_dict()[name], tensor), name


def test_a_part_that_cannot_be_read_per_shard_is_loaded_whole(compose_config, saved_llava) -> None:
    cfg = compose_config("model=llava_hf", f"model.name_or_path={saved_llava}")
    with deferred_weights() as weights:
        model = build_model(cfg.model, instantiate(cfg.model.llm.tokenizer))
    assert len(weights) == 0 and not any(tensor.is_meta for tensor in model.state_dict().values())


@pytest.mark.parametrize("reads_parameters", [True, False])
def test_partition_on_load_fills_and_hands_over_one_module_at_a_time(compose_config, backbones,
                                                                     reads_parameters) -> None:
    """ZeRO-3's build, with a stand-in for DeepSpeed's partitioning that frees each module's parameters: every
    module arrives whole, with the whole build's weights (rank 0) or at least its buffers (other ranks, whose
    parameters DeepSpeed overwrites with rank 0's); LoRA adapters start as peft starts them."""
    cfg = compose_config(*pretrained_overrides(backbones))
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    torch.manual_seed(3)
    whole = build_model(cfg.model, tokenizer)
    torch.manual_seed(3)
    with deferred_weights() as weights:
        model = build_model(cfg.model, tokenizer)
    apply_lora(model, {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    expected = {name: dict([*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)])
                for name, module in whole.named_modules()}
    names = {id(module): name.replace("base_model.model.", "").replace(".base_layer", "")
             for name, module in model.named_modules()}
    handed, lora, unread = [], [], []

    def partition(module: torch.nn.Module) -> None:
        handed.append(names[id(module)])
        tensors = dict([*module.named_parameters(), *module.named_buffers()])
        assert not any(tensor.is_meta for tensor in tensors.values()), names[id(module)]
        for name, tensor in tensors.items():
            if "lora_" in name:
                lora.append((name, tensor.clone()))
            elif tensor.numel():
                own = expected[names[id(module)]][name.removeprefix("base_layer.")]  # a LoRA layer's wrapped one
                if reads_parameters or name in dict(module.named_buffers()):
                    assert torch.equal(tensor, own), (names[id(module)], name)
                elif tensor.dim() > 1 and not names[id(module)].startswith("projector"):
                    unread.append(not torch.equal(tensor, own))  # initialised; DeepSpeed broadcasts rank 0's
        for parameter in module.parameters():
            parameter.data = torch.empty(0)  # partitioned: this process keeps (here) nothing of it
            parameter.ds_id = id(parameter)  # ... and DeepSpeed marks it converted

    # cpu:0 is not where the random parts were built (cpu): they move and are handed over too, as to a GPU
    partition_on_load(model, weights, torch.device("cpu", 0), partition, reads_parameters)
    assert ("llm.model.embed_tokens" in handed) != ("llm.lm_head" in handed)  # tied: allocated and handed once
    assert model.llm.lm_head.weight is model.llm.get_input_embeddings().weight
    assert "projector.0" in handed and all(tensor.numel() == 0 for tensor in model.parameters())
    assert {name.split(".")[0] for name, _ in lora} == {"lora_A", "lora_B"}
    assert all((tensor == 0).all() == name.startswith("lora_B") for name, tensor in lora)
    assert reads_parameters or (unread and all(unread))


def _shard_and_fill(rank: int, port: int, model_cfg: dict, tokenizer_path: str, out: str) -> None:
    """One of two gloo processes: the sharded build through ``FSDP2Strategy``, its weights gathered back."""
    from torch.distributed.device_mesh import init_device_mesh

    from llava_pl.distributed.fsdp import FSDP2Strategy
    from llava_pl.model.llm import load_tokenizer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        tokenizer = load_tokenizer(tokenizer_path, pad_token="<pad>")
        torch.manual_seed(3)
        with deferred_weights() as weights:
            model = build_model(model_cfg, tokenizer)
        strategy = FSDP2Strategy()
        strategy._device_mesh = init_device_mesh("cpu", (2, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
        strategy.parallel_devices = [torch.device("cpu")] * 2
        strategy.shard(model, model.block_classes())
        strategy.fill_pretrained(model, weights)
        tied = model.llm.lm_head.weight is model.llm.get_input_embeddings().weight
        local = {name: tensor.to_local().numel() for name, tensor in model.named_parameters()}
        full = {name: tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
                for name, tensor in model.state_dict().items()}
        if rank == 0:
            torch.save({"tied": tied, "local": local, "state": full}, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_fill_their_shards_with_the_whole_builds_weights(compose_config, backbones, tmp_path) -> None:
    cfg = compose_config(*pretrained_overrides(backbones))
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    out = tmp_path / "state.pt"
    mp.spawn(_shard_and_fill, args=(free_port(), model_cfg, str(backbones["llm"]), str(out)), nprocs=2)
    result = torch.load(out, weights_only=False)
    torch.manual_seed(3)
    whole = build_model(cfg.model, instantiate(cfg.model.llm.tokenizer))
    assert result["tied"]
    embedding = "llm.model.embed_tokens.weight"
    assert result["local"][embedding] == (whole.llm.config.vocab_size + 1) // 2 * 32  # rank 0: the larger half
    assert set(result["state"]) == set(whole.state_dict())
    for name, tensor in whole.state_dict().items():
        assert torch.equal(result["state"][name], tensor), name


@pytest.mark.slow  # two 2-process trainings at once: 25 s on 2 idle cores, minutes on busy ones
def test_sharded_build_trains_with_the_losses_of_the_whole_build(compose_config, data_dir, backbones,
                                                                tmp_path) -> None:
    """``train.py`` on two gloo processes under ``strategy=fsdp``, both stages, built sharded and built whole."""
    common = [override for override in COMMON if ".config.num_hidden_layers" not in override]
    for step in compose_config(*common).data.prepare:  # here, not by both runs at once
        instantiate(step)
    processes = {}
    for sharded in (True, False):
        processes[sharded] = start_two_processes(data_dir, tmp_path / f"sharded_{sharded}", *common,
                                                 *pretrained_overrides(backbones), "strategy=fsdp",
                                                 f"strategy.build_sharded={sharded}")
    for sharded, process in processes.items():
        output = finish(process, f"build_sharded={sharded}")
        assert ("sharded build: each process read its shards of" in output) is sharded
    expected = step_losses(tmp_path / "sharded_False" / "losses.jsonl")
    got = step_losses(tmp_path / "sharded_True" / "losses.jsonl")
    assert set(got) == set(expected) and {stage for stage, _ in got} == {"align", "finetune"}
    assert_same_losses(got, expected)
