"""One training step of llava_pl against transformers' ``LlavaForConditionalGeneration``: same architecture, same
weights, same batches, same precision and optimizer, in one process.

    OMP_NUM_THREADS=1 nice -n 10 python -m bench.train_step  # tiny and small, CPU (~3 min)
    python -m bench.train_step --size 7b-slice                # on a CUDA GPU, bf16, with MFU

from the checkout, with llava_pl installed.

Per size it prints the padding fraction of the realistic length mix (``bench.length_mix``) under random
batching, length grouping and packing, then per configuration the median step time, non-padding tokens/s,
peak memory and the ratio to Hugging Face's step. The configurations, interleaved step by step so that a busy
machine slows all of them alike:

- ``hf``: ``LlavaForConditionalGeneration`` (SDPA, loss from ``labels``) on randomly batched, padded samples;
- ``llava_pl``: ``LlavaModule`` as the trainer runs it (defaults: SDPA, frozen tower without autograd, LM head
  only where the next token is supervised) on the same padded batches;
- ``llava_pl full logits``: the same with ``supervised_logits_only=false`` (the head at every position, as HF);
- ``llava_pl packed``: the same samples as one padding-free row each (``data.packing=true``);
- ``llava_pl grouped``: padded micro-batches of similar lengths (``group_by_length``), other samples of the mix;
- with ``--switches``: packing plus ``compile`` (``compile_blocks``), ``checkpointing`` (``gradient_checkpointing``)
  or ``feature_cache`` (``vision_feature_cache``, timed as in a later epoch: every image seen before).

Time is wall time on a GPU. On a CPU the harness runs one thread and measures the process's CPU time, so that
the other load of a shared machine does not enter the numbers. Peak memory is the device's peak allocation on a
GPU; on a CPU, where the process's peak resident set says nothing about one configuration, it is the bytes of the
tensors autograd keeps for the backward pass (activations; weights excluded), counted once per storage.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.length_mix import draw_lengths, grouped_batches, padding_fraction, random_batches
from bench.step_inputs import PAD_ID, SIZES, build_model, hf_batch, make_samples, reference_tokenizer, stage, to_device
from llava_pl.data.collate import LlavaCollator
from llava_pl.data.packing import PackingCollator
from llava_pl.export import to_hf_llava
from llava_pl.metrics.flops import FlopsCounter
from llava_pl.model.varlen_attention import use_varlen_attention
from llava_pl.module import LlavaModule

WARM_UP_SAMPLES = 2
H100_BF16_PEAK = 989.4e12
SWITCHES = {"compile": "compile_blocks", "checkpointing": "gradient_checkpointing",
            "feature_cache": "vision_feature_cache"}


class SavedActivations:
    """Bytes of the tensors autograd saves for the backward pass, each storage counted once."""

    def __init__(self, parameters: set[int]) -> None:
        self.parameters = parameters  # storages of the weights, which are not activations
        self.storages: dict[int, int] = {}

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in self.parameters:
                self.storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


@dataclass
class Config:
    """One configuration: a step function and the batches it cycles through."""

    name: str
    step: Callable[[dict[str, Any]], torch.Tensor]
    batches: list[dict[str, Any]]
    tokens: list[int]  # non-padding tokens per batch
    squared: list[int]  # sum of squared sample lengths per batch
    images: list[int]
    times: list[float] = field(default_factory=list)
    memory: int = 0
    losses: list[float] = field(default_factory=list)


def adamw(module: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)


def train_step(forward: Callable[[dict[str, Any]], torch.Tensor], optimizer: torch.optim.Optimizer
               ) -> Callable[[dict[str, Any]], torch.Tensor]:
    def step(batch: dict[str, Any]) -> torch.Tensor:
        loss = forward(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def batch_stats(batch: dict[str, Any]) -> tuple[int, int, int]:
    lengths = batch["sample_lengths"] if "sample_lengths" in batch else batch["attention_mask"].sum(dim=1)
    return int(lengths.sum()), int((lengths * lengths).sum()), int(batch["pixel_values"].shape[0])


def run_size(name: str, args: argparse.Namespace, device: torch.device) -> list[str]:
    size = SIZES[name]()
    if size.cuda_only and device.type != "cuda":
        raise SystemExit(f"--size {name} needs a CUDA GPU (it is {size.note})")
    steps = args.steps or size.steps
    model = build_model(size, args.seed)
    image_tokens, vocab = model.tokens_per_image, size.llm["vocab_size"]
    image_size = size.vision["config"]["image_size"]
    trains = ["projector"] if args.stage == "align" else ["projector", "llm"]

    mix = draw_lengths(args.samples, image_tokens, size.max_length, args.seed)
    batch_size = args.micro_batch_size or size.micro_batch_size
    random_order = random_batches(len(mix.lengths), batch_size, args.seed)
    grouped_order = grouped_batches(mix, batch_size, args.seed)
    padding = {"random": padding_fraction(mix.lengths, random_order),
               "grouped": padding_fraction(mix.lengths, grouped_order),
               "packed": padding_fraction(mix.lengths, random_order, packed=True)}

    hf_model, _ = to_hf_llava(model, reference_tokenizer(vocab))
    image_token_id = hf_model.config.image_token_id
    hf_model.train()
    hf_model.model.vision_tower.requires_grad_(False).eval()
    if args.stage == "align":
        hf_model.model.language_model.requires_grad_(False)
        hf_model.lm_head.requires_grad_(False)
    hf_model.to(device=device, dtype=size.dtype)

    def ours(supervised_logits_only: bool = True, packed: bool = False, **switches: bool
             ) -> tuple[LlavaModule, Callable]:
        # each llava_pl configuration trains its own copy, so that all start from the same weights
        copied = copy.deepcopy(model)
        if packed:
            use_varlen_attention(copied.llm)
        module = LlavaModule(copied, stage(trains, supervised_logits_only, **switches))
        module = module.to(device=device, dtype=size.dtype).train()
        return module, train_step(lambda batch: module(batch)["loss"], adamw(module))

    padded_collate, packed_collate = LlavaCollator(PAD_ID), PackingCollator()
    measured_random = random_order[: steps + 1]
    measured_grouped = grouped_order[: steps + 1]
    random_samples = [make_samples(mix, batch, image_tokens, vocab, image_size, args.seed) for batch in measured_random]
    grouped_samples = [make_samples(mix, batch, image_tokens, vocab, image_size, args.seed)
                       for batch in measured_grouped]
    # the warm-up step (optimizer states, allocator, compilation) needs no full batch
    random_samples[0], grouped_samples[0] = random_samples[0][:WARM_UP_SAMPLES], grouped_samples[0][:WARM_UP_SAMPLES]

    def batches(collate, sample_batches) -> list[dict[str, Any]]:
        return [to_device(collate(samples), device, size.dtype) for samples in sample_batches]

    padded = batches(padded_collate, random_samples)
    configs: list[Config] = []
    hf_step = train_step(lambda batch: hf_model(**hf_batch(batch, image_token_id)).loss.float(), adamw(hf_model))
    packed_batches = batches(packed_collate, random_samples)
    runs: list[tuple[str, tuple[LlavaModule, Callable], list[dict[str, Any]]]] = [
        ("llava_pl", ours(), padded),
        ("llava_pl full logits", ours(supervised_logits_only=False), padded),
        ("llava_pl packed", ours(packed=True), packed_batches),
        ("llava_pl grouped", ours(), batches(padded_collate, grouped_samples)),
    ]
    for switch in args.switches:  # each on top of packing, the fastest configuration
        module, step = ours(packed=True, **{SWITCHES[switch]: True})
        if switch == "feature_cache":  # a later epoch: every image of these batches was seen before
            with torch.no_grad():
                for batch in packed_batches:
                    module.model.encode_images(batch["pixel_values"])
        runs.append((f"llava_pl packed + {switch}", (module, step), packed_batches))
    modules = [module for _, (module, _), _ in runs]
    for config_name, step, config_batches in [("hf", hf_step, padded), *((n, s, b) for n, (_, s), b in runs)]:
        stats = [batch_stats(batch) for batch in config_batches]
        configs.append(Config(config_name, step, config_batches, *map(list, zip(*stats))))

    # Wall time on a GPU; on a CPU the process's CPU time (one thread), which other load on the machine
    # does not stretch.
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    weights = {p.untyped_storage().data_ptr() for m in (hf_model, *modules) for p in m.parameters()}
    for index in range(steps + 1):  # the first step of each is a warm-up, not timed
        for config in configs:
            batch = config.batches[index]
            synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            counter = SavedActivations(weights)
            started = clock()
            with counter.counting() if device.type == "cpu" else contextlib.nullcontext():
                loss = config.step(batch)
            synchronize(device)
            elapsed = clock() - started
            if index == 0:
                config.losses.append(float(loss))
                continue
            config.times.append(elapsed)
            used = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else counter.bytes
            config.memory = max(config.memory, used)

    first_losses = {config.name: config.losses[0] for config in configs}
    tolerance = 1e-3 if size.dtype == torch.float32 else 2e-2  # 16-bit: the head's matmuls differ in shape
    if abs(first_losses["hf"] - first_losses["llava_pl"]) > tolerance * max(1.0, abs(first_losses["hf"])):
        raise SystemExit(f"{name}: the first losses differ ({first_losses}): the two models are not the same")

    counter = FlopsCounter.from_model(modules[0].model) if args.mfu else None  # as the stage froze it
    hf_rate = sum(configs[0].tokens[1:]) / sum(configs[0].times)
    lines = [
        f"### {name}: {size.note}",
        "",
        f"micro-batch {batch_size}, max_length {size.max_length}, {image_tokens} image tokens, stage {args.stage}, "
        f"{str(size.dtype).removeprefix('torch.')}, {steps} timed steps after a warm-up step; "
        f"padding fraction over {len(random_order)} micro-batches of the mix: random {padding['random']:.1%}, "
        f"grouped {padding['grouped']:.1%}, packed {padding['packed']:.1%}",
        "",
        "| configuration | padding (timed batches) | step time | tokens/s | vs HF | "
        + ("peak memory" if device.type == "cuda" else "saved activations") + (" | MFU |" if counter else " |"),
        "|---|---|---|---|---|---|" + ("---|" if counter else ""),
    ]
    for config in configs:
        tokens, positions = sum(config.tokens[1:]), sum(batch["input_ids"].numel() for batch in config.batches[1:])
        rate = tokens / sum(config.times)
        row = (f"| {config.name} | {1 - tokens / positions:.1%} | {statistics.mean(config.times) * 1e3:,.0f} ms | "
               f"{rate:,.0f} | {rate / hf_rate:.2f}× | {config.memory / 2**20:,.0f} MiB |")
        if counter:
            flops = sum(counter.flops(t, s, i) for t, s, i in zip(config.tokens[1:], config.squared[1:], config.images[1:]))
            row += f" {flops / sum(config.times) / args.peak_tflops / 1e12:.1%} |"
        lines.append(row)
    lines.append("")
    return lines


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> str:
    import lightning
    import transformers

    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{cpu_name()} ({os.cpu_count()} cores), {torch.get_num_threads()} torch thread"
    return (f"machine: {machine}; python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, lightning {lightning.__version__}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", nargs="+", choices=list(SIZES), default=["tiny", "small"])
    parser.add_argument("--stage", choices=["finetune", "align"], default="finetune")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per configuration (0: the size's default)")
    parser.add_argument("--micro-batch-size", type=int, default=0, help="0: the size's default")
    parser.add_argument("--samples", type=int, default=4000, help="samples drawn for the padding fractions")
    parser.add_argument("--switches", nargs="*", choices=list(SWITCHES), default=[],
                        help="also time packing plus each of these stage switches")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_PEAK / 1e12,
                        help="the device's dense peak for MFU (default: H100 SXM bf16)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.mfu = device.type == "cuda"
    if device.type == "cpu":
        torch.set_num_threads(1)  # with one thread, the process's CPU time is the step's time (see clock)
    print(environment(device))
    print(f"command: python -m bench.train_step {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    for name in args.size:
        started = time.perf_counter()
        print("\n".join(run_size(name, args, device)), flush=True)
        print(f"({time.perf_counter() - started:.0f} s)\n", flush=True)


if __name__ == "__main__":
    main()
