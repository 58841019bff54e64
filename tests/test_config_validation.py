"""Invalid configs fail before anything is built (no run folder, no data, no model), naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate

from llava_pl.train import run
from llava_pl.validate import ConfigError


def test_unknown_preset_and_unknown_key_name_the_group_and_key(compose_config) -> None:
    with pytest.raises(MissingConfigException, match=r"Could not find 'model/llava-1\.5-7bb'") as missing:
        compose_config("model=llava-1.5-7bb")
    assert "Available options in 'model'" in str(missing.value) and "llava-1.5-7b" in str(missing.value)
    with pytest.raises(ConfigCompositionException, match=r"stage\.finetune\.lrr"):
        compose_config("stage=finetune", "stage.finetune.lrr=1e-3")


def test_negative_learning_rate(compose_config, nothing_built) -> None:
    cfg = compose_config("stage=finetune", "stage.finetune.lr=-1e-3")
    with pytest.raises(ValueError, match="stage finetune: lr must be positive, got -0.001"):
        run(cfg)
    assert nothing_built(cfg)


def test_image_size_not_a_multiple_of_the_patch_size(compose_config, nothing_built) -> None:
    cfg = compose_config("stage=finetune", "model.vision.config.image_size=100")
    with pytest.raises(ConfigError, match=r"model\.vision\.config\.image_size=100 is not a multiple of "
                                          r"model\.vision\.config\.patch_size=32"):
        run(cfg)
    assert nothing_built(cfg)
    # the protection matters: the tower itself builds and would silently drop the last 4 pixel rows/columns
    assert instantiate(cfg.model.vision).num_image_tokens == 9


def test_unknown_data_image_aspect(compose_config, nothing_built) -> None:
    cfg = compose_config("stage=finetune", "data.image_aspect=square")
    with pytest.raises(ConfigError, match=r"data\.image_aspect=square must be null \(each stage's own\) or one of "
                                          r"\['pad', 'crop', 'resize'\]"):
        run(cfg)
    assert nothing_built(cfg)


def test_global_batch_not_divisible_by_micro_batch_times_processes(compose_config, nothing_built) -> None:
    cfg = compose_config("stage=finetune", "stage.finetune.global_batch_size=12", "stage.finetune.micro_batch_size=8")
    with pytest.raises(ConfigError, match=r"stage\.finetune\.global_batch_size=12 is not divisible by "
                                          r"stage\.finetune\.micro_batch_size=8"):
        run(cfg)
    assert nothing_built(cfg)
    cfg = compose_config("stage=finetune", "stage.finetune.global_batch_size=8", "stage.finetune.micro_batch_size=8",
                         "trainer.devices=2")
    with pytest.raises(ConfigError, match=r"micro_batch_size=8 x 2 processes \(trainer\.devices x "):
        run(cfg)


def test_every_problem_is_listed_at_once(compose_config, nothing_built) -> None:
    cfg = compose_config("stage=[align,finetune]", "stage.align.max_steps=0", "faults.on_nonfinite=ignore",
                         "checkpoint.save_top_k=3", "checkpoint.monitor=null")
    with pytest.raises(ConfigError) as raised:
        run(cfg)
    message = str(raised.value)
    assert "stage.align.max_steps must be positive or -1" in message
    assert "faults.on_nonfinite must be one of ['stop', 'skip_step'], got 'ignore'" in message
    assert "checkpoint.save_top_k=3 needs checkpoint.monitor" in message
    assert nothing_built(cfg)


def test_a_stage_that_would_make_no_optimizer_step_stops_before_training(compose_config) -> None:
    # the small data's captions are fewer than one micro-batch of 64: Lightning would "train" 0 steps and the
    # untrained projector would be handed on as align's
    cfg = compose_config("stage=align", "tasks=[]", "report=none", "stage.align.global_batch_size=256",
                         "stage.align.micro_batch_size=64")
    with pytest.raises(ConfigError, match=r"stage align would make 0 optimizer steps: its data gives (\d+) training "
                                          r"sample\(s\) per epoch, fewer than one micro-batch of "
                                          r"stage\.align\.micro_batch_size=64 \(stage\.align\.global_batch_size=256\)\. "
                                          r"Give the stage more data, or lower stage\.align\.micro_batch_size to at most "
                                          r"\1 ") as raised:
        run(cfg)
    assert 0 < int(re.search(r"gives (\d+) training", str(raised.value))[1]) < 64
    assert not (Path(cfg.run_dir) / "align" / "projector.safetensors").exists()


def test_gpus_the_machine_lacks_are_refused_before_anything_is_built(compose_config, nothing_built) -> None:
    import torch

    count = torch.cuda.device_count()
    if not count and torch.backends.mps.is_available():
        pytest.skip("trainer.accelerator=gpu means the Apple GPU on this machine")
    if count:
        cfg = compose_config("stage=finetune", "trainer.accelerator=gpu", f"trainer.devices={count + 1}")
        expected = rf"trainer\.devices={count + 1}, but this machine has {count} CUDA GPU\(s\)"
    else:
        cfg = compose_config("stage=finetune", "trainer.accelerator=gpu")
        expected = r"trainer\.accelerator=gpu, but this machine has no CUDA GPU; use trainer\.accelerator=cpu"
    with pytest.raises(ConfigError, match=expected):
        run(cfg)
    assert nothing_built(cfg)
