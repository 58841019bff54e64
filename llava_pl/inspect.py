"""Shows training samples as the model sees them, and every bad sample of the data:

    python -m llava_pl.inspect                                  # the demo's first stage
    python -m llava_pl.inspect data=llava data.image_folder=... data.sets.finetune.train=mix665k.json \\
        stage=finetune model=llava-1.5-7b n=5

Arguments are the training config's overrides (``conf/train.yaml``), plus ``n=`` (samples shown, default 5),
``split=train|val``, ``color=auto|always|never`` and ``decode=true|false``. The first selected stage's data and
template are read: each sample's text with image spans collapsed (``<image x576>``) and the supervised spans
highlighted (green, or ``[[...]]`` without colour), its token counts, then the bad-sample report of the whole file.
With ``decode=true`` (the default) the report decodes every image (in ``data.num_workers`` processes), so corrupt
and truncated files are counted too; ``decode=false`` only checks that each image file exists, as training does
before it starts. The model is built on the meta device only to learn its tokens per image and image processor:
no weights are read.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from llava_pl.cli import answer_help, boolean, choice, main_argv, parse_key_values
from llava_pl.config_dir import CONF_DIR
from llava_pl.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from llava_pl.data.bad_samples import REASONS
from llava_pl.data.conversation import SampleError
from llava_pl.data.dataset import LlavaDataset
from llava_pl.data.decode_check import decode_images
from llava_pl.data.images import ImageTransform
from llava_pl.data.lengths import cached_scan
from llava_pl.data.mixture import source_specs
from llava_pl.data.options import stage_image_aspect
from llava_pl.errors import ConfigError, reports_user_errors
from llava_pl.model.build import build_empty_model
from llava_pl.resolvers import register_resolvers
from llava_pl.train import selected_stages
from llava_pl.validate import check_experiment

OWN_KEYS = {"n": int, "split": choice("train", "val"), "color": choice("auto", "always", "never"), "decode": boolean}
USAGE = "python -m llava_pl.inspect [TRAINING OVERRIDES ...] [n=5] [split=train|val] [color=auto] [decode=true]"
GREEN, RESET = "\033[1;32m", "\033[0m"
LISTED = 20  # bad samples listed one by one; the rest are counted


def spans(tokenizer, input_ids: list[int], labels: list[int]) -> Iterator[tuple[str, str]]:
    """``(kind, text)`` runs: ``image`` (collapsed), ``supervised`` or ``context``."""
    position = 0
    while position < len(input_ids):
        if input_ids[position] == IMAGE_TOKEN_ID:
            end = position
            while end < len(input_ids) and input_ids[end] == IMAGE_TOKEN_ID:
                end += 1
            yield "image", f"<image x{end - position}>"
        else:
            supervised = labels[position] != IGNORE_INDEX
            end = position
            while (end < len(input_ids) and input_ids[end] != IMAGE_TOKEN_ID
                   and (labels[end] != IGNORE_INDEX) == supervised):
                end += 1
            yield ("supervised" if supervised else "context"), tokenizer.decode(input_ids[position:end])
        position = end


def render(tokenizer, input_ids: list[int], labels: list[int], color: bool) -> str:
    parts = []
    for kind, text in spans(tokenizer, input_ids, labels):
        if kind == "supervised":
            parts.append(f"{GREEN}{text}{RESET}" if color else f"[[{text}]]")
        else:
            parts.append(text)
    return "".join(parts)


def describe(dataset: LlavaDataset, index: int, color: bool) -> str:
    conversation, tokens = dataset.encode(index)
    ids, labels = tokens.input_ids, tokens.labels
    images = sum(token == IMAGE_TOKEN_ID for token in ids)
    supervised = sum(label != IGNORE_INDEX for label in labels)
    head = (f"── sample {conversation.sample_id} (#{index}): {len(ids)} tokens = {len(ids) - images} text + {images} "
            f"image ({len(conversation.images)} image(s)); {supervised} supervised")
    return f"{head}\n{render(dataset.tokenizer, ids, labels, color)}"


def bad_report(dataset: LlavaDataset, cache_dir: str | None = None, workers: int = 0, decode: bool = True) -> str:
    result = cached_scan(dataset, cache_dir, workers)  # the pass training makes too, sharing its cache
    if decode:
        result = decode_images(dataset, result, workers)
    good = len(dataset) - len(result.bad)
    kept = result.lengths[[i for i in range(len(dataset)) if i not in {b[0] for b in result.bad}]]
    checked = "every image decoded" if decode else "images not decoded, only found: decode=true decodes them"
    lines = [f"{len(dataset)} records: {good} good, {len(result.bad)} bad ({checked})"]
    if len(kept):
        lines.append(f"tokens per sample: min {kept.min()}, mean {kept.mean():.0f}, max {kept.max()}; "
                     f"{int(result.has_image.sum())} with images, {good - int(result.has_image.sum())} text-only")
    if result.bad:
        counts = result.report().as_dict()
        lines += [f"  {reason:<17} {count:>7}  ({REASONS[reason]})" for reason, count in counts.items()]
        lines += [f"  {error}" for error in result.errors()[:LISTED]]
        if len(result.bad) > LISTED:
            lines.append(f"  ... and {len(result.bad) - LISTED} more")
    return "\n".join(lines)


def inspect_data(cfg: DictConfig, n: int = 5, split: str = "train", color: bool = False,
                 out: TextIO | None = None, decode: bool = True) -> None:
    out = out or sys.stdout
    for step in cfg.data.get("prepare") or []:
        instantiate(step)
    stage = selected_stages(cfg)[0]
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    model = build_empty_model(cfg.model, tokenizer)  # meta device: sizes only
    template = instantiate(stage.template)
    data_set = cfg.data.sets[stage.dataset]
    entry = data_set.get(split)
    if entry is None:
        raise ConfigError(f"data.sets.{stage.dataset}.{split} is not set")
    transform = ImageTransform(model.vision.image_processor, stage_image_aspect(cfg.data, stage))
    entry = OmegaConf.to_container(entry, resolve=True) if OmegaConf.is_config(entry) else entry
    for spec in source_specs(entry, cfg.data.get("image_folder")):
        if not Path(spec.path).exists():
            print(f"{spec.path}: a stream URL, or missing; the inspector reads JSON files and shard folders", file=out)
            continue
        dataset = LlavaDataset(spec.path, spec.image_folder, tokenizer, template, transform, model.tokens_per_image,
                               max_length=stage.max_length, on_bad_sample="skip")
        print(f"═══ {spec.path} (stage {stage.name}, template {type(template).__name__}, "
              f"max_length {stage.max_length}, {model.tokens_per_image} tokens per image)", file=out)
        shown = 0
        for index in range(len(dataset)):
            if shown == n:
                break
            try:
                print(describe(dataset, index, color), file=out)
                shown += 1
            except SampleError:
                continue  # listed in the report below
        report = bad_report(dataset, cfg.data.get("length_cache"), cfg.data.get("num_workers", 0), decode)
        print(f"═══ bad samples of {spec.path}\n{report}", file=out)


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    args = main_argv(argv)
    answer_help(args, __doc__ + f"\nusage: {USAGE}")
    own, overrides = parse_key_values(args, OWN_KEYS, USAGE, passthrough=lambda key: key not in OWN_KEYS)
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)  # unknown keys stop here
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.cwd} in paths resolves as in training
    check_experiment(cfg, HydraConfig.get().runtime.choices)  # the demo's settings with other data: refused, as in training
    color = {"always": True, "never": False}.get(own.get("color", "auto"), sys.stdout.isatty())
    inspect_data(cfg, own.get("n", 5), own.get("split", "train"), color, decode=own.get("decode", True))


if __name__ == "__main__":
    main()
