"""The resume plan: where each stage's checkpoint lies, which stages a run already completed, and which stage
resumes from which checkpoint."""

from __future__ import annotations

from pathlib import Path

from llava_pl.checkpoint.projector_file import PROJECTOR_FILE
from llava_pl.stage import StageConfig


def stage_checkpoint(run_dir: Path, stage: StageConfig) -> Path:
    return run_dir / stage.name / "checkpoints" / "last.ckpt"


def stage_is_complete(run_dir: Path, stage: StageConfig) -> bool:
    """The projector file is written last, after the stage's final checkpoint."""
    return (run_dir / stage.name / PROJECTOR_FILE).is_file() and stage_checkpoint(run_dir, stage).exists()


def resume_plan(ckpt_path: str | None, stages: list[StageConfig], run_dir: Path) -> list[tuple[StageConfig, str | None]]:
    """Which stages still run, and the checkpoint each resumes from.

    ``ckpt_path=last`` (with ``hydra.run.dir`` set to the interrupted run's folder) skips the stages that
    completed and resumes the first unfinished one from its ``last.ckpt``; a path resumes the first
    selected stage from that file.
    """
    if ckpt_path is None:
        return [(stage, None) for stage in stages]
    if ckpt_path != "last":
        if not Path(ckpt_path).exists():  # a file, or a sharded checkpoint's folder
            raise FileNotFoundError(f"ckpt_path: no checkpoint file at {ckpt_path}")
        return [(stage, ckpt_path if index == 0 else None) for index, stage in enumerate(stages)]
    plan = []
    for stage in stages:
        if stage_is_complete(run_dir, stage):
            continue
        last = stage_checkpoint(run_dir, stage)
        plan.append((stage, str(last) if last.exists() and not plan else None))
    return plan
