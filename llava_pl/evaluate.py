"""Evaluate a model on benchmark tasks, or score existing predictions without a model.

    python -m llava_pl.evaluate model=PATH tasks=[pope,mme]
    python -m llava_pl.evaluate model=PATH tasks=[pope] devices=8   # data-parallel (Lightning Fabric)
    python -m llava_pl.evaluate tasks=[pope] predictions=FILE out=metrics.json

PATH is a llava_pl Lightning checkpoint or an exported Hugging Face Llava folder. Tasks are the options of
``conf/eval/tasks``, the group ``train.py`` selects the same way (scienceqa_img, pope, textvqa, vqav2, gqa, mme, and
the demo's shapes and color_naming); their files are read from
``paths.eval_data``. Answers go to ``<out_dir>/<task>/predictions.jsonl`` as they are produced: rerunning with
the same ``out_dir`` answers only what is missing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from lightning.fabric import Fabric
from omegaconf import DictConfig, OmegaConf

from llava_pl.checkpoint.load import load_for_inference
from llava_pl.config_dir import CONF_DIR
from llava_pl.errors import ConfigError, UsageError, reports_user_errors
from llava_pl.eval.runner import Processes, Runner, score_file
from llava_pl.eval.task import Metrics, Task
from llava_pl.eval.task_config import selected_tasks, task_names
from llava_pl.resolvers import register_resolvers

log = logging.getLogger(__name__)
register_resolvers()
USAGE = ("python -m llava_pl.evaluate model=PATH tasks=[NAME,...] [devices=N ...] | python -m llava_pl.evaluate "
         "tasks=[NAME] predictions=FILE [out=FILE]   (--help lists every key)")


def format_metrics(tasks: dict[str, Task], results: dict[str, Metrics]) -> str:
    return "\n".join(f"{name}\n{tasks[name].summary(metrics)}" for name, metrics in results.items())


def answer_and_score(cfg: DictConfig, tasks: dict[str, Task]) -> dict[str, Metrics] | None:
    """Runs the model over the tasks on ``cfg.devices`` processes; the metrics on rank 0, ``None`` elsewhere."""
    fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy, precision=cfg.precision)
    fabric.launch()
    loaded = load_for_inference(cfg.model, OmegaConf.to_container(cfg.template) if cfg.template else None)
    model = fabric.strategy.precision.convert_module(loaded.model).to(fabric.device)
    sampling = OmegaConf.to_container(cfg.sampling) if cfg.sampling else {}
    runner = Runner(model, loaded.tokenizer, loaded.template, loaded.image_transform, batch_size=cfg.batch_size,
                    model_id=Path(str(cfg.model)).name, autocast=fabric.autocast, **sampling)
    processes = Processes(fabric.global_rank, fabric.world_size)
    results = {}
    for name, task in tasks.items():
        result = runner.run(name, task, cfg.out_dir, limit=cfg.limit, processes=processes)
        results[name] = result.metrics
        if processes.is_main:
            log.info(f"{name}: {len(result.answers)} answers in {result.predictions}")
    return results if fabric.global_rank == 0 else None


def evaluate(cfg: DictConfig) -> dict[str, Metrics] | None:
    """Scores ``cfg.predictions`` or runs ``cfg.model``; prints the metrics and writes ``cfg.out``."""
    if not cfg.predictions and not cfg.model:
        raise UsageError(f"give model=PATH (answer and score) or predictions=FILE (score only)\nusage: {USAGE}")
    tasks = selected_tasks(cfg)
    if not tasks:
        raise UsageError(f"select the tasks to run, e.g. tasks=[pope,mme]; the tasks are {task_names()}\nusage: {USAGE}")
    if cfg.predictions:
        if len(tasks) != 1:
            raise ConfigError(f"predictions= scores one task; tasks= selects {sorted(tasks)}")
        results: dict[str, Metrics] | None = {name: score_file(task, cfg.predictions) for name, task in tasks.items()}
    else:
        results = answer_and_score(cfg, tasks)
    if results is None:  # not rank 0
        return None
    print(format_metrics(tasks, results))
    if cfg.out:
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"metrics written to {out}")
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "eval"), config_name="evaluate")
@reports_user_errors
def main(cfg: DictConfig) -> Any:
    evaluate(cfg)


if __name__ == "__main__":
    main()
