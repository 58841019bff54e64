"""Quiet runs: `python train.py` prints llava_pl's lines and Lightning's useful ones, not library noise. The noise
llava_pl caused is fixed at its cause, the rest filtered one message at a time (``llava_pl.quiet``)."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from llava_pl.quiet import quiet_libraries
from tests.conftest import small_overrides

REPO = Path(__file__).resolve().parents[1]

# each once seen on every demo run, and where it came from
NOISE = {
    "torchvision_fallback": "requires torchvision (not installed); falling back to",  # transformers, class lookups
    "lightning_tip": "💡 Tip:",  # Lightning's adverts
    "litlogger_advert": "litlogger",
    "litmodels_advert": "For seamless cloud uploads",
    "leafspec_deprecation": "`isinstance(treespec, LeafSpec)` is deprecated",  # torch, from Lightning's _pytree
    "empty_val_loader": "across ranks is zero",  # Lightning, over a stage without a validation set
    "weights_only_default": "`weights_only` was not set",  # Lightning, trainer.save_checkpoint
    "eval_mode_modules": "in eval mode at the start of training",  # Lightning, the frozen parts in eval on purpose
}


@pytest.fixture(scope="module")
def run_output(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Standard output and error of a tiny demo run: align, then a finetune stage without a validation set,
    then the end-of-run evaluation, as a user starts it."""
    run_dir = tmp_path_factory.mktemp("quiet") / "run"
    overrides = [o for o in small_overrides(data_dir, run_dir) if not o.startswith("run_dir=")]
    command = [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}",
               "stage.align.max_steps=2", "stage.align.micro_batch_size=8", "stage.align.global_batch_size=8",
               "stage.finetune.max_steps=2", "stage.finetune.micro_batch_size=8", "stage.finetune.global_batch_size=8",
               "data.sets.finetune.val=null", "eval.end_limit=8"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.parametrize("noise", NOISE.values(), ids=NOISE.keys())
def test_a_run_prints_no_library_noise(run_output: str, noise: str) -> None:
    found = [line for line in run_output.splitlines() if noise in line]
    assert not found, f"noise in the run's output: {found}"


def test_a_run_still_prints_its_own_lines_and_lightnings_useful_ones(run_output: str) -> None:
    for line in ("Seed set to 42", "GPU available:", "`Trainer.fit` stopped: `max_steps=2` reached.",
                 "stage finetune:", "question type"):
        assert line in run_output, line


def test_the_filters_are_narrow() -> None:
    """Another message of the same module, or the same message from another module, still shows."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        quiet_libraries()  # twice: no duplicate filters
        fit_loop = "lightning.pytorch.loops.fit_loop"
        eval_mode = "Found 116 module(s) in eval mode at the start of training. This may lead to ..."
        warnings.warn_explicit(eval_mode, UserWarning, "fit_loop.py", 1, module=fit_loop)
        warnings.warn_explicit("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning,
                               "_pytree.py", 1, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit("The number of training batches (2) is smaller ...", UserWarning, "fit_loop.py", 1,
                               module=fit_loop)
        warnings.warn_explicit("`is_gradient_checkpointing` is deprecated and will be removed in v6. ...",
                               FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit(eval_mode, UserWarning, "mine.py", 1, module="llava_pl.module")
        warnings.warn_explicit("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning,
                               "mine.py", 1, module="llava_pl.module")
        leafspec_filters = [f for f in warnings.filters if f[1] is not None and "LeafSpec" in f[1].pattern]
    assert len(leafspec_filters) == 1
    shown = [(w.filename, str(w.message)) for w in caught]
    assert [filename for filename, _ in shown] == ["fit_loop.py", "mine.py", "mine.py"]
    assert shown[0][1].startswith("The number of training batches")

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]...")
        logger.info("GPU available: False, used: False")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert records == ["GPU available: False, used: False"]
