"""Every record of the real LLaVA excerpts (558K captions and LLaVA-Instruct-150K, both halves) loads, tokenizes
and masks correctly over stand-in images this test draws, read from the JSON and from shards converted from it.

Covers what the real files hold: ``<image>`` after the prompt (moved before the text, as LLaVA-1.5 does),
non-ASCII captions, 14-turn conversations and repeated ids.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from llava_pl.constants import IMAGE_PLACEHOLDER, IMAGE_TOKEN_ID
from llava_pl.data.dataset import LlavaDataset
from llava_pl.data.templates import ChatTemplate, PlainTemplate, VicunaTemplate
from llava_pl.to_wds import convert
from tests.conftest import formats_file
from tests.data_helpers import TOKENS_PER_IMAGE, transform, write_dataset
from tests.test_labels import supervised_runs

FILES = [(half, name) for half in ("", "more/")
         for name in ("blip_laion_cc_sbu_558k.sample.json", "llava_instruct_150k.sample.json")]


def _templates(name: str) -> list:
    return [PlainTemplate()] if name.startswith("blip") else [ChatTemplate(), VicunaTemplate()]


@pytest.mark.parametrize(("half", "name"), FILES, ids=[f"{h or 'first/'}{n.split('.')[0]}" for h, n in FILES])
def test_every_real_record_loads_tokenizes_and_masks(half, name, tmp_path, tokenizer) -> None:
    records = json.loads(formats_file(f"{half}{name}").read_text())
    path = write_dataset(tmp_path / "data", records, name)  # stand-in images at the records' own paths
    end = tokenizer.eos_token
    for template in _templates(name):
        dataset = LlavaDataset(path, path.parent, tokenizer, template, transform(), TOKENS_PER_IMAGE, max_length=None)
        assert not dataset.scan().bad
        for index, record in enumerate(records):
            item = dataset[index]
            ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
            assert item["id"] == record["id"] and item["pixel_values"].shape[0] == 1
            assert ids.count(IMAGE_TOKEN_ID) == TOKENS_PER_IMAGE
            answers = [turn["value"] for turn in record["conversations"][1::2]]
            prefix = " " if isinstance(template, VicunaTemplate) else ""
            turn_end = template.end if isinstance(template, PlainTemplate) else end
            assert supervised_runs(tokenizer, ids, labels) == [f"{prefix}{answer}{turn_end}" for answer in answers]
            first_image = ids.index(IMAGE_TOKEN_ID)
            prompt = record["conversations"][0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
            before = tokenizer.decode([t for t in ids[:first_image]])
            after = tokenizer.decode([t for t in ids[first_image + TOKENS_PER_IMAGE:] if t != IMAGE_TOKEN_ID])
            if isinstance(template, PlainTemplate):
                assert before == (tokenizer.bos_token or "") and prompt not in after  # the image, then the caption
            else:  # the image comes first in its turn, whichever end of the prompt it was written at
                assert prompt not in before and after.lstrip().startswith(prompt.split("\n")[0][:20])


def test_the_odd_cases_are_there_and_handled(tokenizer) -> None:
    captions = [r for half in ("", "more/") for r in json.loads(formats_file(f"{half}{FILES[0][1]}").read_text())]
    instruct = [r for half in ("", "more/") for r in json.loads(formats_file(f"{half}{FILES[1][1]}").read_text())]
    assert sum(r["conversations"][0]["value"].endswith(IMAGE_PLACEHOLDER) for r in captions) > len(captions) // 3
    assert any(not r["conversations"][1]["value"].isascii() for r in captions)
    assert max(len(r["conversations"]) for r in instruct) == 14
    assert max(Counter(r["id"] for r in instruct).values()) >= 3  # a conversation, a detail and a reasoning record
    non_ascii = next(r["conversations"][1]["value"] for r in captions if not r["conversations"][1]["value"].isascii())
    assert tokenizer.decode(tokenizer(non_ascii, add_special_tokens=False)["input_ids"]) == non_ascii


@pytest.mark.parametrize("name", [FILES[0][1], FILES[1][1]], ids=["558k", "instruct"])
def test_real_records_from_shards_match_the_json(name, tmp_path, tokenizer) -> None:
    records = json.loads(formats_file(name).read_text())
    path = write_dataset(tmp_path / "data", records, name)
    manifest = convert(path, path.parent, tmp_path / "shards", shard_size=16, progress=False)
    assert manifest["samples"] == len(records) and not manifest["bad_samples"]
    template = _templates(name)[0]
    from_json = LlavaDataset(path, path.parent, tokenizer, template, transform(), TOKENS_PER_IMAGE)
    from_shards = LlavaDataset(tmp_path / "shards", None, tokenizer, template, transform(), TOKENS_PER_IMAGE)
    assert len(from_json) == len(from_shards) == len(records)
    for index in range(len(records)):
        a, b = from_json[index], from_shards[index]
        assert a["id"] == b["id"] and torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["pixel_values"], b["pixel_values"])
