"""The run folder: one training run writes to it at a time, and its per-step log survives kills.

* :class:`RunLock` is a lock file, ``OUT/.lock``, held while a run trains into ``OUT``. A second
  run into the same folder is refused with :class:`RunDirBusyError`. The lock is an OS file lock
  (``flock``), so the kernel releases it when its process dies, even by SIGKILL; the pid and host
  written into the file are there to name the holder, and a file left by a process that no longer
  runs is taken over with a note.
* :func:`open_log` opens ``log.jsonl`` line-buffered (every record reaches the OS as it is
  written) and, on resume, keeps exactly the records of the steps the checkpoint includes, so
  after any number of kills and resumes the log holds every step once.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:            # Windows: a pid-checked lock file instead (see RunLock.acquire)
    fcntl = None

LOCK = ".lock"


class RunDirBusyError(RuntimeError):
    """Another live process is training into the same run folder; the message names it."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True when that cannot be told)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True            # it exists but belongs to another user
    return True


def _holder(text: str) -> dict:
    try:
        return json.loads(text)
    except ValueError:
        return {}


def _describe(holder: dict) -> str:
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"


class RunLock:
    """``OUT/.lock``: :meth:`acquire` it before writing into ``OUT``, :meth:`release` it after."""

    def __init__(self, out_dir):
        self.path = Path(out_dir) / LOCK
        self.fd = None

    def _busy(self, holder: dict):
        return RunDirBusyError(
            f"{self.path.parent} is in use by another training run ({_describe(holder)}); wait "
            f"for it to end or pass another --out. (If no such run exists, delete {self.path}.)")

    def check(self):
        """Raise :class:`RunDirBusyError` if another process holds the lock now; takes nothing."""
        if fcntl is None or not self.path.exists():
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._busy(_holder(self.path.read_text())) from None
        finally:
            os.close(fd)

    def acquire(self) -> str | None:
        """Take the lock; returns a note when a dead process's lock file was taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return self._acquire_by_pid()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy(_holder(self.path.read_text())) from None
            try:                 # the holder may have released (deleted) the file meanwhile
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        previous = _holder(os.read(fd, 4096).decode(errors="replace"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        self.fd = fd
        if previous:
            return (f"note: taking over {self.path}, left by {_describe(previous)}, which "
                    f"ended without releasing it")
        return None

    def _acquire_by_pid(self) -> str | None:
        note = None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                previous = _holder(self.path.read_text())
                if previous.get("host") == socket.gethostname() and pid_alive(previous.get("pid", -1)):
                    raise self._busy(previous) from None
                self.path.unlink(missing_ok=True)
                note = f"note: taking over {self.path}, left by {_describe(previous)}, which no longer runs"
                continue
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
            self.fd = fd
            return note
        raise self._busy({})

    def release(self):
        if self.fd is not None:
            self.path.unlink(missing_ok=True)       # while still held: no one locks a stale file
            os.close(self.fd)
            self.fd = None


def read_records(path) -> list[dict]:
    """The JSON records of a log; a last line cut short by a kill is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def open_log(path, keep_before: int):
    """Open the per-step log for appending, line-buffered. It keeps the records of steps before
    ``keep_before`` (the checkpoint's step on resume; 0 on a fresh run) and drops the rest: the
    steps after the checkpoint are trained again. The trimmed log is written atomically."""
    path = Path(path)
    keep = [r for r in read_records(path) if r.get("step", keep_before) < keep_before]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(tmp, path)
    return open(path, "a", buffering=1)


def sync(file):
    """Flush ``file`` to the disk (before a checkpoint claims the steps it holds)."""
    file.flush()
    os.fsync(file.fileno())
