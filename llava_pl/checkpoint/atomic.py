"""Atomic writes: a file or folder appears under its final name only once it is complete and on disk.

Everything is written to ``<name>.partial`` beside the target, flushed with ``fsync`` and renamed over the
target (``os.replace`` is atomic on one file system). A process killed part-way leaves at most a
``.partial`` leftover and the previous file untouched; ``remove_partial_files`` sweeps the leftovers.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".partial"
# "No space left", "quota exceeded" and "file too large" (a file-size limit) all mean: the disk took no more.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class DiskFullError(OSError):
    """Writing stopped for lack of space; nothing was replaced."""


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _fsync(child)
    _fsync(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**30:.2f} GiB"
    except OSError:
        return "unknown space"


def _no_space(error: BaseException) -> OSError | None:
    """The out-of-space ``OSError`` behind ``error``, if any: ``torch.save`` reports a failed write as a
    ``RuntimeError`` ("unexpected pos …") raised while handling the ``OSError``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in NO_SPACE_ERRNOS:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _disk_full(error: OSError, path: Path, hint: str) -> DiskFullError:
    message = (
        f"out of disk space writing {path} ({error.strerror}; {_free_space(path.parent)} free there). "
        f"Nothing was replaced: the previous {path.name}, if any, is intact. {hint}".strip()
    )
    return DiskFullError(error.errno, message)


@contextmanager
def atomic_path(path: str | Path, hint: str = "Free some space or write elsewhere.") -> Iterator[Path]:
    """Yields a temporary path to write to (a file or a folder); on success it replaces ``path``.

    An ``OSError`` meaning the disk is full is raised again as ``DiskFullError`` naming the file and ``hint``
    (what the user can change); any error removes the partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    _remove(partial)
    try:
        yield partial
        _fsync_tree(partial)
        if partial.is_dir() and path.is_dir():
            # A folder cannot be renamed over a non-empty one: move the old one aside first. A kill in between
            # leaves the complete new folder as <name>.partial and the old one as <name>.old.
            old = path.with_name(path.name + ".old")
            _remove(old)
            os.replace(path, old)
            os.replace(partial, path)
            _remove(old)
        else:
            os.replace(partial, path)
        _fsync(path.parent)
    except BaseException as error:
        _remove(partial)
        no_space = _no_space(error)
        if no_space is not None:
            raise _disk_full(no_space, path, hint) from error
        raise


def remove_partial_files(folder: str | Path) -> list[Path]:
    """Removes the leftovers of writes that were killed part-way; returns what it removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    leftovers = sorted(folder.glob(f"*{PARTIAL_SUFFIX}"))
    for leftover in leftovers:
        _remove(leftover)
    return leftovers
