"""One process per run directory.

``RunLock(run_dir)`` takes an exclusive ``flock`` on ``run_dir/.lock`` and writes its
owner (pid, host, start time) into it.  The kernel releases the lock when the owner
exits, however it exits (SIGKILL included), so a lock left by a dead process is stale by
construction: the next process takes it and says whose it was.  A second live process
gets :class:`RunLocked` naming the owner, before it has touched any file of the run.

On file systems without ``flock`` the owner record is the lock: a record of a process
on this host that no longer exists is stale; one from another host is respected (the
message says which file to delete when that run is gone).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class RunLocked(RuntimeError):
    """Another live process holds the run directory."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(owner: dict) -> str:
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, started {when}"


class RunLock:
    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None
        #: the previous owner when a stale lock was taken over (for the caller to report)
        self.stale_owner: dict | None = None

    def _read_owner(self) -> dict:
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise RunLocked(f"run directory {self.path.parent} is in use by {_describe(self._read_owner())}; "
                                "wait for it to finish (or stop it) and run again") from None
            # no flock on this file system: the owner record decides
            owner = self._read_owner()
            if owner and not self._owner_gone(owner):
                os.close(fd)
                raise RunLocked(f"run directory {self.path.parent} is in use by {_describe(owner)} (per {self.path}; "
                                "delete that file if the run is gone)") from None
        owner = self._read_owner()
        if owner.get("pid") is not None:
            self.stale_owner = owner
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    @staticmethod
    def _owner_gone(owner: dict) -> bool:
        return owner.get("host") == socket.gethostname() and not _pid_alive(int(owner.get("pid", -1)))

    def stale_message(self) -> str | None:
        if self.stale_owner is None:
            return None
        return f"note: took over the stale lock of {_describe(self.stale_owner)} (that process is gone)"

    def release(self) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)   # an empty record: released cleanly
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()
