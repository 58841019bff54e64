"""Host memory of building a model under ``strategy=fsdp``: whole then sharded (``strategy.build_sharded=false``)
against the sharded build (pretrained weights read shard by shard after sharding), on 2 CPU processes (gloo).

    OMP_NUM_THREADS=1 python -m bench.sharded_build                             # float32 checkpoint, ~2 min
    OMP_NUM_THREADS=1 python -m bench.sharded_build --checkpoint-dtype bfloat16  # a 16-bit checkpoint, cast up

from the checkout, with llava_pl installed.

It writes a ~1.06B-parameter Llama-architecture LLM with random weights as a sharded safetensors checkpoint (as on
the hub) to a temporary folder, then per build starts 2 processes that each build the LLaVA model (this LLM in
float32, the demo's tiny vision tower, an ``mlp2x_gelu`` projector), shard it with ``FSDP2Strategy.shard`` and,
for the sharded build, fill it with ``FSDP2Strategy.fill_pretrained``: the calls ``LlavaModule.configure_model``
makes. Per process, as multiples of the model's float32 bytes:

- ``peak/model``: peak resident set (``VmHWM``) over the process's life, the interpreter and libraries included;
- ``build/model``: that peak less the resident set before building (the same ~0.4 GiB for both builds);
- ``private/model``: the peak growth of private memory (``RssAnon``), leaving out checkpoint pages mapped from
  the page cache, which the processes of a node share.

A checksum of the sharded weights shows that both builds end with the same model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llava_pl.config_dir import CONF_DIR as CONF

LLAMA_BLOCK = "transformers.models.llama.modeling_llama.LlamaDecoderLayer"
LLAMA_1B = {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 18,
            "num_attention_heads": 16, "num_key_value_heads": 16, "tie_word_embeddings": False}
SHARD_BYTES = 1 << 30


def write_checkpoint(folder: Path, config: dict, dtype: torch.dtype) -> int:
    """A random-weight Llama saved as ``from_pretrained`` reads it (shards of ~1 GiB and their index), one shard
    in memory at a time, in ``dtype``; returns the model's bytes in float32."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    llama = LlamaConfig(**config, dtype=str(dtype).removeprefix("torch."))
    llama.save_pretrained(folder)
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in AutoModelForCausalLM.from_config(llama).state_dict().items()}
    # random-looking values at the speed of a copy: one random block, tiled and scaled per tensor
    block = torch.randn(1 << 24, generator=torch.Generator().manual_seed(0)) * 0.02
    weight_map, shard, size, total = {}, {}, 0, 0

    def flush() -> None:
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard.clear()

    for index, (name, shape) in enumerate(shapes.items()):
        count = shape.numel()
        tiled = block.repeat(-(-count // block.numel()))[:count].view(shape) * (1 + index / len(shapes))
        shard[name] = (tiled if len(shape) > 1 else torch.ones(shape)).to(dtype)
        size += shard[name].nbytes
        total += count * 4
        if size >= SHARD_BYTES:
            flush()
            size = 0
    if shard:
        flush()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return total


def model_config(folder: Path, dtype: str) -> dict:
    from omegaconf import OmegaConf

    return {
        "vision": OmegaConf.to_container(OmegaConf.load(CONF / "model" / "vision" / "tiny_clip.yaml")),
        "projector": OmegaConf.to_container(OmegaConf.load(CONF / "model" / "projector" / "mlp2x_gelu.yaml")),
        "llm": {"model": {"_target_": "llava_pl.model.llm.causal_lm_from_pretrained", "name_or_path": str(folder),
                          "dtype": dtype},
                "block_class": LLAMA_BLOCK},
    }


def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB. Not ``ru_maxrss``: after
    ``exec`` that keeps the parent's peak, here the checkpoint writer's."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


class AnonymousPeak:
    """The peak of ``RssAnon`` (private memory: not the file pages a memory-mapped checkpoint shares with other
    processes through the page cache), sampled every few milliseconds by a thread, as the kernel keeps no peak."""

    def __init__(self) -> None:
        self.peak = _status_mb("RssAnon")
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _status_mb("RssAnon"))
            time.sleep(0.002)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return max(self.peak, _status_mb("RssAnon"))


def build(rank: int, sharded: bool, port: int, folder: str, out: str, dtype: str) -> None:
    """One of the 2 processes: builds, shards (and fills), reports memory and a checksum of its shards."""
    from torch.distributed.device_mesh import init_device_mesh

    from llava_pl.distributed.fsdp import FSDP2Strategy
    from llava_pl.model.build import build_model
    from llava_pl.model.pretrained_weights import deferred_weights

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    strategy = FSDP2Strategy(build_sharded=sharded)
    strategy._device_mesh = init_device_mesh("cpu", (2, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
    strategy.parallel_devices = [torch.device("cpu")] * 2
    cfg = model_config(Path(folder), dtype)
    before, anonymous_before = _status_mb("VmRSS"), _status_mb("RssAnon")
    anonymous = AnonymousPeak()
    start = time.perf_counter()
    torch.manual_seed(0)
    if sharded:
        with deferred_weights() as weights:
            model = build_model(cfg, None)
        strategy.shard(model, model.block_classes())
        strategy.fill_pretrained(model, weights)
    else:
        model = build_model(cfg, None)
        strategy.shard(model, model.block_classes())
    seconds = time.perf_counter() - start
    peak, anonymous_peak = _status_mb("VmHWM"), anonymous.stop()
    with torch.no_grad():
        checksum = torch.stack([parameter.to_local().double().sum() for parameter in model.llm.parameters()]).sum()
    dist.all_reduce(checksum)
    record = {"rank": rank, "before_mb": before, "peak_mb": peak, "anonymous_mb": anonymous_peak - anonymous_before,
              "seconds": seconds, "checksum": float(checksum)}
    Path(out, f"{'sharded' if sharded else 'whole'}_{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=LLAMA_1B["num_hidden_layers"], help="Llama decoder layers")
    parser.add_argument("--checkpoint-dtype", choices=["float32", "bfloat16"], default="float32",
                        help="the checkpoint's dtype; the model is built in float32 either way (dtype: float32)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sharded_build_") as tmp:
        folder, out = Path(tmp, "llm"), Path(tmp, "out")
        out.mkdir()
        started = time.perf_counter()
        model_bytes = write_checkpoint(folder, {**LLAMA_1B, "num_hidden_layers": args.layers},
                                       getattr(torch, args.checkpoint_dtype))
        model_mb = model_bytes / 2**20
        print(f"LLM: {model_bytes / 4 / 1e9:.2f}B parameters, built in float32: {model_mb:,.0f} MiB; checkpoint "
              f"{args.checkpoint_dtype} in {len(list(folder.glob('*.safetensors')))} safetensors files (written in "
              f"{time.perf_counter() - started:.0f} s); 2 processes, gloo, {torch.get_num_threads()} threads each")
        print(f"{'build':<8} {'rank':>4} {'before MiB':>10} {'peak MiB':>9} {'peak/model':>10} "
              f"{'build MiB':>9} {'build/model':>11} {'private/model':>13} {'time s':>7}")
        checksums = {}
        for sharded in (False, True):
            mp.spawn(build, args=(sharded, _free_port(), str(folder), str(out), "float32"), nprocs=2)
            name = "sharded" if sharded else "whole"
            for rank in range(2):
                record = json.loads((out / f"{name}_{rank}.json").read_text())
                grown = record["peak_mb"] - record["before_mb"]
                print(f"{name:<8} {rank:>4} {record['before_mb']:>10,.0f} {record['peak_mb']:>9,.0f} "
                      f"{record['peak_mb'] / model_mb:>10.2f} {grown:>9,.0f} {grown / model_mb:>11.2f} "
                      f"{record['anonymous_mb'] / model_mb:>13.2f} {record['seconds']:>7.1f}")
                checksums[name] = record["checksum"]
        same = checksums["whole"] == checksums["sharded"]
        print(f"weights checksum: whole {checksums['whole']:.6f}, sharded {checksums['sharded']:.6f} "
              f"({'equal' if same else 'DIFFERENT'}); total {time.perf_counter() - started:.0f} s")
        if not same:
            raise SystemExit("the two builds ended with different weights")


if __name__ == "__main__":
    main()
