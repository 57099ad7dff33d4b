"""Processes the labs start and stop: spawned into namespaces, outliving the command
that started them, found again by the namespace they run in."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from weft.lab import netns


def spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """A long-running process (in a namespace by its `nsenter` prefix) that outlives
    this command, its output appended to `log`; returns its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    return proc.pid


def alive(pid: int) -> bool:
    """Running, and not a zombie (whose parent, maybe not this process, has not reaped it)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def processes_in(namespaces: list[str]) -> set[int]:
    """Processes whose network namespace is one of `namespaces`."""
    wanted = set()
    for name in namespaces:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(netns.path(name))
            wanted.add((st.st_dev, st.st_ino))
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            st = os.stat(f"/proc/{entry}/ns/net")
            if (st.st_dev, st.st_ino) in wanted:
                found.add(int(entry))
    found.discard(os.getpid())
    return found


def stop(pids: set[int], grace: float = 5, sig: int = signal.SIGTERM) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
