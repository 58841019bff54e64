"""Training's command line: ``llava-train [hydra overrides]`` (installed) and ``python train.py`` (a checkout) both
run this ``main``. With no overrides it runs the embedded demo."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from llava_pl.config_dir import CONF_DIR
from llava_pl.errors import reports_user_errors
from llava_pl.train import run
from llava_pl.validate import check_experiment


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@reports_user_errors  # a bad config, sample or path: `error: <message>`, exit 1 (HYDRA_FULL_ERROR=1: traceback)
def main(cfg: DictConfig) -> None:
    check_experiment(cfg, HydraConfig.get().runtime.choices)  # e.g. the demo's settings with a real model: refused
    run(cfg)


if __name__ == "__main__":
    main()
