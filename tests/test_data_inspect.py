"""The data inspector prints samples as the model sees them and the bad-sample report of the whole file."""

from __future__ import annotations

import re

from llava_pl.data.inspect import main
from tests.conftest import small_overrides
from tests.data_helpers import mixed_records, record, write_dataset


def test_inspector_shows_image_spans_supervision_counts_and_bad_samples(data_dir, tmp_path, capsys) -> None:
    records = mixed_records(6)
    records.insert(1, record("broken", ["<image>\n<image>\nTwo?", "No."], "img/0000.png"))
    path = write_dataset(tmp_path / "data", records)
    main(["n=2", "color=never", "stage=finetune", "data=llava", f"data.image_folder={path.parent}",
          f"data.sets.finetune.train={path}", *small_overrides(data_dir, tmp_path / "run", shapes=False)])
    out = capsys.readouterr().out
    shown = re.findall(r"── sample \S+ \(#(\d+)\): (\d+) tokens = (\d+) text \+ (\d+) image .*; (\d+) supervised", out)
    assert [index for index, *_ in shown] == ["0", "2"]  # the bad sample (#1) is not shown, the next one is
    tokens, text, image, supervised = map(int, shown[0][1:])
    assert tokens == text + image and image > 0 and supervised > 0
    assert f"<image x{image}>" in out  # one collapsed span per image
    first_answer = records[0]["conversations"][1]["value"]
    assert f"[[{first_answer}" in out  # supervised spans are marked
    assert "7 records: 6 good, 1 bad" in out and "image_count" in out and "sample broken" in out
