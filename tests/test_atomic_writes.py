"""Atomic writes: a checkpoint, projector file or export appears whole or not at all; a full disk is named."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llava_pl.checkpoint.atomic import DiskFullError, atomic_path, remove_partial_files
from llava_pl.checkpoint.projector_file import save_projector
from llava_pl.train import run
from tests.conftest import CONF_DIR

# Runs in a child process: a file-size limit (RLIMIT_FSIZE) makes the kernel refuse writes past 1 MiB, as a
# full disk would, for any writer. An old 0.5 MiB checkpoint is then overwritten with a 4 MiB one, by a plain
# torch.save (the unprotected path) and by AtomicCheckpointIO.
FULL_DISK_SCRIPT = r"""
import json, resource, signal, sys, torch
from llava_pl.checkpoint.lightning_io import AtomicCheckpointIO
folder = sys.argv[1]
old, new = {"w": torch.ones(2**17)}, {"w": torch.zeros(2**20)}
for name in ("plain.ckpt", "atomic.ckpt"):
    torch.save(old, f"{folder}/{name}")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
result = {}
try:
    torch.save(new, f"{folder}/plain.ckpt")
except Exception as error:
    result["plain"] = repr(error)
try:
    AtomicCheckpointIO().save_checkpoint(new, f"{folder}/atomic.ckpt")
except Exception as error:
    result["atomic"] = f"{type(error).__name__}: {error}"
print(json.dumps(result))
"""


def _loads(path: Path) -> dict | None:
    try:
        return torch.load(path, weights_only=True)
    except Exception:
        return None


def test_full_disk_truncates_a_plain_save_but_not_an_atomic_one(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path)], cwd=CONF_DIR.parents[1],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    # unprotected: the old checkpoint is gone and what is left does not load
    assert "plain" in errors and _loads(tmp_path / "plain.ckpt") is None
    # protected: a clear error, the old checkpoint intact, no leftover
    assert errors["atomic"].startswith("DiskFullError")
    assert "out of disk space writing" in errors["atomic"] and "atomic.ckpt" in errors["atomic"]
    assert "is intact" in errors["atomic"] and "checkpoint.save_top_k" in errors["atomic"]
    assert torch.equal(_loads(tmp_path / "atomic.ckpt")["w"], torch.ones(2**17))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["atomic.ckpt", "plain.ckpt"]


def test_atomic_folder_is_replaced_whole_or_not_at_all(tmp_path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "weights").write_text("old")
    with pytest.raises(RuntimeError, match="crash"), atomic_path(out) as partial:
        partial.mkdir()
        (partial / "weights").write_text("new, half written")
        raise RuntimeError("crash")
    assert (out / "weights").read_text() == "old" and not list(tmp_path.glob("*.partial"))
    with atomic_path(out) as partial:
        partial.mkdir()
        (partial / "config").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["config"]  # the old folder's files do not linger
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_projector_write_that_fails_keeps_the_previous_file(tmp_path, monkeypatch) -> None:
    projector = torch.nn.Sequential(torch.nn.Linear(4, 4))
    path = save_projector(projector, tmp_path / "projector.safetensors")
    before = path.read_bytes()

    def disk_full(state: dict, filename: str) -> None:
        Path(filename).write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("llava_pl.checkpoint.projector_file.save_file", disk_full)
    with torch.no_grad():
        projector[0].weight.zero_()
    with pytest.raises(DiskFullError, match=r"out of disk space writing .*projector\.safetensors"):
        save_projector(projector, path)
    assert path.read_bytes() == before and not list(tmp_path.glob("*.partial"))


def test_failed_export_keeps_the_previous_export(compose_config, tmp_path, monkeypatch) -> None:
    from hydra.utils import instantiate
    from transformers import LlavaProcessor

    from llava_pl.export import export
    from llava_pl.model.build import build_model

    cfg = compose_config()
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    model = build_model(cfg.model, tokenizer)
    out = export(model, tokenizer, tmp_path / "exported")
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def crash(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # the weights are written, the processor is not

    monkeypatch.setattr(LlavaProcessor, "save_pretrained", crash)
    with pytest.raises(DiskFullError, match="exported"):
        export(model, tokenizer, out)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exported"]


def test_leftovers_of_killed_writes_are_swept(tmp_path) -> None:
    assert remove_partial_files(tmp_path) == []
    (tmp_path / "last.ckpt.partial").write_bytes(b"killed mid-save")
    (tmp_path / "epoch=0-step=2.ckpt").write_bytes(b"complete")
    assert remove_partial_files(tmp_path) == [tmp_path / "last.ckpt.partial"]
    assert [path.name for path in tmp_path.iterdir()] == ["epoch=0-step=2.ckpt"]


def test_out_of_disk_during_training_names_the_checkpoint_and_keeps_the_last_one(compose_config, tmp_path,
                                                                                 monkeypatch) -> None:
    cfg = compose_config("stage=finetune", "tasks=[]", "stage.finetune.max_steps=4",
                         "stage.finetune.micro_batch_size=8", "stage.finetune.global_batch_size=8",
                         "checkpoint.every_n_train_steps=2")
    real_save = torch.save

    def disk_full_at_step_4(obj, file, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("global_step") == 4:
            file.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_4)
    with pytest.raises(DiskFullError, match=r"out of disk space writing .*step=4\.ckpt.*checkpoint\.save_top_k"):
        run(cfg)
    monkeypatch.undo()
    folder = Path(cfg.run_dir) / "finetune" / "checkpoints"
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 2
    assert not list(folder.glob("*.partial"))
