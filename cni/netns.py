"""Run code inside another network namespace, on this thread only.

setns(2) moves only the calling thread, so the agent can serve many pods at
once from its threads, and netlink sockets opened while inside stay bound to
that namespace. pyroute2's own netns sockets fork a helper per socket; this
avoids the fork on the per-pod path.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """Switch this thread into the netns at `path`, and back on exit."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            try:
                _setns(own)
            except OSError:
                # A thread stranded in a pod's namespace would plumb the next pod
                # wrongly; stopping is the only safe answer.
                os._exit(70)
    finally:
        os.close(own)


def write_sysctl(name: str, value: str) -> None:
    """Write /proc/sys/<name> in the current thread's network namespace."""
    with open(f"/proc/sys/{name}", "w") as out:
        out.write(value)


def read_sysctl(name: str) -> str:
    with open(f"/proc/sys/{name}") as src:
        return src.read().strip()
