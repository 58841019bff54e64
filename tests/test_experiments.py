"""Every experiment composes into a whole, valid config; the real recipes are LLaVA-1.5's with none of the demo's
settings; the demo's settings with another model or data are refused in one line; and every ``python train.py``
command of README.md and docs/*.md composes (and passes the checks a run makes before building anything)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from llava_pl.errors import ConfigError
from llava_pl.inspect import main as inspect_main
from llava_pl.train import selected_stages
from llava_pl.validate import check_experiment, validate_config
from tests.conftest import CONF_DIR, skip_unless_installed
from tests.doc_commands import DocCommand, doc_commands

EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
# experiment -> (model preset, stages, the LLM's checkpoint)
REAL = {
    "llava-1.5-7b": ("llava-1.5-7b", ["align", "finetune"], "lmsys/vicuna-7b-v1.5"),
    "llava-1.5-13b": ("llava-1.5-13b", ["align", "finetune"], "lmsys/vicuna-13b-v1.5"),
    "llava-1.5-7b-lora": ("llava-1.5-7b", ["align", "finetune_lora"], "lmsys/vicuna-7b-v1.5"),
    "siglip-qwen2.5-7b": ("siglip-qwen2.5-7b", ["align", "finetune"], "Qwen/Qwen2.5-7B-Instruct"),
}
GROUPS = {str(path.relative_to(CONF_DIR)) for path in CONF_DIR.rglob("*") if path.is_dir()}
STAND_IN = Path(tempfile.gettempdir()) / "llava_pl_doc_placeholder"  # composing reads no file under it
GUARD = ("error: experiment=demo is tuned for model=tiny, data=shapes; with model=llava-1.5-7b data=llava use "
         "experiment=llava-1.5-7b (or experiment=none)")


def compose_run(tmp: Path, *overrides: str) -> tuple[DictConfig, dict[str, Any]]:
    """``train.yaml`` with ``overrides`` as ``train.py`` composes it, and Hydra's runtime choices."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True,
                      overrides=[f"run_dir={tmp}/run", f"paths.data_dir={tmp}/data", *overrides])
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def checked(cfg: DictConfig, choices: dict[str, Any]) -> list[str]:
    """What ``train.py`` checks before building anything (the experiment's presets, the whole config, every
    selected stage); returns the stages' names. This machine's lack of GPUs or DeepSpeed is not checked."""
    check_experiment(cfg, choices)
    if "gguf_file" in cfg.model.llm:  # the LLM comes from a wheel (README's test command installs it)
        skip_unless_installed()
    OmegaConf.to_container(cfg, resolve=True)  # as the run saves it
    stages = selected_stages(cfg)
    machine_free = cfg.copy()
    with open_dict(machine_free):
        machine_free.strategy = "auto"
        machine_free.trainer.accelerator = "auto"
    validate_config(machine_free, stages)
    return [stage.name for stage in stages]


def demo_keys(node: dict, prefix: str = "") -> list[str]:
    """The dotted keys of every value demo.yaml sets (its defaults and declarations aside)."""
    keys = []
    for name, child in node.items():
        if name in ("defaults", "tuned_for"):
            continue
        keys += demo_keys(child, f"{prefix}{name}.") if isinstance(child, dict) else [f"{prefix}{name}"]
    return keys


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_resolves_and_validates(experiment: str, tmp_path: Path) -> None:
    root = [f"data.root={tmp_path}/playground"] if experiment in REAL else []
    cfg, choices = compose_run(tmp_path, f"experiment={experiment}", *root)
    assert choices["experiment"] == experiment
    assert checked(cfg, choices)


@pytest.mark.parametrize("experiment", sorted(REAL))
def test_real_experiment_is_llava_1_5_with_nothing_of_the_demo(experiment: str, tmp_path: Path) -> None:
    model, stages, llm = REAL[experiment]
    cfg, choices = compose_run(tmp_path, f"experiment={experiment}", f"data.root={tmp_path}")
    assert (choices["model"], choices["data"], choices["strategy"]) == (model, "llava-1.5", "auto")
    assert checked(cfg, choices) == stages and cfg.model.llm.name_or_path == llm
    align, finetune = (cfg.stage[name] for name in stages)
    assert (align.lr, align.global_batch_size, align.micro_batch_size, align.trains) == (1e-3, 256, 32, ["projector"])
    assert (finetune.global_batch_size, finetune.micro_batch_size, finetune.epochs) == (128, 16, 1)
    assert align.max_length == finetune.max_length == 2048 and finetune.gradient_checkpointing
    assert list(finetune.betas) == [0.9, 0.999] and finetune.loss_average == "token"
    if experiment.endswith("-lora"):
        assert (finetune.lr, finetune.part_lr.projector) == (2e-4, 2e-5)
        assert (finetune.lora.r, finetune.lora.alpha, finetune.lora.target_modules) == (128, 256, "all-linear")
    else:
        assert finetune.lr == 2e-5 and finetune.lora is None
    assert not cfg.data.packing and not cfg.model.center_projector and "tuned_for" not in cfg
    assert not cfg.get("report") and not cfg.get("evaluation") and not cfg.get("tasks")
    # every value the demo sets is what the stage, model and data presets give without any experiment
    bare, _ = compose_run(tmp_path, "experiment=none", f"model={model}", "data=llava-1.5", f"stage=[{','.join(stages)}]",
                          f"data.root={tmp_path}")
    demo = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "experiment" / "demo.yaml"))
    for key in demo_keys(demo):
        assert OmegaConf.select(cfg, key) == OmegaConf.select(bare, key), key


def test_one_root_in_llava_layout_and_own_files_instead(tmp_path: Path) -> None:
    cfg, _ = compose_run(tmp_path, "experiment=llava-1.5-7b", "data.root=/lp/data")
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert data["sets"]["align"]["train"] == [{"path": "/lp/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
                                               "image_folder": "/lp/data/LLaVA-Pretrain/images",
                                               "name": "blip_laion_cc_sbu_558k"}]
    assert (data["sets"]["finetune"]["train"], data["image_folder"]) == ("/lp/data/llava_v1_5_mix665k.json", "/lp/data")
    # without data.root: own files for the stage that runs; the other stage's set stays harmless
    own = ["data.sets.finetune.train=/mine/chat.json", "data.image_folder=/mine/images"]
    cfg, choices = compose_run(tmp_path, "experiment=llava-1.5-7b", "stage=finetune", *own)
    assert checked(cfg, choices) == ["finetune"]
    assert (cfg.data.sets.finetune.train, cfg.data.image_folder) == ("/mine/chat.json", "/mine/images")
    cfg, choices = compose_run(tmp_path, "experiment=llava-1.5-7b", "data=llava", "stage=align",
                               "data.sets.align.train=/mine/captions.json", "data.image_folder=/mine/images")
    assert checked(cfg, choices) == ["align"] and cfg.stage.align.lr == 1e-3


def test_a_missing_root_is_named_before_anything_is_built(tmp_path: Path) -> None:
    cfg, choices = compose_run(tmp_path, "experiment=llava-1.5-7b")
    with pytest.raises(ConfigError) as error:
        checked(cfg, choices)
    lines = str(error.value).splitlines()
    assert lines[1:] == [f"  - data.sets.{name}.train needs data.root, which is not set: add data.root=... (or your "
                         f"own data.sets.{name}.train=... data.image_folder=...)" for name in ("align", "finetune")]


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=llava-1.5-7b", "data=llava"], GUARD.removeprefix("error: ")),
    (["data=llava"], "experiment=demo is tuned for model=tiny, data=shapes; with data=llava use experiment=none "
                     "(or one of conf/experiment)"),
    (["model=siglip-qwen2.5-0.5b"], "experiment=demo is tuned for model=tiny, data=shapes; with "
                                    "model=siglip-qwen2.5-0.5b use experiment=none (or one of conf/experiment)"),
    (["model=siglip-qwen2.5-7b", "data=wds"], "experiment=demo is tuned for model=tiny, data=shapes; with "
                                              "model=siglip-qwen2.5-7b data=wds use experiment=siglip-qwen2.5-7b "
                                              "(or experiment=none)"),
])
def test_the_demo_with_another_model_or_data_names_the_experiment_to_use(overrides, message, tmp_path) -> None:
    cfg, choices = compose_run(tmp_path, *overrides)
    with pytest.raises(ConfigError) as error:
        check_experiment(cfg, choices)
    assert str(error.value) == message


@pytest.mark.parametrize("overrides", [[], ["experiment=none", "model=llava-1.5-7b", "data=llava"],
                                       ["experiment=llava-1.5-7b", "model=llava-1.5-13b", "data=llava"],
                                       ["model/llm=qwen2.5-0.5b-instruct"]])
def test_other_pairings_pass_the_experiment_check(overrides, tmp_path) -> None:
    check_experiment(*compose_run(tmp_path, *overrides))


def test_train_py_refuses_the_demo_with_llava_in_one_line(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    result = subprocess.run([sys.executable, "train.py", "model=llava-1.5-7b", "data=llava",
                             f"hydra.run.dir={tmp_path}/run"], cwd=CONF_DIR.parents[1], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [GUARD] and result.stderr.strip().endswith(GUARD), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before the run began


def test_the_data_inspector_refuses_the_demo_with_llava_as_training_does(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        inspect_main(["model=llava-1.5-7b", "data=llava"])
    assert stopped.value.code == 1
    assert capsys.readouterr().err.strip() == GUARD


DOC_COMMANDS = doc_commands(STAND_IN, GROUPS)


def test_the_docs_show_training_commands() -> None:
    assert any(command.where.startswith("README.md") for command in DOC_COMMANDS)
    assert any(command.overrides == [] for command in DOC_COMMANDS)  # the demo: `python train.py`


@pytest.mark.parametrize("command", DOC_COMMANDS, ids=[command.where for command in DOC_COMMANDS])
def test_documented_command_composes_and_passes_the_checks(command: DocCommand, tmp_path: Path) -> None:
    if any(override.startswith("hydra/launcher=") for override in command.overrides):
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                            reason="hydra/launcher=slurm needs hydra-submitit-launcher: pip install -e '.[slurm]'")
    try:
        cfg, choices = compose_run(tmp_path, *command.overrides)
        assert checked(cfg, choices)
    except Exception as error:  # a refused config, or an override Hydra cannot parse
        pytest.fail(f"{command.where}: {command.text}\n  {type(error).__name__}: {error}")
