"""Decoding every image of a data set: the check the length pass (``llava_pl.data.lengths``) leaves out, since it
only looks whether each image file exists. Corrupt and truncated files become bad samples with their reason."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from llava_pl.data.conversation import SampleError
from llava_pl.data.dataset import LlavaDataset, ScanResult

BadEntry = tuple[int, str, str, str, str]  # ScanResult.bad: (index, source, sample id, problem, reason)


class _Decoding(Dataset):
    """Item ``i`` decodes every image of record ``indices[i]``: ``None``, or the bad entry of the first failure."""

    def __init__(self, dataset: LlavaDataset, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> BadEntry | None:
        index = self.indices[position]
        try:
            conversation = self.dataset.conversation(index)
            for number in range(len(conversation.images)):
                with self.dataset.open_image(index, conversation, number):
                    pass  # open_image decodes every byte: a truncated file fails here
        except SampleError as error:
            return index, error.source, error.sample_id, error.problem, error.reason
        return None


def _as_is(item: Any) -> Any:
    return item


def decode_images(dataset: LlavaDataset, result: ScanResult, workers: int = 0) -> ScanResult:
    """``result`` with the samples it found good but whose images do not decode (or cannot be read) added to its
    bad ones (their length set to 0). ``workers`` loader processes decode in parallel."""
    bad_already = {entry[0] for entry in result.bad}
    indices = [index for index in range(len(dataset)) if index not in bad_already and result.has_image[index]]
    loader = DataLoader(_Decoding(dataset, indices), batch_size=None, num_workers=workers, collate_fn=_as_is)
    found = [entry for entry in loader if entry is not None]
    if not found:
        return result
    lengths = np.array(result.lengths, copy=True)
    lengths[[entry[0] for entry in found]] = 0
    return ScanResult(lengths, result.has_image, sorted([*result.bad, *found]))
