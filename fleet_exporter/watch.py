"""Following the clusters directory without a signal (``serve --config.watch-interval``).

In Kubernetes the clusters directory is a Secret or ConfigMap volume, or a projected volume
of both. Kubelet updates it by writing every file into a fresh ``..<timestamp>`` directory
and renaming a new ``..data`` symlink over the old one; the per-key entries
(``name.yaml -> ..data/name.yaml``) stay as they are, and only what they resolve to
changes. Without this module only the replica someone sends SIGHUP or ``POST /-/reload``
would notice; inotify sees the rename of ``..data`` but not reliably what each per-key
symlink now resolves to, so this polls (Prometheus' file service discovery, too, re-reads
its files every ``refresh_interval`` besides watching them).

Every ``interval`` seconds it takes a cheap signature of the directory: the listing, each
symlink's target, and the inode, size, mtime and ctime of what each entry resolves to
(``os.scandir`` and one ``stat`` per entry, in a worker thread; no file is opened). When the
signature differs from the last one, the fleet reloads exactly as on SIGHUP. The reload
reads the contents and fingerprints them, so only clusters whose kubeconfig or settings
really changed lose their cache; a change that changes nothing (a ``touch``) costs one
reading of the files and is logged at debug level only.

Cost, with 500 kubeconfigs in a kubelet-style volume: the signature takes about 1 ms of CPU,
a whole check in the idle server about 3 ms (README "fleet.yaml"), so the default interval
costs about 0.03 % of a core.

A reload that fails (a fleet.yaml that does not parse) keeps the running configuration and
is not retried until the directory changes again. The last check's time and the reloads by
trigger, in the exporter's own metrics, show that a replica still follows; a directory that
cannot be read is logged once when it starts failing and once when it recovers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError

if TYPE_CHECKING:
    from .selfmetrics import SelfMetrics

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 10.0  # seconds; README "fleet.yaml" has the end-to-end delay

# One entry: name, symlink target (None for a plain file), then inode, size, mtime and
# ctime (ns) of what it resolves to (all -1 for a broken symlink).
Entry = tuple[str, str | None, int, int, int, int]
Signature = tuple[Entry, ...]


def signature(directory: Path) -> Signature:
    """What the directory holds, cheaply: changes whenever an entry is added, removed,
    replaced, re-pointed or written. Raises OSError when the directory cannot be listed."""
    entries: list[Entry] = []
    with os.scandir(directory) as it:
        for e in it:
            target = None
            if e.is_symlink():
                try:
                    target = os.readlink(e.path)
                except OSError:
                    target = "?"
            try:
                st = e.stat()  # follows symlinks: the file behind ..data
            except OSError:
                entries.append((e.name, target, -1, -1, -1, -1))
                continue
            entries.append((e.name, target, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    entries.sort()
    return tuple(entries)


class Watch:
    """Checks ``directory`` every ``interval`` seconds and calls ``reload`` after a change."""

    def __init__(
        self,
        directory: Path,
        interval: float,
        reload: Callable[[], Awaitable[object]],
        metrics: SelfMetrics,
    ):
        self.directory = Path(directory)
        self.interval = interval
        self._reload = reload
        self._metrics = metrics
        self._last: Signature | None = None
        self._failing = False
        metrics.watch_interval.set(interval)

    async def baseline(self) -> None:
        """The signature to compare with; taken before the fleet first reads the
        directory, so a change made while it loads is seen at the first check."""
        try:
            self._last = await asyncio.to_thread(signature, self.directory)
        except OSError:
            self._last = None  # the fleet's own start says what is wrong
        else:
            self._metrics.watch_time.set(time.time())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def check(self) -> bool:
        """One check; True when the directory changed and a reload was run."""
        try:
            current = await asyncio.to_thread(signature, self.directory)
        except OSError as e:
            if not self._failing:
                self._failing = True
                log.error(
                    "cannot check %s for changes: %s; still trying every %gs",
                    self.directory,
                    e.strerror or e,
                    self.interval,
                )
            return False
        if self._failing:
            self._failing = False
            log.info("%s can be checked for changes again", self.directory)
        self._metrics.watch_time.set(time.time())
        if current == self._last:
            return False
        self._last = current
        try:
            await self._reload()
        except ConfigError:
            pass  # logged by the fleet, which keeps the running configuration
        except Exception:
            # A bug must not stop the watch: the next change is still applied.
            log.exception("reload after a change in %s failed unexpectedly", self.directory)
        return True
