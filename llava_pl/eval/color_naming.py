"""An end-of-training evaluation of whether the model names the colour it sees: the ``color_naming`` task asked
through one or more probes (a template and a prompt each), reported as one row per probe in the table layout of
the demo's evaluation (accuracy with the image, with a blank image, by chance).

It suits a model after the ``align`` stage alone: with the ``plain`` template the model captions the image as
it was trained to, and a colour it names can only come from the image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from llava_pl.data.images import ImageTransform
from llava_pl.data.templates import Template
from llava_pl.eval.predictions import PREDICTIONS_FILE
from llava_pl.eval.processes import Processes
from llava_pl.eval.runner import Runner
from llava_pl.eval.tasks.color_naming import ColorNamingTask
from llava_pl.eval.tasks.shapes import BLANK_SUFFIX
from llava_pl.model.llava import LlavaModel


class Probe:
    """How the model is asked (a plain class, not a dataclass: Hydra would turn a dataclass back into a config).

    Args:
        prompt: the instruction after the image (the ``plain`` template drops it).
        template: the conversation template; None: the LLM's own (``model.llm.template``).
    """

    def __init__(self, prompt: str = "", template: Template | None = None) -> None:
        self.prompt = prompt
        self.template = template

    def __repr__(self) -> str:
        return f"Probe(prompt={self.prompt!r}, template={type(self.template).__name__ if self.template else None})"


class ColorNamingEvaluation:
    """Shows the held-out images (and each blanked) through every probe and scores the colour named first.

    Writes ``<output_name>`` (the table, one row per probe) and ``color_naming_predictions.jsonl`` (per image
    and probe: the answer with the image and with the blank image) to the run folder, beside the runner's
    ``color_naming/<probe>/`` folders. Over several ``processes`` every rank answers its share and returns the
    table; rank 0 writes the files.

    Args:
        meta: the demo's ``meta_test.json``.
        image_folder: the folder the image paths are relative to.
        probes: row name → probe, asked in this order.
        shape_counts: which images take part, by their number of shapes (one: the colour is unambiguous).
        limit: evaluate only the first ``limit`` images.
    """

    def __init__(
        self,
        meta: str,
        image_folder: str,
        probes: Mapping[str, Probe],
        shape_counts: Sequence[int] = (1,),
        batch_size: int = 64,
        max_new_tokens: int = 24,
        limit: int | None = None,
        output_name: str = "color_naming_eval.json",
    ) -> None:
        if not probes:
            raise ValueError("ColorNamingEvaluation needs at least one probe")
        self.probes = dict(probes)
        self.tasks = {name: ColorNamingTask(meta, image_folder, probe.prompt, shape_counts,
                                            max_new_tokens=max_new_tokens) for name, probe in self.probes.items()}
        self.batch_size = batch_size
        self.limit = limit
        self.output_name = output_name

    def __call__(
        self,
        model: LlavaModel,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        image_transform: ImageTransform,
        run_dir: str | Path,
        processes: Processes | None = None,
    ) -> dict[str, dict]:
        run_dir = Path(run_dir)
        processes = processes or Processes()
        results: dict[str, dict] = {}
        rows: list[dict] = []
        for name, probe in self.probes.items():
            out_dir = run_dir / "color_naming"
            if processes.is_main:  # answers of an earlier evaluation in this folder may come from other weights
                (out_dir / name / PREDICTIONS_FILE).unlink(missing_ok=True)
            runner = Runner(model, tokenizer, probe.template or template, image_transform, batch_size=self.batch_size)
            result = runner.run(name, self.tasks[name], out_dir, limit=self.limit, processes=processes)
            results[name] = {key: int(value) if key == "n" else value for key, value in result.metrics.items()}
            rows += [{"probe": name, "image": sample.image, "prompt": sample.prompt, "colors": list(sample.target),
                      "prediction": result.answers.get(sample.key, ""),
                      "blank_prediction": result.answers.get(sample.key + BLANK_SUFFIX, "")}
                     for sample in result.samples if not sample.meta.get("blank")]
        if not processes.is_main:
            return results
        (run_dir / self.output_name).write_text(json.dumps(results, indent=2) + "\n")
        with (run_dir / "color_naming_predictions.jsonl").open("w") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
        return results
