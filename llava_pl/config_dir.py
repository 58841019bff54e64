"""Where the Hydra configs live: ``llava_pl/conf`` inside the package (the checkout's ``conf`` links to it), so an
installed wheel finds them from any working directory."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent / "conf"
