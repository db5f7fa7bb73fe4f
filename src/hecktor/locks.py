"""One writer per output: a lock file beside the output, naming the process that holds it.

Two commands writing one folder would delete or overwrite each other's results, so every command
that writes a folder (``prepare``, ``predict``, ``export``, ``register``, the stages) holds its
lock while it works, and a second writer stops at once (exit 2) naming the holder. The lock is an
advisory ``flock`` on ``.<name>.lock`` beside the output: the kernel drops it when its holder
dies, however it dies, so a lock left by a killed process is stale by construction; the next
writer takes it over and says so. The file holds the holder's command, process id, host and
start time, for that message.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from hecktor.errors import UserError

log = logging.getLogger(__name__)


MODEL = "mlflow model"  # the writer of folders written by a registered model (pyfunc, REST)


class LockedError(UserError):
    """Another process is writing the output: one writer per output."""


def who(command: str) -> str:
    """A writer as messages name it."""
    return "a registered hecktor model" if command == MODEL else f"`hecktor {command}`"


def host_id() -> str:
    """A short, stable name of this machine, for file names (host names can be long or odd)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def gone(host: str | None, pid: str | int | None) -> bool:
    """Whether the process a name records (:func:`host_id`, pid) ran on this machine and runs
    no more: what it left behind is nobody's."""
    return host == host_id() and pid is not None and not alive(int(pid))


def lock_file(path: Path | str) -> Path:
    """Where the lock of output ``path`` lives: beside it, so that it survives the output being
    replaced by a rename."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def holder(path: Path | str) -> dict | None:
    """What the lock file of output ``path`` says of its holder (None: no lock file)."""
    try:
        data = json.loads(lock_file(path).read_text() or "{}")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else {}


def _describe(info: dict | None) -> str:
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return (f"{who(str(info.get('command', '?')))} (process {info.get('pid', '?')} on "
            f"{info.get('host', '?')}, since {since})")  # fmt: skip


@contextlib.contextmanager
def writing(path: Path | str, command: str) -> Iterator[None]:
    """Hold the one-writer lock of output ``path`` (a folder or a file) while ``command`` writes
    it; raise :class:`LockedError` naming the holder when another process holds it."""
    path = Path(path)
    target = lock_file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = None
            for _ in range(20):  # the holder may not have written its name yet
                info = holder(path)
                if info:
                    break
                time.sleep(0.05)
            raise LockedError(
                f"{path}: {_describe(info)} is writing it; wait for it to end, or choose "
                "another output"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(target).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the previous holder removed the file as we opened it: open it anew
            break
        os.close(fd)
    else:
        raise LockedError(f"{path}: could not take its lock {target}")
    try:
        previous = holder(path)
        if previous:  # a holder that ended normally removed its file: this one was killed
            log.warning("%s: %s left its lock when it stopped; taken over", path,
                        _describe(previous))  # fmt: skip
        info = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                "since": time.time()}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            target.unlink()
        os.close(fd)  # releases the lock
