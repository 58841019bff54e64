"""Sharded checkpoints as one Lightning checkpoint file: ``python -m llava_pl.checkpoint.consolidate DIR FILE``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from llava_pl.checkpoint.atomic import atomic_path
from llava_pl.checkpoint.sharded import load_checkpoint


def consolidate(path: str | Path, out: str | Path) -> Path:
    """Writes the checkpoint at ``path`` as one ``.ckpt`` file at ``out`` (atomically)."""
    checkpoint = load_checkpoint(path)
    out = Path(out)
    with atomic_path(out) as partial, partial.open("wb") as file:
        torch.save(checkpoint, file)
    return out


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m llava_pl.checkpoint.consolidate SHARDED_CHECKPOINT_DIR OUT.ckpt")
    print(f"consolidated to {consolidate(sys.argv[1], sys.argv[2])}")


if __name__ == "__main__":
    main()
