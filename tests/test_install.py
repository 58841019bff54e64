"""``pip install .`` (not editable) works from any directory: the wheel carries the configs, the console scripts run,
and nothing reads the checkout.

The wheel is built from a copy of the package and installed ``--no-deps`` into a fresh virtual environment that
sees this environment's packages through a ``.pth`` line (so its dependencies are there, but not this
environment's editable install of llava_pl, whose hook a ``.pth`` line does not run). Every command runs in an
empty folder with no ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCATE = """
import llava_pl
from hydra import compose, initialize_config_dir
from llava_pl.config_dir import CONF_DIR
with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    cfg = compose("train", overrides=["experiment=llava-1.5-7b"])
print(llava_pl.__file__, CONF_DIR, cfg.model.llm.name_or_path, sep="\\n")
"""
SCRIPTS = ("llava-train", "llava-evaluate", "llava-export", "llava-predict", "llava-chat", "llava-serve",
           "llava-inspect", "llava-to-wds", "llava-make-instruct")


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """A fresh environment with the built wheel installed: its folder, the environment variables to run in and an
    empty working directory outside the checkout."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    shutil.copytree(ROOT / "llava_pl", source / "llava_pl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(tmp / "dist"), str(source)], tmp, env)
    wheel = next((tmp / "dist").glob("llava_pl-*.whl"))

    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    python = venv / "bin" / "python"
    venv_site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         tmp, env).stdout.strip())
    (venv_site / "parent_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed",
         str(wheel)], tmp, env)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return venv, env, elsewhere


@pytest.mark.slow
def test_the_installed_package_runs_without_the_checkout(installed) -> None:
    venv, env, elsewhere = installed
    python = str(venv / "bin" / "python")
    where = run([python, "-c", LOCATE], elsewhere, env).stdout.splitlines()
    package_file, conf_dir = (Path(line).resolve() for line in where[:2])
    assert package_file.is_relative_to(venv.resolve()) and not package_file.is_relative_to(ROOT)
    assert conf_dir.is_relative_to(venv.resolve()) and (conf_dir / "train.yaml").is_file()
    assert where[2] == "lmsys/vicuna-7b-v1.5"  # experiment=llava-1.5-7b composed from the wheel's configs
    for script in SCRIPTS:
        assert (venv / "bin" / script).is_file(), script

    job = run(["llava-train", "--cfg", "job"], elsewhere, env).stdout
    assert "stage:" in job and "align:" in job  # the demo experiment's stages, composed from the wheel's configs
    assert "usage: python -m llava_pl.inspect" in run(["llava-inspect", "--help"], elsewhere, env).stdout
    assert "python -m llava_pl.evaluate model=PATH" in run([python, "-m", "llava_pl.evaluate", "--help"], elsewhere,
                                                           env).stdout
    assert not any(elsewhere.iterdir()), "a command wrote into the working directory"
