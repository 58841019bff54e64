"""Make visual instruction data from captions and object boxes with any chat LLM (LLaVA's language-only recipe).

    python -m llava_pl.make_instruct in=FILE.jsonl out=FILE.json kinds=[conversation,detail,reasoning]
    python -m llava_pl.make_instruct in=FILE.jsonl out=FILE.json instruct_backend=local

Each input line is ``{"id", "image", "captions": [...], "instances": [{"category", "bbox": [x1, y1, x2, y2]}]}``
with boxes normalised to [0, 1]. For every image and kind the LLM reads the kind's prompt (``prompts.<kind>``:
system message and few-shot examples, from ``conf/instruct_prompts``) and the image's captions and boxes as
text, and its reply becomes a LLaVA record ``{"id", "image", "conversations"}``. Progress is journalled in
``<out>.journal.jsonl``: rerunning the command does only what is missing. ``out`` is rewritten at the end of
every run with all records done so far (a JSON array, or JSON Lines for ``.jsonl``), ready for ``data=llava``.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from llava_pl.checkpoint.atomic import atomic_path
from llava_pl.cli import require_keys
from llava_pl.config_dir import CONF_DIR
from llava_pl.data.instruct.backend import ChatBackend
from llava_pl.data.instruct.context import ImageContext, read_contexts, symbolic_context
from llava_pl.data.instruct.journal import Journal
from llava_pl.data.instruct.pipeline import Summary, generate
from llava_pl.data.instruct.prompts import load_prompts
from llava_pl.errors import reports_user_errors
from llava_pl.resolvers import register_resolvers

log = logging.getLogger(__name__)
register_resolvers()
USAGE = "python -m llava_pl.make_instruct in=FILE.jsonl out=FILE.json [kinds=[...]] [instruct_backend=local]"


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Replaces ``path`` atomically with the records: JSON Lines for ``.jsonl``, else a JSON array."""
    with atomic_path(path) as partial_file:
        if path.suffix == ".jsonl":
            text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        else:
            text = json.dumps(records, indent=2, ensure_ascii=False) + "\n"
        partial_file.write_text(text, encoding="utf-8")


def make_instruct(cfg: DictConfig, backend: ChatBackend | None = None) -> Summary:
    """Generates what the journal lacks and writes ``cfg.out``; ``backend`` replaces ``cfg.instruct_backend``
    (tests pass a model that is already loaded)."""
    require_keys(cfg, ["in", "out"], USAGE)
    kinds = list(cfg.kinds)
    prompts = load_prompts(OmegaConf.to_container(cfg.prompts, resolve=True), kinds)
    contexts: list[ImageContext] = read_contexts(cfg["in"])
    if cfg.limit is not None:
        contexts = contexts[: cfg.limit]
    render = partial(symbolic_context, **OmegaConf.to_container(cfg.context, resolve=True))
    out = Path(cfg.out)
    with Journal(cfg.journal) as journal:
        if journal.dropped_tail:
            log.warning(f"{journal.path}: dropped a last line cut short by an interrupted run")
        if backend is None and any((c.id, kind) not in journal.records for c in contexts for kind in kinds):
            backend = instantiate(cfg.instruct_backend)  # not loaded (nor its key required) when all is done
        summary = generate(contexts, prompts, backend, journal, render, max_attempts=cfg.max_attempts, seed=cfg.seed,
                           salvage_truncated=cfg.salvage_truncated)
        records = [journal.records[key] for c in contexts for kind in kinds if (key := (c.id, kind)) in journal.records]
    write_records(out, records)
    print(summary.format())
    print(f"{len(records)} records of {len(contexts)} images x {len(kinds)} kinds written to {out}")
    return summary


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="make_instruct")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    make_instruct(cfg)


if __name__ == "__main__":
    main()
