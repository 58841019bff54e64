"""Offline builder of the byte-level BPE ChatML tokenizer used by the embedded demo, trained on the text corpus
of its data set (``llava_pl.demo.dataset``).

    python -m llava_pl.demo.tokenizer --out data/generated/tokenizer --corpus data/generated/shapes/corpus.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

FORMAT_VERSION = 1
STAMP_FILE = "llava_pl_tokenizer.json"

PAD_TOKEN = "<pad>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, IM_START, IM_END, IMAGE_TOKEN)

# Role names only occur in the chat template, not in the corpus; training on them keeps them single tokens.
_EXTRA_TRAINING_LINES: tuple[str, ...] = ("system", "user", "assistant")

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_lines(corpus: pathlib.Path) -> list[str]:
    return [line for line in corpus.read_text(encoding="utf-8").split("\n") if line]


def _train_backend(lines: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        # The full byte alphabet makes any UTF-8 text encodable, not just the corpus characters.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(lines) + list(_EXTRA_TRAINING_LINES), trainer=trainer)
    return tok


def _verify(out: pathlib.Path, lines: list[str]) -> None:
    tok = AutoTokenizer.from_pretrained(out)
    for special in SPECIAL_TOKENS:
        ids = tok.encode(f"a{special}b", add_special_tokens=True)
        if tok.convert_tokens_to_ids(special) not in ids or len(tok.encode(special)) != 1:
            raise RuntimeError(f"special token {special!r} is not a single token")
    sample = f"{IMAGE_TOKEN}\nWhat color is the circle?{IM_END}"
    ids = tok.encode(sample)
    if ids.count(tok.convert_tokens_to_ids(IMAGE_TOKEN)) != 1 or ids[-1] != tok.convert_tokens_to_ids(IM_END):
        raise RuntimeError("special tokens are split by the tokenizer")
    if tok.decode(ids) != sample:
        raise RuntimeError("tokenizer does not round-trip the sample text")
    if tok.pad_token != PAD_TOKEN or tok.eos_token != IM_END or tok.bos_token is not None:
        raise RuntimeError("unexpected pad/eos/bos tokens after reloading")
    encoded = tok(lines, add_special_tokens=True)["input_ids"]
    for line, line_ids in zip(lines, encoded):
        if tok.decode(line_ids) != line:
            raise RuntimeError(f"tokenizer does not round-trip corpus line {line!r}")


def build_demo_tokenizer(
    out_dir: str | os.PathLike, corpus_file: str | os.PathLike, vocab_size: int = 1024
) -> pathlib.Path:
    """Train (or reuse, if already built from the same corpus and parameters) the demo tokenizer in out_dir."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError("vocab_size must cover the 256 byte tokens plus the special tokens")
    out = pathlib.Path(out_dir)
    corpus = pathlib.Path(corpus_file)
    stamp = {"format_version": FORMAT_VERSION, "vocab_size": vocab_size, "corpus_sha256": _sha256(corpus)}
    stamp_path = out / STAMP_FILE
    if (out / "tokenizer.json").is_file() and stamp_path.is_file():
        try:
            if json.loads(stamp_path.read_text(encoding="utf-8")) == stamp:
                return out
        except ValueError:
            pass
    if stamp_path.exists():
        stamp_path.unlink()

    lines = _read_lines(corpus)
    backend = _train_backend(lines, vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        bos_token=None,
        extra_special_tokens=[IM_START, IMAGE_TOKEN],
        padding_side="right",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    _verify(out, lines)

    tmp = stamp_path.with_name(stamp_path.name + ".tmp")
    tmp.write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, stamp_path)  # written last: its presence marks a complete, verified tokenizer
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--corpus", required=True, help="text file with one training string per line")
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args(argv)
    print(build_demo_tokenizer(args.out, args.corpus, args.vocab_size))


if __name__ == "__main__":
    main()
