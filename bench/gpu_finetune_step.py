"""Finetune steps of a real preset's architecture with random weights, as ``python train.py`` runs them: the
preset's configs (carried in the package, no download), ``LlavaModule`` with the stage's settings (gradient
checkpointing, the precision policy's float32 masters), Lightning's ``Trainer`` under ``bf16-mixed``, AdamW.

    python -m bench.gpu_finetune_step                                  # LLaVA-1.5-7B, finetune, on a CUDA GPU
    python -m bench.gpu_finetune_step --model llava-1.5-13b --micro-batch-size 4
    python -m bench.gpu_finetune_step --model siglip-qwen2.5-0.5b --micro-batch-size 1 --steps 2 --device cpu \
        --precision 32-true                                            # a smoke test of the harness

from the checkout, with llava_pl installed.

Each micro-batch holds samples of LLaVA-1.5's shape: one image (576 tokens for CLIP-L/336) and ``--text-tokens``
text tokens, the last half supervised. One optimizer step per micro-batch. It prints, per step, the wall time
and the non-padding tokens per second, then the device's peak allocation; steps after the first are the
figure (the first builds the optimizer state and warms the allocator).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from llava_pl.config_dir import CONF_DIR
from llava_pl.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from llava_pl.data.collate import LlavaCollator
from llava_pl.data.images import input_size
from llava_pl.model.build import build_empty_model, materialize
from llava_pl.module import LlavaModule
from llava_pl.resolvers import register_resolvers
from llava_pl.stage import StageConfig


class _Batches(L.LightningDataModule):
    """Fixed synthetic micro-batches; ``train_batches_per_epoch`` is what ``LlavaModule`` sizes its schedule by."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        super().__init__()
        self.batches = batches

    def train_batches_per_epoch(self) -> int:
        return len(self.batches)

    def train_samples_per_epoch(self) -> int:
        return sum(len(batch["images_per_sample"]) for batch in self.batches)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None)  # the batches as they are


class _StepTimer(L.Callback):
    def __init__(self, tokens_per_step: int) -> None:
        self.tokens = tokens_per_step
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        elapsed = time.perf_counter() - self._start
        self.times.append(elapsed)
        print(f"step {len(self.times)}: {elapsed:.3f} s, {self.tokens / elapsed:,.0f} tokens/s, "
              f"loss {float(trainer.callback_metrics.get('train/loss', float('nan'))):.3f}", flush=True)


def _config(model: str, stage: str) -> Any:
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=["experiment=none", "report=none",
                                           f"model={model}", f"stage={stage}"])


def _samples(count: int, image_tokens: int, text_tokens: int, vocab: int, image_size: int) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    samples = []
    for index in range(count):
        text = torch.randint(3, vocab - 1, (text_tokens,), generator=generator)
        ids = torch.cat([text[:4], torch.full((image_tokens,), IMAGE_TOKEN_ID), text[4:]])
        labels = ids.clone()
        labels[: len(ids) - text_tokens // 2] = IGNORE_INDEX
        pixels = torch.randn(1, 3, image_size, image_size, generator=generator)
        samples.append({"id": str(index), "input_ids": ids, "labels": labels, "pixel_values": pixels})
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llava-1.5-7b", help="a preset of conf/model")
    parser.add_argument("--stage", default="finetune", help="a stage of conf/stage")
    parser.add_argument("--micro-batch-size", type=int, default=16, help="LLaVA-1.5's per-GPU batch: 16")
    parser.add_argument("--text-tokens", type=int, default=160)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16-mixed")
    args = parser.parse_args(argv)

    cfg = _config(args.model, args.stage)
    stage = StageConfig(**OmegaConf.to_container(cfg.stage[args.stage], resolve=True))
    stage.micro_batch_size = stage.global_batch_size = args.micro_batch_size
    stage.max_steps, stage.warmup_ratio = args.steps, 0.0
    torch.manual_seed(0)
    model = materialize(build_empty_model(cfg.model), args.device)  # the presets' carried configs size every part
    vocab = model.llm.get_input_embeddings().num_embeddings
    image_size = input_size(model.vision.image_processor)[0]
    collate = LlavaCollator(0)
    batches = [collate(_samples(args.micro_batch_size, model.tokens_per_image, args.text_tokens, vocab, image_size))
               for _ in range(args.steps)]
    tokens = int(batches[0]["attention_mask"].sum())
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{args.model} ({parameters / 1e9:.2f} B parameters), stage {args.stage}: gradient_checkpointing="
          f"{stage.gradient_checkpointing}, {args.precision}, micro-batch {args.micro_batch_size} x "
          f"{batches[0]['input_ids'].shape[1]} tokens ({tokens} non-padding), {args.device}", flush=True)

    module = LlavaModule(model, stage)
    timer = _StepTimer(tokens)
    trainer = L.Trainer(accelerator="gpu" if args.device.startswith("cuda") else "cpu", devices=1,
                        precision=args.precision, max_steps=args.steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        gradient_clip_val=stage.gradient_clip_val, callbacks=[timer])
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=_Batches(batches))

    dtypes: dict[str, int] = {}
    for parameter in model.parameters():
        key = f"{'trainable' if parameter.requires_grad else 'frozen'} {str(parameter.dtype).removeprefix('torch.')}"
        dtypes[key] = dtypes.get(key, 0) + parameter.numel()
    moments = {str(value.dtype).removeprefix("torch.") for state in trainer.optimizers[0].state.values()
               for value in state.values() if torch.is_tensor(value) and value.dim() > 0}
    later = sorted(timer.times[1:]) or timer.times
    median = later[len(later) // 2]
    print(f"parameters by dtype: {', '.join(f'{key} {count / 1e9:.3f} B' for key, count in sorted(dtypes.items()))}; "
          f"Adam moments {sorted(moments)}")
    print(f"median step after the first: {median:.3f} s, {tokens / median:,.0f} tokens/s")
    if args.device.startswith("cuda"):
        print(f"peak allocated {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, peak reserved "
              f"{torch.cuda.max_memory_reserved() / 2**30:.1f} GiB on {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
