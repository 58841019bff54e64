"""Entry point: ``python train.py [hydra overrides]``. With no overrides it runs the embedded demo."""

import hydra
from omegaconf import DictConfig

from llava_pl.train import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
