"""Work beside the networks: a clip's frames read ahead and its output written behind, each in a
background thread with a bounded queue (torch, PyAV's decoder and libx264 release the GIL while they
compute, so reading and writing run while the generator does).

Both keep order, hand their thread's errors to the caller (in order, where the caller next waits on
them), and stop their thread, waiting for it, when closed: at the end, on an error or when the caller
stops early. The time each thread works is counted under its stage with "(background)" added; the
caller's waits for it under the stage itself.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable

#: seconds between two looks at the stop flag while a thread waits on its queue
POLL = 0.05
#: bytes of frames either queue holds at most (frames are read or written a batch ahead at most)
QUEUE_BYTES = 96 * 2**20

_END = object()
_ERROR = object()


def queue_size(frame_bytes: int, batch: int) -> int:
    """Frames a queue holds: a batch, fewer for large frames (at most ``QUEUE_BYTES``), at least 2."""
    return max(2, min(batch, QUEUE_BYTES // max(1, frame_bytes)))


class _Worker:
    def __init__(self, size: int, name: str, timer, stage: str):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
        self._stop = threading.Event()
        self._timer, self._stage = timer, stage
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def _put(self, item) -> bool:
        """Queue ``item`` unless stopped; False once stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    def _timed(self):
        import contextlib

        return contextlib.nullcontext() if self._timer is None else self._timer(self._stage)

    def _main(self) -> None:
        if self._timer is not None:
            self._timer.background = True
        self._run()

    def _run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the thread (what is queued is dropped) and wait for it."""
        self._stop.set()
        while True:  # a thread waiting to put is let through to see the flag
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Ahead(_Worker):
    """The items of ``items`` (an iterable, iterated in a thread named ``name``), up to ``size`` ahead
    of the caller. An error raised while producing an item is raised by ``next()`` in its place.
    ``close()`` (or leaving ``with``) stops the reading and closes ``items`` if it is a generator."""

    def __init__(self, items: Iterable, size: int, name: str = "agetool-read", timer=None, stage: str = "read"):
        super().__init__(size, name, timer, stage)
        self._items = items
        self._done = False
        self._thread.start()

    def _run(self) -> None:
        items = iter(self._items)
        try:
            while not self._stop.is_set():
                try:
                    with self._timed():
                        item = next(items, _END)
                except BaseException as e:  # noqa: BLE001 - raised in the caller's thread, in order
                    self._put((_ERROR, e))
                    return
                if item is _END:
                    self._put((_END, None))
                    return
                if not self._put((None, item)):
                    return
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's files are closed in the thread that read them

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        with self._timed():
            kind, item = self._queue.get()
        if kind is _END:
            self._done = True
            raise StopIteration
        if kind is _ERROR:
            self._done = True
            raise item
        return item


class Behind(_Worker):
    """``fn(*args)`` for each ``put(*args)``, in order, in a thread named ``name``, up to ``size``
    calls queued. An error raised by ``fn`` stops the calls; ``put`` and ``finish`` raise it then.
    ``finish()`` waits for every call; ``close()`` drops what is queued and stops the thread."""

    def __init__(self, fn: Callable, size: int, name: str = "agetool-write", timer=None, stage: str = "write"):
        super().__init__(size, name, timer, stage)
        self._fn = fn
        self._error: BaseException | None = None
        self._idle = threading.Event()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=POLL)
            except queue.Empty:
                continue
            if item is _END:
                self._idle.set()
                return
            try:
                with self._timed():
                    self._fn(*item)
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
                self._error = e
                self._stop.set()
                self._idle.set()
                return

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self.close()
            raise error

    def put(self, *args) -> None:
        """Queue the call ``fn(*args)``; waits while ``size`` calls are queued."""
        self._raise()
        with self._timed():
            queued = self._put(args)
        self._raise()  # fn failed meanwhile
        if not queued:
            raise RuntimeError("put() after close()")

    def finish(self) -> None:
        """Wait until every queued call has run; raises the error of one that failed."""
        if self._thread.is_alive() and not self._stop.is_set():
            with self._timed():
                self._put(_END)
                self._idle.wait()
                self._thread.join()
        self._raise()
