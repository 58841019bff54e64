"""Checkpoints that travel: projector hand-off, LoRA, per-part learning rates, exact resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from llava_pl.model.build import build_model
from llava_pl.module import LlavaModule
from llava_pl.optim import parameter_groups
from llava_pl.checkpoint.projector_file import load_projector, save_projector
from llava_pl.train import run, selected_stages


class CrashAfter(Callback):
    """Kills the run after a given optimizer step (a stand-in for a crash)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated crash after step {self.step}")


def _model(compose_config, *overrides: str):
    cfg = compose_config(*overrides)
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    return cfg, build_model(cfg.model, tokenizer)


def test_projector_weights_hand_off_and_shape_errors(compose_config, tmp_path) -> None:
    _, source = _model(compose_config)
    with torch.no_grad():
        source.projector[0].weight.fill_(0.125)
    save_projector(source.projector, tmp_path / "align" / "projector.safetensors")
    cfg, target = _model(compose_config, f"model.projector_weights={tmp_path / 'align'}")  # a folder works
    assert torch.equal(target.projector[0].weight, source.projector[0].weight)

    _, narrow = _model(compose_config, "model.llm.model.config.hidden_size=128", "model.llm.model.config.intermediate_size=256")
    with pytest.raises(ValueError, match=r"projector.safetensors: projector weight 0\.\w+ has shape \(256.*the model expects \(128"):
        load_projector(narrow.projector, tmp_path / "align" / "projector.safetensors")


def test_lora_wraps_only_the_llm_and_per_part_learning_rates(compose_config) -> None:
    cfg, model = _model(
        compose_config, "stage=finetune_lora", "stage.finetune_lora.lora.r=4", "stage.finetune_lora.lora.alpha=8",
        "stage.finetune_lora.lora.target_modules=[q_proj,v_proj]",  # names CLIP's attention has too
    )
    (stage,) = selected_stages(cfg)
    LlavaModule(model, stage)
    assert not any("lora" in name for name, _ in model.vision.named_parameters())
    lora_names = [name for name, _ in model.llm.named_parameters() if "lora_" in name]
    assert lora_names and all(("q_proj" in n or "v_proj" in n) for n in lora_names)
    trainable_llm = {name for name, p in model.llm.named_parameters() if p.requires_grad}
    assert trainable_llm == set(lora_names)
    assert all(p.requires_grad for p in model.projector.parameters())
    assert not any(p.requires_grad for p in model.vision.parameters())

    groups = parameter_groups(
        [(part, getattr(model, part), stage.lr_of(part)) for part in ("projector", "llm")], stage.weight_decay
    )
    rates = {group["name"]: group["lr"] for group in groups}
    assert rates["projector"] == 2e-5 and rates["llm"] == 2e-4  # LLaVA's LoRA recipe


def test_unfrozen_vision_tower_gets_its_own_learning_rate(compose_config) -> None:
    cfg, model = _model(compose_config, "stage=finetune", "stage.finetune.trains=[vision,projector,llm]",
                        "stage.finetune.part_lr.vision=2e-6")
    (stage,) = selected_stages(cfg)
    LlavaModule(model, stage)
    assert all(p.requires_grad for p in model.vision.parameters())
    assert stage.lr_of("vision") == 2e-6 and stage.lr_of("llm") == stage.lr


def _logged_losses(run_dir: Path, stage: str) -> dict[int, float]:
    with (run_dir / "logs" / stage / "metrics.csv").open() as file:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")}


@pytest.mark.slow
def test_resume_mid_epoch_logs_the_same_losses(compose_config, tmp_path) -> None:
    common = [
        "stage=finetune", "tasks=[]", "stage.finetune.max_steps=9", "stage.finetune.epochs=2",
        "stage.finetune.micro_batch_size=4", "stage.finetune.global_batch_size=8",  # accumulation 2
        "checkpoint.every_n_train_steps=1",
    ]
    whole = compose_config(*common, f"run_dir={tmp_path / 'whole'}")
    run(whole)
    expected = _logged_losses(tmp_path / "whole", "finetune")
    assert len(expected) == 9

    crashed = compose_config(*common, f"run_dir={tmp_path / 'crashed'}",
                             "+callbacks.crash._target_=tests.test_checkpoints.CrashAfter", "+callbacks.crash.step=4")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(crashed)
    last = tmp_path / "crashed" / "finetune" / "checkpoints" / "last.ckpt"
    saved_step = torch.load(last, weights_only=False)["global_step"]
    assert 0 < saved_step < 6  # mid-epoch: 48 samples / 8 per step = 6 steps per epoch

    resumed = compose_config(*common, f"run_dir={tmp_path / 'resumed'}", f"ckpt_path={last}")
    run(resumed)
    got = _logged_losses(tmp_path / "resumed", "finetune")
    assert sorted(got) == [step for step in sorted(expected) if step >= saved_step]  # logged before the step
    for step, loss in got.items():
        assert loss == pytest.approx(expected[step], rel=1e-5, abs=1e-6), f"step {step}"
