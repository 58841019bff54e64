"""Invalid configs fail before anything is built (no run folder, no data, no model), naming the key."""

from __future__ import annotations

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
