"""One run per store: a lock file inside the store, naming the process that holds it.

The lock is taken with an exclusive create, so two runs that start together cannot both
get it. A lock left by a process that died (``kill -9``) on this machine is taken over;
one held by a live process, or by a process on another machine, is refused with who
holds it.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from .formats import StoreError

LOCK_NAME = ".napari-qlty.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


class StoreLock:
    """``with StoreLock(store_path):`` holds the store for this process."""

    def __init__(self, store: str | os.PathLike) -> None:
        self.path = Path(store) / LOCK_NAME
        self.held = False

    def acquire(self) -> StoreLock:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                    self.path.unlink(missing_ok=True)  # its process is gone: a stale lock of ours
                    continue
                who = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another run"
                raise StoreError(
                    f"{self.path.parent} is being written by {who}; wait for it to finish or stop it "
                    f"(if it is gone, delete {self.path})"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise StoreError(f"could not take the lock {self.path}")

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
