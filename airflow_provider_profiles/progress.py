"""Progress lines for long work in the task log: how much is done (of the total, where known), the
rate and the time left, at most once every ``interval`` seconds, then one closing line.

One reporter for every long step: a prepare writing rows, a file upload sending bytes, the
Gainsight PX loader's records. The clock is a parameter, so tests advance it instead of sleeping.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds)))


class Progress:
    """``advance(n)`` as work is done; a line every ``interval`` seconds (None: no lines at all).

    :param total: the amount expected (rows, bytes...), None when unknown: no share and no ETA.
    :param label: what the lines start with, e.g. ``"prepare progress"``.
    :param doing: the verb while running (``writing``); ``done_verb`` the closing one (``wrote``).
    :param detail: extra text for each line (e.g. counts by outcome), called when a line is logged.
    :param already: the amount an earlier try did (a resumed load): counted as done, not in the rate.
    """

    def __init__(self, total: int | None, interval: float | None, *, unit: str = "rows",
                 label: str = "progress", doing: str = "writing", done_verb: str = "wrote",
                 detail: Callable[[], str] | None = None, log: logging.Logger | logging.LoggerAdapter | Any = log,
                 clock: Callable[[], float] = time.monotonic, already: int = 0):
        self.total, self.interval, self.done, self.already = total, interval, already, already
        self.unit, self.label, self.doing, self.done_verb = unit, label, doing, done_verb
        self.detail, self.log, self.clock = detail, log, clock
        self.started = self.last = clock()
        self._lock = threading.Lock()  # uploads may be read from another thread than the one counting

    def advance(self, amount: int) -> None:
        with self._lock:
            self.done += amount
            now = self.clock()
            if self.interval is None or now - self.last < self.interval:
                return
            self.last = now
        self._line(now)

    def _line(self, now: float) -> None:
        rate = (self.done - self.already) / max(now - self.started, 1e-9)
        extra = f"; {self.detail()}" if self.detail else ""
        if self.total is None:
            self.log.info("%s: %s, %s %s, %s %s/s%s", self.label, self.doing, f"{self.done:,}", self.unit,
                          f"{rate:,.0f}", self.unit, extra)
            return
        eta = (self.total - self.done) / rate if rate else 0.0
        self.log.info("%s: %s, %s of %s %s (%.0f%%), %s %s/s, ETA %s%s", self.label, self.doing, f"{self.done:,}",
                      f"{self.total:,}", self.unit, 100 * self.done / max(self.total, 1), f"{rate:,.0f}", self.unit,
                      duration(max(eta, 0.0)), extra)

    def finish(self) -> None:
        """The closing line (once something was done and lines are wanted)."""
        if self.interval is not None and self.done:
            elapsed = max(self.clock() - self.started, 1e-9)
            rate = (self.done - self.already) / elapsed
            extra = f"; {self.detail()}" if self.detail else ""
            self.log.info("%s: %s %s %s (100%%), %s %s/s%s", self.label, self.done_verb, f"{self.done:,}", self.unit,
                          f"{rate:,.0f}", self.unit, extra)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.finish()

    @staticmethod
    @contextlib.contextmanager
    def of_statements(connection: Any, what: str, interval: float | None, *, label: str = "prepare progress",
                      log: Any = log) -> Iterator[None]:
        """Logs a DuckDB connection's progress of the statements run meanwhile (``query_progress``) from a thread."""
        if interval is None:
            yield
            return
        stop, started = threading.Event(), time.monotonic()

        def watch() -> None:
            while not stop.wait(max(interval, 0.5)):
                share = connection.query_progress()
                if share is None or share < 0:
                    continue
                elapsed = time.monotonic() - started
                eta = elapsed * (100 - share) / share if share > 0 else None
                log.info("%s: %s, %.0f%% of the statement running, ETA %s", label, what, share,
                         duration(eta) if eta is not None else "unknown")

        watcher = threading.Thread(target=watch, name="prepare-progress", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()


class CountingReader:
    """A binary file whose reads advance a ``Progress`` by the bytes read (an upload streaming it)."""

    def __init__(self, handle: Any, progress: Progress):
        self._handle, self.progress = handle, progress
        self._start = _position(handle)

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        if data:
            self.progress.advance(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        """A rewind (a resent body, a size check) counts from where the reader now is."""
        position = self._handle.seek(offset, whence)
        self.progress.done = max(0, position - (self._start or 0))
        return position

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.read(64 * 1024), b"")

    def __getattr__(self, name: str) -> Any:  # seek, tell, name, fileno... for the HTTP client's size checks
        return getattr(self._handle, name)


def _position(handle: Any) -> int | None:
    try:
        return handle.tell()
    except (AttributeError, OSError, ValueError):
        return None


def counted_chunks(chunks: Any, progress: Progress) -> Iterator[bytes]:
    """An iterable of bytes chunks whose chunks advance ``progress`` as they are taken."""
    for chunk in chunks:
        progress.advance(len(chunk))
        yield chunk
