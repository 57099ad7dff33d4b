"""Wait for a change under the `local` datastore's directories: inotify, else polling.

An agent that polled the store's revision every 0.2 s noticed a change 0.1 s late on
average and, with 2,000 objects, stat'ed 10,000 files a second doing it. inotify wakes
it at the write; a burst of writes (a thousand nodes joining) wakes it once, when the
burst settles, not a thousand times. A wake is only a hint: the caller compares
revisions to decide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

from inotify_simple import INotify, flags

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
SETTLE_SECONDS = 0.01  # a burst has settled after this long without an event
SETTLE_AT_MOST = 0.1  # but a steady stream of writes wakes the caller this often
# A file appears by link or rename, and goes by unlink or rename; a namespace's
# directory appears beside the others. Temporary files (not *.yaml) are left out.
MASK = flags.CREATE | flags.DELETE | flags.MOVED_TO | flags.MOVED_FROM | flags.DELETE_SELF


class Watch:
    """inotify watches on directories that exist now, opened before the caller reads
    the revision: a change made between that read and the wait still wakes it."""

    def __init__(self, directories: Iterable[Path]) -> None:
        self._inotify: INotify | None = None
        try:
            self._inotify = INotify()
        except OSError as err:  # out of inotify instances: poll instead
            log.debug("inotify unavailable (%s); polling the datastore", err)
            return
        for directory in directories:
            try:
                self._inotify.add_watch(directory, MASK)
            except OSError:
                continue  # not there (yet): its parent's watch sees it appear

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *_: object) -> None:
        if self._inotify is not None:
            self._inotify.close()

    def wait(self, timeout: float) -> None:
        """Return once a burst of changes has settled, or after `timeout` seconds."""
        if self._inotify is None:
            time.sleep(min(timeout, POLL_SECONDS))
            return
        if not self._changes(timeout):
            return
        settle_by = time.monotonic() + SETTLE_AT_MOST
        while time.monotonic() < settle_by and self._changes(SETTLE_SECONDS):
            pass

    def _changes(self, timeout: float) -> bool:
        """Whether an object or a directory changed within `timeout` seconds."""
        assert self._inotify is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            events = self._inotify.read(timeout=max(0, int(left * 1000)))
            if any(e.name.endswith(".yaml") or e.mask & (flags.ISDIR | flags.DELETE_SELF)
                   for e in events):
                return True
            if not events or left <= 0:
                return False
