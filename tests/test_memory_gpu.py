"""On a CUDA GPU: one bf16-mixed step of a Vicuna-7B-shaped slice, loaded in float16 and put under the precision
policy, allocates what the memory table's DDP row says; ``allow_tf32`` switches float32 matmuls to TF32. Skipped
without CUDA; ``python -m pytest -m gpu tests/test_memory_gpu.py``."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from llava_pl.metrics.memory import count_parameters, memory_rows
from llava_pl.precision import PrecisionPolicy, apply_tf32, precision_policy
from llava_pl.presets.carried import carried_folder

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_a_bf16_mixed_step_allocates_the_ddp_row() -> None:
    config = AutoConfig.from_pretrained(str(carried_folder("lmsys/vicuna-7b-v1.5")))
    config.num_hidden_layers = 2  # Vicuna-7B's blocks, embeddings and head; two blocks keep it ~0.67 B parameters
    with torch.device("cuda"):
        llm = AutoModelForCausalLM.from_config(config, dtype=torch.float16)  # as dtype: auto loads Vicuna
    policy = precision_policy("bf16-mixed", torch.nn.Module)
    assert policy == PrecisionPolicy(torch.float32, torch.bfloat16)
    policy.apply(llm)
    row = memory_rows(count_parameters(llm, (LlamaDecoderLayer,)), gpus=1)[0]
    assert row.strategy == "ddp"
    optimizer = torch.optim.AdamW(llm.parameters(), lr=2e-5)  # foreach on CUDA, as LlavaModule's
    ids = torch.randint(0, config.vocab_size, (1, 32), device="cuda")

    def step() -> tuple[int, int, int]:
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = llm(input_ids=ids, labels=ids).loss
        loss.backward()
        forward_backward_peak = torch.cuda.max_memory_allocated()
        before_step = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        optimizer.step()
        return forward_backward_peak - resident, before_step, torch.cuda.max_memory_allocated() - before_step

    step()  # the first step creates the gradients and Adam's moments
    extra_forward_backward, before_step, step_temporary = step()
    slack = 128 * 2**20  # cuBLAS workspaces (64 MiB on an H200), ids, loss, rotary tables: beside 10 GiB of states
    print(f"resident {before_step:,} step temporary {step_temporary:,} forward/backward extra {extra_forward_backward:,}")
    assert abs(before_step - (row.fp32_weights + row.gradients + row.adam)) < slack
    assert abs(step_temporary - row.step_temporary) < slack
    assert extra_forward_backward >= row.gathered  # autocast's bf16 casts of every weight, kept for the backward
    assert all(p.dtype == torch.float32 for p in llm.parameters())
    assert all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in optimizer.state.values())


def test_allow_tf32_switches_float32_matmuls() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(2048, 2048, device="cuda"), torch.randn(2048, 2048, device="cuda")
    exact = a.double() @ b.double()

    def error() -> float:
        return ((a @ b).double() - exact).abs().max().item() / exact.abs().max().item()

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        apply_tf32(False)
        full = error()
        apply_tf32(True)
        tf32 = error()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert full < 1e-5 < tf32 < 1e-2, (full, tf32)  # float32: ~24 mantissa bits; TF32: ~11
