"""Colour naming: the first colour word of a free-form answer, scored against the image's colours, with the
blank-image control and the best-constant-colour chance level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate

from llava_pl.data.templates import PlainTemplate
from llava_pl.demo.color_naming_task import ColorNamingTask, first_color
from llava_pl.eval.task import TaskDataError
from llava_pl.eval.task_config import instantiate_tasks

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "black")
META = [  # image, colours of its shapes
    ("test/a.png", ["red"]), ("test/b.png", ["red"]), ("test/c.png", ["blue"]), ("test/d.png", ["green", "red"]),
]


def write_meta(folder: Path) -> Path:
    path = folder / "meta_test.json"
    path.write_text(json.dumps([{"image": image, "shapes": [{"kind": "circle", "color": c} for c in colors]}
                                for image, colors in META]))
    return path


@pytest.mark.parametrize(("text", "color"), [
    ("A small red circle at the top left.", "red"),
    ("There is a large Blue square and a red cross.", "blue"),  # the first one named
    ("A reddish shape, then a green one.", "green"),  # whole words only
    ("A picture showing a small circle.", None),
])
def test_first_color_word(text, color) -> None:
    assert first_color(text, COLORS) == color


def test_scores_one_shape_images_by_hand(tmp_path) -> None:
    """a (red): "A small red circle" ✓; b (red): "a blue one" ✗; c (blue): no colour ✗ → 1/3, named 2/3.
    blank: "red" ×3 → a, b ✓ → 2/3; chance: red is in 2 of 3 images → 2/3. d has two shapes: left out."""
    task = ColorNamingTask(write_meta(tmp_path), tmp_path, colors=COLORS)
    samples = task.samples()
    assert [s.key for s in samples] == ["test/a", "test/a/blank", "test/b", "test/b/blank", "test/c", "test/c/blank"]
    answers = {"test/a": "A small red circle at the top.", "test/b": "There is a blue one.", "test/c": "A square.",
               **{f"test/{k}/blank": "A red circle." for k in "abc"}}
    assert task.score(samples, answers) == {"accuracy": pytest.approx(1 / 3), "blank_accuracy": pytest.approx(2 / 3),
                                            "chance": pytest.approx(2 / 3), "named": pytest.approx(2 / 3), "n": 3}


def test_several_shapes_count_any_colour_of_the_image(tmp_path) -> None:
    task = ColorNamingTask(write_meta(tmp_path), tmp_path, shape_counts=[2], blank_control=False)
    samples = task.samples()
    assert [s.target for s in samples] == [("green", "red")]
    assert task.score(samples, {"test/d": "A green square and a red circle."})["accuracy"] == 1.0
    assert task.score(samples, {"test/d": "A blue square and a red circle."})["accuracy"] == 0.0  # blue first
    assert task.vocabulary() == ("blue", "green", "red")  # every colour of the file, not only of these images
    with pytest.raises(TaskDataError, match="no image has 3 shapes"):
        ColorNamingTask(write_meta(tmp_path), tmp_path, shape_counts=[3]).samples()


def test_the_config_builds_a_caption_probe_and_a_question_probe(compose_config) -> None:
    cfg = compose_config("tasks=[color_naming]")
    tasks = instantiate_tasks(cfg.tasks)
    assert list(tasks) == ["color_naming/caption", "color_naming/question"]
    assert all(isinstance(task, ColorNamingTask) for task in tasks.values())
    caption, question = tasks.values()
    align = instantiate(cfg.stage.align.template)  # the demo's: a PlainTemplate closing with <|im_end|>
    assert isinstance(caption.template, PlainTemplate) and vars(caption.template) == vars(align)
    assert caption.prompt == ""
    assert question.template is None  # the LLM's own
    assert question.prompt.startswith("What color is the shape")


def test_without_an_align_stage_the_caption_probe_asks_in_the_models_template(data_dir) -> None:
    """The evaluation CLI's config has no stage: the caption probe falls back to the model's template."""
    from hydra import compose, initialize_config_dir

    from llava_pl.config_dir import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR / "eval"), version_base="1.3"):
        cfg = compose("evaluate", overrides=["tasks=[color_naming]", f"paths.data_dir={data_dir}"])
    assert instantiate_tasks(cfg.tasks)["color_naming/caption"].template is None


def test_answers_pair_each_image_with_its_blank_twin(tmp_path) -> None:
    task = ColorNamingTask(write_meta(tmp_path), tmp_path)
    (path,) = task.write_outputs(task.samples(), {"test/a": "A red circle.", "test/a/blank": "A blue one."}, tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {"image": "test/a.png", "prompt": "", "colors": ["red"], "prediction": "A red circle.",
                       "blank_prediction": "A blue one."}
    assert [row["prediction"] for row in rows[1:]] == ["", ""]
