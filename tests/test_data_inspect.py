"""The data inspector prints samples as the model sees them and the bad-sample report of the whole file."""

from __future__ import annotations

import io
import re

from PIL import Image

from llava_pl.inspect import main
from tests.conftest import small_overrides
from tests.data_helpers import mixed_records, record, write_dataset


def test_inspector_shows_image_spans_supervision_counts_and_bad_samples(data_dir, tmp_path, capsys) -> None:
    records = mixed_records(6)
    records.insert(1, record("broken", ["<image>\n<image>\nTwo?", "No."], "img/0000.png"))
    path = write_dataset(tmp_path / "data", records)
    main(["n=2", "color=never", "stage=finetune", "experiment=none", "data=llava", f"data.image_folder={path.parent}",
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


def test_inspector_decodes_every_image_and_counts_corrupt_and_truncated_files(data_dir, tmp_path, capsys) -> None:
    records = mixed_records(8)  # 6 with an image, 2 text-only
    path = write_dataset(tmp_path / "data", records)
    folder = path.parent
    images = [folder / entry["image"] for entry in records if "image" in entry]
    images[0].write_bytes(images[0].read_bytes()[: images[0].stat().st_size // 2])  # a truncated PNG
    Image.open(images[1]).convert("RGB").save(buffer := io.BytesIO(), format="JPEG")
    images[1].write_bytes(buffer.getvalue()[:-200])  # a truncated JPEG
    images[2].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))  # not an image at all
    args = ["n=0", "color=never", "stage=finetune", "experiment=none", "data=llava", f"data.image_folder={folder}",
            f"data.sets.finetune.train={path}", *small_overrides(data_dir, tmp_path / "run", shapes=False)]
    main(args)
    out = capsys.readouterr().out
    assert "8 records: 5 good, 3 bad (every image decoded)" in out
    assert re.search(r"^  corrupt_image +3 ", out, re.MULTILINE)
    assert all(f"image does not decode: {image}" in out for image in images[:3])
    main([*args, "decode=false"])  # only whether each file exists, as training checks before it starts
    assert "8 records: 8 good, 0 bad (images not decoded" in capsys.readouterr().out
