"""Folder runs split across the processes of a ``torchrun`` job.

Each rank takes every world-size-th input (``Dist.shard``), writes what it made, then all ranks
meet at ``barrier`` so that rank 0 can merge the results. ``join`` comes first, before any work:
every rank waits there for the others to start, for at most ``peer_timeout()`` seconds.

    dist = env_dist()
    join(dist)                       # the whole job is running (or a clear error)
    for item in dist.shard(items):
        ...                          # write this item's outputs
    barrier(dist)                    # every rank has finished
    if dist.main:
        ...                          # merge, write the summary

The ranks meet through the job's key-value store (torchrun's, or one that rank 0 serves at
MASTER_ADDR:MASTER_PORT), polled from Python: a wait is never stuck inside a C++ call, so a stop
signal (SIGINT, SIGTERM, SIGHUP) ends it at once, and no process group is left to tear down.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta

from agetool.device import Dist, env_dist
from agetool.errors import PeerError

#: How long a rank waits for the other ranks to start (AGETOOL_PEER_TIMEOUT seconds overrides it).
PEER_TIMEOUT = 600.0
#: How long a rank waits at a barrier for the slowest one (shards can be unequal and long).
BARRIER_TIMEOUT = timedelta(days=2)
#: Seconds between two looks at the store while waiting.
POLL = 0.1

__all__ = ["Dist", "barrier", "env_dist", "join", "peer_timeout", "total"]


def peer_timeout() -> float:
    """Seconds a rank waits for the others to start: ``AGETOOL_PEER_TIMEOUT`` or ``PEER_TIMEOUT``."""
    text = os.environ.get("AGETOOL_PEER_TIMEOUT", "").strip()
    if not text:
        return PEER_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 7 * 86400:
        from agetool.errors import UsageError

        raise UsageError(f"AGETOOL_PEER_TIMEOUT={text[:40]}: expected seconds, more than 0 and at most a week")
    return value


class _Meeting:
    """This process's connection to the job's store and the count of meetings held so far."""

    def __init__(self, dist: Dist):
        self.dist = dist
        run = os.environ.get("TORCHELASTIC_RUN_ID", "")
        self.prefix = f"agetool/{run}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.count = 0
        self.serving = False
        self.store = self._connect(time.monotonic() + peer_timeout())
        self.meet("join", b"", peer_timeout(), "start")

    def _connect(self, deadline: float):
        from torch.distributed import TCPStore

        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"  # torchrun serves it
        if self.dist.main and not agent:
            try:
                store = TCPStore(host, port, self.dist.world, is_master=True, wait_for_workers=False,
                                 timeout=timedelta(seconds=30))
            except (RuntimeError, OSError, ValueError) as e:
                raise PeerError(f"rank 0 can't serve the job's meeting point at MASTER_ADDR:MASTER_PORT = "
                                f"{host}:{port} ({_first_line(e)})", hint="choose a free MASTER_PORT") from None
            self.serving = True
            return store
        while True:
            try:  # a plain probe first: the store's own client logs every failed try
                socket.create_connection((host, port), timeout=1).close()
                return TCPStore(host, port, self.dist.world, is_master=False, timeout=timedelta(seconds=30))
            except (RuntimeError, OSError, ValueError) as e:  # rank 0 not listening yet
                if time.monotonic() > deadline:
                    raise PeerError(f"rank {self.dist.rank} of WORLD_SIZE={self.dist.world}: no meeting point at "
                                    f"MASTER_ADDR:MASTER_PORT = {host}:{port} after {peer_timeout():g} s "
                                    f"({_first_line(e)})", hint=_start_hint(self.dist)) from None
                time.sleep(POLL)  # a stop signal is handled here

    def meet(self, name: str, payload: bytes, timeout: float, what: str) -> list[bytes]:
        """Every rank's ``payload`` for the meeting ``name``, in rank order, once all have arrived
        (a ``PeerError`` after ``timeout`` seconds)."""
        key = f"{self.prefix}/{name}"
        keys = [f"{key}/{r}" for r in range(self.dist.world)]
        self.store.set(keys[self.dist.rank], payload)
        self._wait(keys, timeout, what)
        values = [self.store.get(k) for k in keys]
        seen = [f"{key}/seen/{r}" for r in range(self.dist.world)]
        self.store.set(seen[self.dist.rank], b"")
        if self.serving:  # the store lives in this process: stay until every rank has read
            self._wait(seen, peer_timeout(), "read the results")
        return values

    def _wait(self, keys: list[str], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not self.store.check(keys):
            if time.monotonic() > deadline:
                missing = [str(r) for r, k in enumerate(keys) if not self.store.check([k])]
                raise PeerError(f"rank {self.dist.rank} of WORLD_SIZE={self.dist.world}: waited "
                                f"{_duration(timeout)} for rank(s) {', '.join(missing)} to {what}",
                                hint=_start_hint(self.dist))
            time.sleep(POLL)  # a stop signal is handled here

    def next_name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"


_MEETING: _Meeting | None = None


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:120]


def _start_hint(dist: Dist) -> str:
    return (f"start all {dist.world} processes (torchrun --nproc_per_node {dist.world} ...), "
            "or raise AGETOOL_PEER_TIMEOUT (seconds)")


def join(dist: Dist | None = None) -> None:
    """Wait until every rank of the job has started (nothing to do for a single process); a
    ``PeerError`` after ``peer_timeout()`` seconds names the ranks that never came."""
    global _MEETING
    dist = dist or env_dist()
    if dist.world <= 1 or (_MEETING is not None and _MEETING.dist == dist):
        return
    _MEETING = _Meeting(dist)


def barrier(dist: Dist | None = None) -> None:
    """Wait until every rank of the job gets here (nothing to do for a single process)."""
    dist = dist or env_dist()
    if dist.world <= 1:
        return
    join(dist)
    _MEETING.meet(_MEETING.next_name("barrier"), b"", BARRIER_TIMEOUT.total_seconds(), "finish")


def total(counts: list[int], dist: Dist | None = None) -> list[int]:
    """``counts`` summed over every rank of the job (for example files done and failed), on every rank."""
    dist = dist or env_dist()
    counts = [int(c) for c in counts]
    if dist.world <= 1:
        return counts
    join(dist)
    values = _MEETING.meet(_MEETING.next_name("total"), json.dumps(counts).encode(),
                           BARRIER_TIMEOUT.total_seconds(), "finish")
    return [sum(column) for column in zip(*(json.loads(v) for v in values))]
