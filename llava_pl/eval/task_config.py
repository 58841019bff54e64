"""Task configs by name: the ``conf/eval/task`` group is the registry (one YAML per task, its file name the
task's name). The evaluation CLI composes it with Hydra (``task=pope``); a training run lists names in
``eval.tasks``, which this module loads from the same files."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from llava_pl.config_dir import CONF_DIR
from llava_pl.eval.task import Task

TASK_CONF_DIR = CONF_DIR / "eval" / "task"


def task_names() -> list[str]:
    return sorted(path.stem for path in TASK_CONF_DIR.glob("*.yaml"))


def load_task_configs(names: Sequence[str], root: DictConfig) -> DictConfig:
    """``{name: config}`` for the named tasks, their interpolations (``${paths.eval_data}``, …) resolved
    against ``root``, the run's config."""
    tasks = OmegaConf.create()
    for name in names:
        path = TASK_CONF_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(f"eval.tasks: no task {name!r}; {TASK_CONF_DIR} has {task_names()}")
        tasks = OmegaConf.merge(tasks, OmegaConf.load(path))
    combined = OmegaConf.create(OmegaConf.to_container(root, resolve=False))
    combined.task = tasks  # attached under the run's config, so interpolations see its keys
    return combined.task


def instantiate_tasks(configs: DictConfig) -> dict[str, Task]:
    """``{name: Task}`` from a ``task`` node (as the CLI composes it, or as ``load_task_configs`` returns)."""
    tasks = {}
    for name, node in configs.items():
        task = instantiate(node)
        if not isinstance(task, Task):
            raise TypeError(f"task {name}: {node.get('_target_')} does not build a llava_pl Task")
        tasks[str(name)] = task
    return tasks
