"""Peak FLOP/s per device, the denominator of MFU: a datasheet value (``conf/peak_flops/<gpu>_bf16.yaml``) or
a dense matmul measured on the device at the start of a stage (``peak_flops=measured``, the default)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, ContextManager

import torch

Autocast = Callable[[], ContextManager[Any]]
"""A context-manager factory the matmul runs in: the trainer's precision context (autocast under bf16-mixed)."""


class DatasheetPeak:
    """A vendor's dense (no sparsity) peak, e.g. 989.4 TFLOP/s for an H100 SXM in bf16.

    Args:
        tflops: peak tera-FLOP/s of one device.
        name: what the number is, shown in the run summary.
    """

    def __init__(self, tflops: float, name: str) -> None:
        if tflops <= 0:
            raise ValueError(f"peak_flops.tflops must be positive, got {tflops}")
        self.tflops = tflops
        self.name = name

    def __call__(self, device: torch.device, autocast: Autocast = contextlib.nullcontext) -> float:
        return self.tflops * 1e12

    def __repr__(self) -> str:
        return f"{self.name} ({self.tflops:g} TFLOP/s)"


_measured: dict[tuple[str, int, str], float] = {}


class MeasuredPeak:
    """The FLOP/s of a square matmul on the training device, inside the trainer's precision context (so bf16
    under ``bf16-mixed``), with the threads the training uses. Measured once per process and device.

    A CPU has no datasheet number that fits a PyTorch matmul; on a GPU a measured peak sits below the
    datasheet's, so MFU against it reads higher than the PaLM-style figure a datasheet preset gives.

    Args:
        size: the matmul's side; ``None`` picks 8192 on an accelerator and 512 on a CPU.
        seconds: how long to keep measuring, after one warm-up product.
    """

    def __init__(self, size: int | None = None, seconds: float = 0.2) -> None:
        self.size = size
        self.seconds = seconds
        self.name = "measured matmul"

    def __call__(self, device: torch.device, autocast: Autocast = contextlib.nullcontext) -> float:
        size = self.size or (512 if device.type == "cpu" else 8192)
        with autocast():
            probe = torch.ones(1, 1, device=device) @ torch.ones(1, 1, device=device)
        key = (str(device), size, str(probe.dtype))
        if key not in _measured:
            _measured[key] = self._measure(device, size, autocast)
        return _measured[key]

    def _measure(self, device: torch.device, size: int, autocast: Autocast) -> float:
        generator = torch.Generator(device).manual_seed(0)  # the training's random state stays untouched
        left = torch.randn(size, size, device=device, generator=generator)
        right = torch.randn(size, size, device=device, generator=generator)
        with autocast(), torch.no_grad():
            left @ right  # warm-up: kernel selection, allocation
            synchronize(device)
            start, products = time.perf_counter(), 0
            while True:
                left @ right
                products += 1
                synchronize(device)
                elapsed = time.perf_counter() - start
                if elapsed >= self.seconds:
                    break
        return 2 * size**3 * products / elapsed

    def __repr__(self) -> str:
        return self.name


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (accelerators run asynchronously; a CPU has nothing to wait for)."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)
