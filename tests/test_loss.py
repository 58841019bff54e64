"""The loss's two averages, checked against a per-sample loop, padded and packed alike."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from llava_pl.constants import IGNORE_INDEX
from llava_pl.model.loss import causal_lm_loss
from llava_pl.stage import StageConfig

VOCAB = 11


def _sample(length: int, supervised: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (length,), generator=generator)
    labels = ids.clone()
    labels[: length - supervised] = IGNORE_INDEX
    return ids, labels


def _own_mean(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One sample's mean next-token loss, written out position by position."""
    positions = [p for p in range(len(labels) - 1) if labels[p + 1] != IGNORE_INDEX]
    losses = [F.cross_entropy(logits[p], labels[p + 1]) for p in positions]
    return torch.stack(losses).mean()


@pytest.fixture
def samples() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    # a long answer, a one-token answer, a sample with nothing supervised, a middling one
    labels = [_sample(12, 9, generator)[1], _sample(5, 1, generator)[1], _sample(4, 0, generator)[1],
              _sample(7, 3, generator)[1]]
    return [(torch.randn(len(label), VOCAB, generator=generator), label) for label in labels]


def test_sample_average_is_the_mean_of_each_samples_own_mean(samples) -> None:
    expected = torch.stack([_own_mean(logits, labels) for logits, labels in samples if (labels != IGNORE_INDEX).any()])
    longest = max(len(labels) for _, labels in samples)
    padded_logits = torch.stack([F.pad(logits, (0, 0, 0, longest - len(logits))) for logits, _ in samples])
    padded_labels = torch.stack([F.pad(labels, (0, longest - len(labels)), value=IGNORE_INDEX)
                                 for _, labels in samples])
    packed_logits = torch.cat([logits for logits, _ in samples]).unsqueeze(0)
    packed_labels = torch.cat([labels for _, labels in samples]).unsqueeze(0)
    lengths = torch.tensor([len(labels) for _, labels in samples])

    torch.testing.assert_close(causal_lm_loss(padded_logits, padded_labels, "sample"), expected.mean())
    torch.testing.assert_close(causal_lm_loss(packed_logits, packed_labels, "sample", lengths), expected.mean())
    # the token average weighs the nine-token answer nine times the one-token one
    token_mean = causal_lm_loss(padded_logits, padded_labels, "token")
    supervised = [(labels != IGNORE_INDEX).sum() for _, labels in samples]
    weighted = sum(mean * n for mean, n in zip(expected, [n for n in supervised if n > 0])) / sum(supervised)
    torch.testing.assert_close(token_mean, weighted)
    torch.testing.assert_close(causal_lm_loss(packed_logits, packed_labels, "token", lengths), token_mean)
    assert not torch.allclose(token_mean, expected.mean())


def test_nothing_supervised_gives_zero_and_an_unknown_average_is_refused() -> None:
    logits = torch.randn(2, 5, VOCAB, requires_grad=True)
    labels = torch.full((2, 5), IGNORE_INDEX)
    for average in ("token", "sample"):
        loss = causal_lm_loss(logits, labels, average)
        assert float(loss.detach()) == 0.0
        loss.backward()  # still part of the graph: a text-free micro-batch does not break the step
    labels[0, 3] = 1
    with pytest.raises(ValueError, match="loss average"):
        causal_lm_loss(logits, labels, "sequence")


def test_the_stage_config_chooses_the_average(compose_config) -> None:
    cfg = compose_config("stage=finetune", "stage.finetune.loss_average=sample")
    assert StageConfig(**OmegaConf.to_container(cfg.stage.finetune, resolve=True)).loss_average == "sample"
    cfg = compose_config("stage=finetune", "stage.finetune.loss_average=sequence")
    with pytest.raises(ValueError, match="stage finetune: loss_average must be one of"):
        StageConfig(**OmegaConf.to_container(cfg.stage.finetune, resolve=True))
