"""The precision policy: under bf16-mixed an LLM saved in float16 and loaded with ``dtype: auto`` trains with float32
weights and Adam moments (DDP/one device and FSDP2), and its update is the float32 reference's; frozen parts are
held in bfloat16 unless they are already 16-bit; DeepSpeed is handed bf16 and keeps its own float32 masters; TF32
is applied at startup."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch.distributed.tensor import DTensor

from llava_pl.distributed.deepspeed import LlavaDeepSpeedStrategy, deepspeed_config
from llava_pl.distributed.fsdp import FSDP2Strategy
from llava_pl.lora import apply_lora
from llava_pl.model.build import build_model
from llava_pl.model.llm import causal_lm_from_config, load_tokenizer
from llava_pl.module import set_trainable
from llava_pl.precision import PrecisionPolicy, apply_tf32, precision_policy
from llava_pl.train import fit_stage, run, selected_stages
from tests.conftest import CONF_DIR, small_overrides
from tests.test_scaling_equivalence import in_process_group  # noqa: F401  (a fixture)
from tests.tiny_llava import tiny_llava

LR = 1e-6  # far below a float16 weight's spacing (1.5e-5 at 0.02): an update that float16 weights lose


class RecordParameters(L.Callback):
    """Saves, when training ends, every parameter's dtype and full value and the dtypes of its Adam moments."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = trainer.optimizers[0].state
        record = {}
        for name, parameter in pl_module.model.named_parameters():
            full = parameter.full_tensor() if isinstance(parameter, DTensor) else parameter
            moments = {key: value.dtype for key, value in state.get(parameter, {}).items() if key.startswith("exp_avg")}
            record[name] = {"dtype": parameter.dtype, "value": full.detach().float().clone(), "moments": moments}
        torch.save(record, self.path)


@pytest.fixture(scope="module")
def float16_llm(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama saved as a float16 checkpoint (config and weights), with the demo tokenizer: Vicuna's case."""
    folder = tmp_path_factory.mktemp("float16_llm")
    tokenizer = load_tokenizer(str(data_dir / "tokenizer"))
    torch.manual_seed(0)
    llm = causal_lm_from_config("llama", {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                          "num_attention_heads": 4, "num_key_value_heads": 4,
                                          "max_position_embeddings": 256, "tie_word_embeddings": True}, tokenizer)
    llm.config.dtype = torch.float16
    llm.half().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"
    return folder


def finetune_one_step(data_dir: Path, llm: Path, run_dir: Path, *overrides: str,
                      all_float32: bool = False) -> tuple[dict, dict]:
    """One finetune step at ``LR`` through ``fit_stage`` with the LLM loaded by the preset loader (``dtype: auto``),
    or that same model cast wholly to float32 (``all_float32``); returns the weights before (float32 copies) and
    what ``RecordParameters`` saved after."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[
            *small_overrides(data_dir, run_dir), "experiment=none", "stage=finetune", "model/llm=pretrained",
            f"model.llm.name_or_path={llm}",
            "model.llm.block_class=transformers.models.llama.modeling_llama.LlamaDecoderLayer",
            "tasks=[]", "logger=none", "monitor=none", "report=none", "trainer.accelerator=cpu",
            "trainer.devices=1", f"stage.finetune.lr={LR}", "stage.finetune.warmup_ratio=0",
            "stage.finetune.max_steps=1", "stage.finetune.micro_batch_size=2", "stage.finetune.global_batch_size=2",
            "stage.finetune.max_length=96", "+callbacks.record._target_=tests.test_precision.RecordParameters",
            f"+callbacks.record.path={run_dir / 'after.pt'}", *overrides])
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    L.seed_everything(0)
    model = build_model(cfg.model, tokenizer)
    model = model.float() if all_float32 else model
    before = {name: parameter.detach().float().clone() for name, parameter in model.named_parameters()}
    fit_stage(cfg, selected_stages(cfg)[0], model, tokenizer, run_dir)
    return before, torch.load(run_dir / "after.pt")


@pytest.fixture(scope="module")
def float32_reference(data_dir: Path, float16_llm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same model cast wholly to float32, one step under 32-true: the update float16 weights should get."""
    before, after = finetune_one_step(data_dir, float16_llm, tmp_path_factory.mktemp("fp32"),
                                      "trainer.precision=32-true", all_float32=True)
    return {name: after[name]["value"] - before[name] for name in before}


def mismatch_share(update: torch.Tensor, reference: torch.Tensor, weight: torch.Tensor) -> float:
    """The share of elements whose update differs from the reference's by more than the float32 rounding of the
    weight before and after (2 ulp) plus 1% of LR.

    Adam's first step moves each weight by lr * g / (|g| + eps), ~ +-lr whatever the gradient's size, so bf16
    autocast's ~0.4% relative error in g changes the update only where it flips the sign of a gradient near zero
    (or near eps): a small share of elements, not a shift of all of them.
    """
    slack = 2 * weight.abs() * torch.finfo(torch.float32).eps + 0.01 * LR
    return ((update - reference).abs() > slack).float().mean().item()


def check_float32_training(before: dict, after: dict, reference: dict) -> None:
    for name, record in after.items():
        if name.startswith(("llm.", "projector.")):  # what finetune trains: float32 weights and moments
            assert record["dtype"] == torch.float32, name
            assert record["moments"] == {"exp_avg": torch.float32, "exp_avg_sq": torch.float32}, name
        else:  # the frozen tower, built in float32: held in bfloat16 under bf16-mixed, no optimizer state
            assert name.startswith("vision.") and record["dtype"] == torch.bfloat16 and not record["moments"], name
    llm = [name for name in after if name.startswith("llm.")]
    update = torch.cat([(after[name]["value"] - before[name]).flatten() for name in llm])
    expected = torch.cat([reference[name].flatten() for name in llm])
    weight = torch.cat([before[name].flatten() for name in llm])
    moved = expected != 0
    assert moved.float().mean() > 0.5 and expected[moved].abs().median() == pytest.approx(LR, rel=0.05)
    assert mismatch_share(update, expected, weight) < 0.02
    # the tolerance tells the bug apart: float16 weights keep almost none of the same update
    float16_update = (weight.half() + expected).half().float() - weight.half().float()
    assert mismatch_share(float16_update, expected, weight) > 0.5


def test_float16_checkpoint_trains_in_float32_under_bf16_mixed(data_dir, float16_llm, float32_reference,
                                                               tmp_path) -> None:
    before, after = finetune_one_step(data_dir, float16_llm, tmp_path, "trainer.precision=bf16-mixed")
    check_float32_training(before, after, float32_reference)


def test_loader_keeps_the_checkpoint_dtype_until_the_policy(float16_llm, data_dir, tmp_path) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*small_overrides(data_dir, tmp_path), "model/llm=pretrained",
                                          f"model.llm.name_or_path={float16_llm}"])
    model = build_model(cfg.model, instantiate(cfg.model.llm.tokenizer))
    assert {parameter.dtype for parameter in model.llm.parameters()} == {torch.float16}  # dtype: auto
    model.vision.requires_grad_(False)
    cast = PrecisionPolicy(torch.float32, torch.bfloat16).apply(model)
    assert {parameter.dtype for parameter in model.projector.parameters()} == {torch.float32}  # nothing to cast
    assert cast == {"float32": sum(p.numel() for p in model.llm.parameters()),  # a tied weight once
                    "bfloat16": sum(p.numel() for p in model.vision.parameters())}
    assert model.llm.lm_head.weight is model.llm.get_input_embeddings().weight  # still tied


@pytest.mark.usefixtures("in_process_group")
def test_fsdp2_keeps_float32_shards_and_moments(data_dir, float16_llm, float32_reference, tmp_path) -> None:
    """FSDP2 on one CPU process (gloo): sharded parameters and Adam moments float32, bf16 only gathered for compute
    (``MixedPrecisionPolicy(param_dtype=bfloat16)``), and the same update as the float32 reference."""
    before, after = finetune_one_step(data_dir, float16_llm, tmp_path, "trainer.precision=bf16-mixed", "strategy=fsdp")
    check_float32_training(before, after, float32_reference)


def test_lora_adapters_train_in_float32_and_16_bit_frozen_weights_stay() -> None:
    model = tiny_llava()
    model.llm.half()
    apply_lora(model, {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    set_trainable(model, ["projector", "llm"])
    PrecisionPolicy(torch.float32, torch.bfloat16).apply(model)
    for name, parameter in model.llm.named_parameters():
        assert parameter.dtype == (torch.float32 if "lora_" in name else torch.float16), name
        assert parameter.requires_grad is ("lora_" in name), name
    assert {p.dtype for p in model.vision.parameters()} == {torch.bfloat16}  # frozen float32: cast down
    assert {p.dtype for p in model.projector.parameters()} == {torch.float32}


@pytest.mark.parametrize(("precision", "strategy", "trainable", "frozen"), [
    ("bf16-mixed", SingleDeviceStrategy, torch.float32, torch.bfloat16),
    ("bf16-mixed", DDPStrategy, torch.float32, torch.bfloat16),
    ("bf16-mixed", FSDP2Strategy, torch.float32, torch.bfloat16),
    ("16-mixed", DDPStrategy, torch.float32, None),  # GradScaler refuses to unscale float16 gradients
    ("32-true", DDPStrategy, torch.float32, None),
    ("bf16-true", DDPStrategy, None, None),  # Lightning converts the whole module
    ("bf16-mixed", LlavaDeepSpeedStrategy, None, None),  # DeepSpeed casts and keeps float32 masters
    ("32-true", LlavaDeepSpeedStrategy, None, None),
])
def test_policy_per_precision_and_strategy(precision, strategy, trainable, frozen) -> None:
    assert precision_policy(precision, strategy) == PrecisionPolicy(trainable, frozen)


def test_deepspeed_is_handed_bf16_so_it_keeps_float32_masters(compose_config) -> None:
    """ZeRO with ``bf16.enabled`` keeps float32 master partitions and Adam moments of the bf16 module (DeepSpeed
    runs on CUDA only under Lightning: what llava_pl hands it is checked here, training in test_deepspeed_gpu.py)."""
    cfg = compose_config("model=llava-1.5-7b", "stage=finetune", "strategy=deepspeed_zero3", "experiment=none",
                         "trainer.devices=8", "trainer.precision=bf16-mixed")
    config = deepspeed_config(selected_stages(cfg)[0], 8, cfg.trainer.precision, cfg.strategy.zero_optimization, 4096)
    assert config["bf16"] == {"enabled": True} and not config["fp16"]["enabled"]
    assert "optimizer" not in config  # the module's torch AdamW, whose state ZeRO keeps in float32 with the masters
    model = tiny_llava()
    model.llm.half()
    assert precision_policy(cfg.trainer.precision, LlavaDeepSpeedStrategy).apply(model) == {}
    assert {p.dtype for p in model.llm.parameters()} == {torch.float16}  # DeepSpeed's own cast decides


class StopBeforeTheModel(Exception):
    pass


@pytest.mark.parametrize("allowed", [True, False])
def test_tf32_is_applied_at_startup(compose_config, monkeypatch, allowed) -> None:
    import llava_pl.train

    def build_model(*args, **kwargs):
        raise StopBeforeTheModel

    monkeypatch.setattr(llava_pl.train, "build_model", build_model)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not allowed
    try:
        cfg = compose_config("stage=align", f"allow_tf32={str(allowed).lower()}")
        with pytest.raises(StopBeforeTheModel):
            run(cfg)
        assert torch.backends.cuda.matmul.allow_tf32 is allowed and torch.backends.cudnn.allow_tf32 is allowed
        assert (torch.get_float32_matmul_precision() == "high") is allowed
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    with pytest.raises(TypeError, match="allow_tf32 must be true or false"):
        apply_tf32("yes")  # type: ignore[arg-type]
