"""TextVQA and the VQA answer normalisation: LLaVA-1.5-13B's published TextVQA answers scored with the soft
accuracy. TextVQA's own annotation file (TextVQA_0.5.1_val.json) is not among the shared excerpts, so the
human answers below are written here, in that file's format, for the real questions: each record names the
rule it exercises and the score the rules give it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava_pl.eval.runner import score_file
from llava_pl.eval.task import TaskDataError
from llava_pl.eval.tasks.textvqa import TextVQATask, question_of
from llava_pl.eval.vqa_normalize import normalize_answer, soft_accuracy
from tests.conftest import formats_file

# The soft accuracy of an answer given by k of the 10 humans: each of the 10 leave-one-out subsets scores
# min(1, matches/3); k subsets lose a match, 10-k keep all k.
BY_MATCHES = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9, 4: 1.0}  # e.g. k=2: (2·(1/3) + 8·(2/3)) / 10 = 0.6

# (image id, question, human answers, matches after normalisation, LLaVA-1.5-13B's answer and why)
RECORDS = [
    ("003a8ae2ef43b901", "What is the brand of this camera?", ["dakota digital"] * 4 + ["dakota"] * 6, 4,
     "'Dakota digital': lower-cased"),
    ("b9dc400eb20bad64", "What does the small white text spell?", ["drupalcon"] + ["rupalcon"] * 9, 1, "'Drupalcon'"),
    ("2b538a43dd933fc1", "What kind of beer is this?", ["ale"] * 2 + ["self-righteous"] * 8, 2, "'Ale'"),
    ("831bcec304a17054", "What brand liquor is on the right?", ["glenmorangie"] * 10, 0, "'Longmorn'"),
    ("831bcec304a17054", "How long has the drink on the right been aged?", ["ten years"] * 3 + ["10"] * 7, 3,
     "'10 years' = 'ten years': number words become digits"),
    ("94ad4aad01e27a32", "What number is on the player's jersey?", ["22"] * 10, 10, "'22'"),
    ("181f00d3ee2b2076", "What is the time?", ["12:15"] * 5 + ["12 15"] * 5, 5, "'12:15': a colon is kept"),
    ("181f00d3ee2b2076", "What brand of watch is that?", ["audemars piguet."] * 3 + ["ap"] * 7, 3,
     "'Audemars piguet' = 'audemars piguet.': a period before no digit goes"),
    ("30f9b48158fc56e6", "Who is at the center of all of this?", ["brian o'donnell"] * 2 + ["brian"] * 8, 2,
     "\"Brian o'donnell\": an apostrophe is kept"),
    ("4ffbb21f379cccbe", "Who was the photographer?", ["philippe molitor"] * 10, 10, "'Philippe molitor'"),
    ("4dc59c7e57fa8968", "Are these switches on or off?", ["off"] * 10, 10, "'Off'"),
    ("45dc5b66e3f3f31b", "What candy bar is down there on the bottom?", ["hershey's"] * 3 + ["hersheys"] * 7, 3,
     "\"Hershey's\": the possessive splits off on both sides ('hershey 's')"),
    ("fa9ffd5aca1e4e51", "What does the light sign read on the farthest right window?",
     ["the bud light"] * 4 + ["bud"] * 6, 4, "'Bud light' = 'the bud light': articles go"),
    ("fa9ffd5aca1e4e51", "How much for a can of skoal?", ["$1.99"] * 2 + ["1.99"] * 8, 2,
     "'$1.99': '$' is no punctuation mark of the list, the period before a digit stays"),
    ("5ce862cbefd8458f", "Is this denny's?", ["yes"] * 10, 10, "'Yes'"),
    ("5ce862cbefd8458f", "What color are the letters on this sign?", ["yellow"] + ["red"] * 9, 1, "'Yellow'"),
    ("270ee71a340f50e8", "What brand is the bottle with red label?", ["jim beam"] * 10, 0, "'Jack daniels'"),
    ("7de24c1c61b63f52", "How many percent is shown on the poster?", ["10%"] * 5 + ["ten"] * 5, 5,
     "'10' = 'ten' (number word), not '10%'"),
    ("40c6b4dd3caa006f", "How many items can you get for $5?", ["three"] * 3 + ["3/$5"] * 7, 3,
     "'3' = 'three'; '3/$5' becomes '3 $5' (a slash between characters turns into a space)"),
    ("40c6b4dd3caa006f", "How man price tags are on the bottom shelf?", ["10"] + ["11"] * 9, 1, "'10'"),
    ("cc9c3bff02242301", "What is one of the brands being advertised?", ["yamaha"] * 10, 10, "'Yamaha'"),
    ("fb39f5b120097669", "What year was this taken?", ["2012"] * 10, 10, "'2012'"),
    ("a3f1fe4ebd510d4e", "What kind of comupter is this?", ["macbook"] * 2 + ["apple"] * 8, 2, "'Macbook'"),
    ("a3f1fe4ebd510d4e", "What does the screen say to do?", ["select your startup disk."] * 4 + ["select"] * 6, 4,
     "'Select your startup disk' = '… disk.'"),
    ("7b0112f7f5f096c5", "What is written at the top of the yellow sticker on the fridge?",
     ["a warning"] * 2 + ["warning!"] + ["caution"] * 7, 3,
     "'Warning' = 'a warning' (article) = 'warning!' (a '!' turns into a space)"),
]


def _annotations(tmp_path: Path) -> Path:
    data = [{"image_id": image_id, "question": question, "answers": answers}
            for image_id, question, answers, _, _ in RECORDS]
    path = tmp_path / "TextVQA_0.5.1_val.json"
    path.write_text(json.dumps({"dataset_name": "textvqa", "dataset_split": "val", "data": data}))
    return path


def _task(tmp_path: Path) -> TextVQATask:
    return TextVQATask(formats_file("llava_textvqa_val_v051_ocr.sample.jsonl"), _annotations(tmp_path))


@pytest.mark.parametrize(("text", "normalised", "rule"), [
    ("The Cat", "cat", "lower case, article dropped"),
    ("an apple", "apple", "article"),
    ("two dogs", "2 dogs", "number word"),
    ("None", "0", "'none' counts as zero"),
    ("twenty", "twenty", "only zero to ten are mapped"),
    ("st. louis", "st louis", "a period before no digit goes"),
    ("3.5", "3.5", "a decimal point stays"),
    ("1,000", "1000", "commas are dropped first"),
    ("black-and-white", "black and white", "hyphen between characters: a space"),
    ("black - white", "black white", "hyphen touching a space: deleted"),
    ("dont", "don't", "contraction restored"),
    ("yes!", "yes", "'!' at the end: replaced, then whitespace collapses"),
    ("what?", "what", "question marks are dropped"),
    ("kid's toy", "kid 's toy", "possessive split off"),
    ("  Multiple\tspaces \n here ", "multiple spaces here", "whitespace"),
])
def test_normalisation_corner_cases(text, normalised, rule) -> None:
    assert normalize_answer(text) == normalised, rule


@pytest.mark.parametrize("matches", range(11))
def test_soft_accuracy_by_number_of_matching_humans(matches) -> None:
    humans = ["a"] * matches + ["b"] * (10 - matches)
    assert soft_accuracy("a", humans) == pytest.approx(BY_MATCHES[min(matches, 4)])


def test_question_is_read_from_llavas_prompt() -> None:
    assert question_of("What is the time?\nReference OCR token: N, u, g0\n"
                       "Answer the question using a single word or phrase.") == "what is the time?"
    assert question_of("What is the time?\nAnswer the question using a single word or phrase.") == "what is the time?"


def test_llava_13b_answers_per_record(tmp_path) -> None:
    task = _task(tmp_path)
    samples = task.samples()
    answers = {json.loads(line)["prompt"].split("\n")[0]: json.loads(line)["text"]
               for line in formats_file("llava_textvqa_val_v051_ocr.answers.llava-v1.5-13b.sample.jsonl")
               .read_text().splitlines()}
    assert len(samples) == len(RECORDS) == 25
    for sample, (image_id, question, _, matches, why) in zip(samples, RECORDS):
        assert sample.question_id == image_id
        score = task.score([sample], {sample.key: answers[question]})["accuracy"]
        assert score == pytest.approx(BY_MATCHES[min(matches, 4)]), why


def test_llava_13b_answer_file(tmp_path) -> None:
    """The whole answer file, joined to the annotations by (image id, question) as LLaVA's eval_textvqa.py
    joins it (image ids repeat: 831bcec304a17054, 181f00d3ee2b2076, … ask two questions each)."""
    answers = formats_file("llava_textvqa_val_v051_ocr.answers.llava-v1.5-13b.sample.jsonl")
    metrics = score_file(_task(tmp_path), answers)
    expected = sum(BY_MATCHES[min(matches, 4)] for _, _, _, matches, _ in RECORDS) / 25
    assert expected == pytest.approx(18.8 / 25)  # 11 × 1 + 5 × 0.9 + 4 × 0.6 + 3 × 0.3 + 2 × 0 = 18.8
    assert metrics == {"accuracy": pytest.approx(expected), "n": 25}


def test_question_without_annotation_is_named(tmp_path) -> None:
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"data": [{"image_id": "003a8ae2ef43b901", "question": "What is the brand of this "
                                          "camera?", "answers": ["dakota"] * 10}]}))
    task = TextVQATask(formats_file("llava_textvqa_val_v051_ocr.sample.jsonl"), path)
    with pytest.raises(TaskDataError, match=r"line 2: image b9dc400eb20bad64, question 'what does the small white"):
        task.samples()
