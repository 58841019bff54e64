"""llava_pl's ``plain`` (align) and ``vicuna_v1`` (finetune) tokenization gives LLaVA-1.5's own input ids and
labels (``shared/llava-golden``: haotian-liu/LLaVA's ``train.py`` run unchanged) for every record of the real
excerpts, with the Llama tokenizer in both ``legacy`` settings (Vicuna v1.5 ships ``legacy: false``).

Everything goes through llava_pl's own path: the configs' tokenizer loader and templates, then ``LlavaDataset``
(``parse_record`` → template → tokenization). One image position per image, as in the golden files.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig

from llava_pl.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER
from llava_pl.data.dataset import LlavaDataset
from llava_pl.generate import prompt_ids
from tests.conftest import formats_file, golden_path
from tests.data_helpers import transform

CAPTIONS = "blip_laion_cc_sbu_558k.sample.json"  # LLaVA's `plain` conversation, as pretrain.sh
INSTRUCT = "llava_instruct_150k.sample.json"  # LLaVA's `v1` conversation, as finetune.sh
LEGACY = [True, False]


def _setup(compose_config: Callable[..., DictConfig], name: str, legacy: bool, tmp_path) -> tuple:
    cfg = compose_config("experiment=none", "model/llm=vicuna-7b-v1.5")  # LLaVA-1.5's recipe, not the demo's
    folder = golden_path(f"tok_legacy_{str(legacy).lower()}")
    tokenizer = instantiate(cfg.model.llm.tokenizer, name_or_path=str(folder))
    assert tokenizer.legacy is legacy and tokenizer.pad_token == "<unk>"
    template = instantiate(cfg.stage.align.template if name == CAPTIONS else cfg.model.llm.template)
    dataset = LlavaDataset(formats_file(name), tmp_path, tokenizer, template, transform(), tokens_per_image=1)
    reference = json.loads(golden_path(f"ref_legacy_{str(legacy).lower()}.json").read_text())
    assert sum(key.startswith(f"{name}#") for key in reference) == len(dataset)  # a reference for every record
    return tokenizer, template, dataset, [reference[f"{name}#{index}"] for index in range(len(dataset))]


def _where(tokenizer, ours: list[int], theirs: list[int]) -> str:
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    near = slice(max(0, at - 3), at + 3)
    spell = lambda ids: [tokenizer.convert_ids_to_tokens(i) if i >= 0 else i for i in ids[near]]  # noqa: E731
    return f"first difference at {at}: ours {spell(ours)}, LLaVA's {spell(theirs)}"


@pytest.mark.parametrize("legacy", LEGACY, ids=["legacy_true", "legacy_false"])
@pytest.mark.parametrize("name", [CAPTIONS, INSTRUCT], ids=["plain", "vicuna_v1"])
def test_ids_and_labels_are_llavas(name, legacy, compose_config, tmp_path) -> None:
    tokenizer, _, dataset, references = _setup(compose_config, name, legacy, tmp_path)
    for index, expected in enumerate(references):
        _, tokens = dataset.encode(index)
        assert tokens.input_ids == expected["input_ids"], f"record {index}: " + _where(
            tokenizer, tokens.input_ids, expected["input_ids"])
        assert tokens.labels == expected["labels"], f"record {index}: " + _where(
            tokenizer, tokens.labels, expected["labels"])


@pytest.mark.parametrize("legacy", LEGACY, ids=["legacy_true", "legacy_false"])
@pytest.mark.parametrize("name", [CAPTIONS, INSTRUCT], ids=["plain", "vicuna_v1"])
def test_prediction_prompt_and_stop_are_the_trained_ones(name, legacy, compose_config, tmp_path) -> None:
    """What predict and chat feed the model is LLaVA's sequence up to the first supervised token, and they stop
    on the token that ends each supervised turn there (``\\n`` for captions, ``</s>`` for answers)."""
    tokenizer, template, dataset, references = _setup(compose_config, name, legacy, tmp_path)
    stop_id = tokenizer.convert_tokens_to_ids(template.stop_token(tokenizer))
    for index, expected in enumerate(references):
        ids, labels = expected["input_ids"], expected["labels"]
        first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        question = dataset.conversation(index).messages[0].content.removeprefix(f"{IMAGE_PLACEHOLDER}\n")
        assert prompt_ids(question, template, tokenizer, tokens_per_image=1).tolist() == ids[:first], index
        turn_ends = [i for i, label in enumerate(labels) if label != IGNORE_INDEX
                     and (i + 1 == len(labels) or labels[i + 1] == IGNORE_INDEX)]
        assert [ids[i] for i in turn_ends] == [stop_id] * len(turn_ends), index
