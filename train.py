"""Entry point: ``python train.py [hydra overrides]``. With no overrides it runs the embedded demo."""

import hydra
from omegaconf import DictConfig

from llava_pl.errors import reports_user_errors
from llava_pl.train import run


@hydra.main(version_base="1.3", config_path="llava_pl/conf", config_name="train")
@reports_user_errors  # a bad config, sample or path: `error: <message>`, exit 1 (HYDRA_FULL_ERROR=1: traceback)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
