"""What a run was made from: appended to ``<run_dir>/run_info.json`` at every launch (a resume is a launch).

Each record holds the installed package versions, the git commit of the code (and whether the tree had
uncommitted changes), and the SHA-256 of every data file the config names under ``data.sets``. The
resolved config is ``<run_dir>/config.yaml``. A resumed launch whose data or code differ from the first
launch's is logged as a warning: its losses will not match an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from llava_pl.checkpoint.atomic import atomic_path

log = logging.getLogger(__name__)
RUN_INFO = "run_info.json"
SOURCE_DIR = Path(__file__).resolve().parent


def package_versions() -> dict[str, str]:
    versions = {dist.metadata["Name"]: dist.version for dist in metadata.distributions() if dist.metadata["Name"]}
    return dict(sorted(versions.items(), key=lambda item: item[0].lower()))


def git_state(folder: Path = SOURCE_DIR) -> dict[str, Any] | None:
    """The commit checked out where the code lives, and whether tracked files differ from it; None outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(changed)}


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def data_files(cfg: DictConfig) -> list[Path]:
    """The files named under ``data.sets`` (annotation files; the images of ``data.image_folder`` are not
    hashed: hashing a folder of half a million images would cost minutes at every launch)."""
    sets = OmegaConf.to_container(cfg.data.get("sets") or {}, resolve=True)
    paths = {Path(value) for entry in sets.values() for value in (entry or {}).values() if isinstance(value, str)}
    return sorted(path for path in paths if path.is_file())


def launch_record(cfg: DictConfig) -> dict[str, Any]:
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "host": platform.node(),
        "python": platform.python_version(),
        "seed": cfg.get("seed"),
        "ckpt_path": cfg.get("ckpt_path"),
        "git": git_state(),
        "packages": package_versions(),
        "data": {str(path): file_sha256(path) for path in data_files(cfg)},
    }


def _differences(first: dict[str, Any], current: dict[str, Any]) -> list[str]:
    changed = [f"data file {path}" for path, digest in current["data"].items()
               if first["data"].get(path, digest) != digest]
    if (first.get("git") or {}).get("commit") != (current.get("git") or {}).get("commit"):
        changed.append("git commit")
    changed += [f"package {name}" for name in ("torch", "lightning", "transformers")
                if first["packages"].get(name) != current["packages"].get(name)]
    return changed


@rank_zero_only
def record_run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Appends this launch to ``run_info.json`` and returns its record."""
    path = run_dir / RUN_INFO
    launches = json.loads(path.read_text())["launches"] if path.is_file() else []
    record = launch_record(cfg)
    if launches:
        changed = _differences(launches[0], record)
        if changed:
            log.warning(f"resuming {run_dir} with a different {', '.join(changed)} than its first launch: "
                        "the losses will not match an uninterrupted run")
    launches.append(record)
    with atomic_path(path) as partial:
        partial.write_text(json.dumps({"launches": launches}, indent=1))
    return record
