"""SQLite serves one bridge process: a second ``bridge run`` on the same file refuses.

Two processes on one SQLite file would both run (SQLite's own locking lets them), but the
bridge's SQLite paths rely on being the file's only writer (the inbox's backlog is tracked
in memory, for one). An OS lock on a file next to the database says who runs on it: the
kernel drops it when its process ends however it ends (SIGKILL included), so a crashed
bridge never blocks its own restart. Several processes: PostgreSQL (README "High
availability").
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy.engine import make_url


class DatabaseInUse(Exception):
    """Another process runs on this SQLite database; the message says which and why."""


def lock_path(url: str) -> Path | None:
    """The lock file of a SQLite database file (None: not SQLite, or in memory)."""
    parsed = make_url(url)
    if not parsed.get_backend_name().startswith("sqlite"):
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        return None
    return Path(database).resolve().with_name(Path(database).name + ".lock")


class SingleProcessLock:
    def __init__(self, url: str) -> None:
        self.path = lock_path(url)
        self._fd: int | None = None

    def acquire(self) -> None:
        if self.path is None or self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            database = self.path.with_name(self.path.name.removesuffix(".lock"))
            raise DatabaseInUse(
                f"another bridge process (pid {holder}) is running on the SQLite database "
                f"{database} (it holds the lock {self.path}); SQLite serves one bridge "
                "process only: stop that one first, or run several processes on PostgreSQL "
                "(database.url; see the README's \"High availability\")") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            # Unlocked by closing; the file stays (removing it would race a starting process
            # that opened it already and would lock a file nobody else sees).
            os.close(self._fd)
            self._fd = None
