"""Token-accurate sample lengths (text tokens + image tokens), computed once per data file, tokenizer, template
and length limit, and cached on disk; the same pass finds the bad samples."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np

from llava_pl.data.dataset import LlavaDataset, ScanResult
from llava_pl.data.tokenization import TOKENIZATION_VERSION

log = logging.getLogger(__name__)

_SCANNED: LlavaDataset | None = None  # the data set forked scan workers read (never pickled)


def _fingerprint_file(path: Path) -> str:
    target = path / "manifest.json" if path.is_dir() else path
    stat = target.stat()
    return f"{target.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _fingerprint_tokenizer(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else f"{tokenizer.name_or_path}:{len(tokenizer)}"
    return hashlib.sha256((text + str(getattr(tokenizer, "chat_template", ""))).encode()).hexdigest()


def cache_key(dataset: LlavaDataset) -> str:
    """Changes whenever a sample's tokens could: the data file, the tokenizer, the template, the limits."""
    template = f"{type(dataset.template).__qualname__}:{sorted(vars(dataset.template).items())}"
    parts = [_fingerprint_file(Path(dataset.path)), _fingerprint_tokenizer(dataset.tokenizer), template,
             str(dataset.tokens_per_image), str(dataset.max_length), str(dataset.image_folder),
             f"tokenization {TOKENIZATION_VERSION}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _default_signals() -> None:
    for name in ("SIGTERM", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    # SLURM's time-limit signal reaches every process of the job step; the run acts on it, while a worker killed
    # by it (the default action) would leave pool.map waiting forever for its part
    for name in ("SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def _scan_range(bounds: tuple[int, int]) -> ScanResult:
    assert _SCANNED is not None
    return _SCANNED.scan(range(*bounds))


def scan(dataset: LlavaDataset, workers: int = 0, min_parallel: int = 2000) -> ScanResult:
    """Checks and measures every record, in ``workers`` forked processes when there are at least
    ``min_parallel`` records (else in this one)."""
    global _SCANNED
    size = len(dataset)
    if workers <= 1 or size < min_parallel or "fork" not in multiprocessing.get_all_start_methods():
        return dataset.scan()
    step = -(-size // (workers * 8))
    _SCANNED = dataset
    try:
        # A run's SIGTERM handler (graceful stop) is inherited by forked workers, where it would make them
        # ignore the pool's terminate(): restore the default, and close the pool normally rather than by signal.
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_default_signals)
        try:
            parts = pool.map(_scan_range, [(start, min(start + step, size)) for start in range(0, size, step)])
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    finally:
        _SCANNED = None
    return ScanResult(np.concatenate([p.lengths for p in parts]), np.concatenate([p.has_image for p in parts]),
                      [entry for p in parts for entry in p.bad])


def _save(result: ScanResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    with partial.open("wb") as file:
        np.savez(file, lengths=result.lengths, has_image=result.has_image,
                 bad=np.frombuffer(json.dumps(result.bad).encode(), dtype=np.uint8))
    os.replace(partial, path)


def _load(path: Path) -> ScanResult:
    with np.load(path) as saved:
        bad = [tuple(entry) for entry in json.loads(saved["bad"].tobytes().decode())]
        return ScanResult(saved["lengths"], saved["has_image"], bad)


def cached_scan(dataset: LlavaDataset, cache_dir: str | os.PathLike | None, workers: int = 0) -> ScanResult:
    """``scan(dataset)``, read from ``cache_dir`` when an earlier run already did it (``None``: no cache)."""
    path = Path(cache_dir) / f"{cache_key(dataset)}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        cached = _load(path)
        # A bad sample may have been mended since (an image put in place): check those again, and measure
        # everything again if any of them changed.
        if not cached.bad or dataset.scan([entry[0] for entry in cached.bad]).bad == cached.bad:
            return cached
    log.info(f"measuring {len(dataset)} samples of {dataset.path} (token-accurate lengths, bad-sample check)")
    result = scan(dataset, workers)
    if path is not None:
        _save(result, path)
    return result
