"""Entry point: ``python train.py [hydra overrides]``. With no overrides it runs the embedded demo. The same
command installed is ``llava-train`` (``llava_pl/cli_train.py``)."""

from llava_pl.cli_train import main

if __name__ == "__main__":
    main()
