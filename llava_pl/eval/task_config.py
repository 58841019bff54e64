"""Evaluation tasks from a run's config: the ``conf/eval/tasks`` group is the registry (one YAML per task, its file
name the task's name), selected as ``tasks=[pope,mme]`` by the evaluation CLI and by ``train.py`` alike. A task
file holds one task, or several under one name (``color_naming`` → ``color_naming/caption`` and
``color_naming/question``)."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from llava_pl.config_dir import CONF_DIR
from llava_pl.eval.task import Task

TASK_CONF_DIR = CONF_DIR / "eval" / "tasks"


def task_names() -> list[str]:
    """The options of the ``tasks`` group."""
    return sorted(path.stem for path in TASK_CONF_DIR.glob("*.yaml"))


def instantiate_tasks(configs: DictConfig | None, prefix: str = "") -> dict[str, Task]:
    """``{name: Task}`` from a config's ``tasks`` node (empty for ``tasks=[]``, where Hydra leaves no node). A node
    without ``_target_`` groups tasks, named ``<group>/<task>``."""
    tasks: dict[str, Task] = {}
    for key, node in (configs or {}).items():
        name = f"{prefix}{key}"
        if "_target_" not in node:
            tasks |= instantiate_tasks(node, prefix=f"{name}/")
            continue
        task = instantiate(node)
        if not isinstance(task, Task):
            raise TypeError(f"task {name}: {node.get('_target_')} does not build a llava_pl Task")
        tasks[name] = task
    return tasks


def selected_tasks(cfg: DictConfig) -> dict[str, Task]:
    """The tasks ``cfg.tasks`` selects, with ``eval.max_new_tokens`` (where set) as every task's answer budget."""
    tasks = instantiate_tasks(cfg.get("tasks"))
    max_new_tokens = (cfg.get("eval") or {}).get("max_new_tokens")
    if max_new_tokens:
        for task in tasks.values():
            task.max_new_tokens = int(max_new_tokens)
    return tasks
