"""The resumable record of a generation run: one JSON line per finished (image id, kind), appended as each
finishes, so an interrupted run loses only the requests in flight and a rerun skips what is done."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

Key = tuple[str, str]  # (image id, kind)


class JournalLockedError(RuntimeError):
    """Another process is appending to the same journal."""


class Journal:
    """``<out>.journal.jsonl``: lines ``{"id", "kind", "record"}`` (accepted) or ``{"id", "kind", "rejected"}``.

    Each line is written whole and flushed to disk before the next request's result is taken. A line cut
    short by a kill is dropped (and cut off the file) when the journal is opened again. An exclusive lock keeps
    two runs from writing the same journal.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = self.path.open("a+b")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            self._file.close()
            raise JournalLockedError(f"{self.path} is in use by another make_instruct run") from error
        self.records: dict[Key, dict[str, Any]] = {}
        self.rejected: dict[Key, dict[str, Any]] = {}
        self.dropped_tail = self._load()

    def _load(self) -> bool:
        """Reads the finished keys; returns whether a torn last line was cut off."""
        self._file.seek(0)
        data = self._file.read()
        good_end = 0
        lines = data.splitlines(keepends=True)
        for number, line in enumerate(lines, start=1):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("no newline: the write was cut short")
                entry = json.loads(line)
                key = (str(entry["id"]), str(entry["kind"]))
            except (ValueError, KeyError, TypeError) as error:
                if number < len(lines):  # only the last line can be torn by a kill
                    raise ValueError(f"{self.path}:{number}: not a journal line ({error}); fix or delete it") from error
                break
            if "record" in entry:
                self.records[key] = entry["record"]
                self.rejected.pop(key, None)
            else:
                self.rejected[key] = entry
            good_end += len(line)
        if good_end < len(data):
            self._file.truncate(good_end)
            return True
        return False

    def _append(self, entry: dict[str, Any]) -> None:
        self._file.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def add(self, key: Key, record: dict[str, Any]) -> None:
        self._append({"id": key[0], "kind": key[1], "record": record})
        self.records[key] = record
        self.rejected.pop(key, None)

    def reject(self, key: Key, reason: str, detail: str, reply: str | None) -> None:
        """Notes a skipped request (it is tried again on the next run) with why, for the user to inspect."""
        entry = {"id": key[0], "kind": key[1], "rejected": reason, "detail": detail, "reply": reply}
        self._append(entry)
        self.rejected[key] = entry

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
