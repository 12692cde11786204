"""Folder runs split across the processes of a ``torchrun`` job.

Each rank takes every world-size-th input (``Dist.shard``), writes what it made, then all ranks
meet at ``barrier`` so that rank 0 can merge the results. The meeting point is a CPU (gloo)
process group, whatever device each rank computes on, so it works for CUDA and CPU jobs alike.

    dist = env_dist()
    for item in dist.shard(items):
        ...                          # write this item's outputs
    barrier(dist)                    # every rank has finished
    if dist.main:
        ...                          # merge, write the summary
"""

from __future__ import annotations

from datetime import timedelta

from agetool.device import Dist, env_dist

#: How long a rank waits at a barrier for the slowest one (shards can be unequal and long).
BARRIER_TIMEOUT = timedelta(days=2)

__all__ = ["Dist", "barrier", "env_dist", "total"]


def _group(dist: Dist):
    """The gloo group of this job (initialized on first use, from torchrun's environment)."""
    import torch.distributed as td

    if not td.is_initialized():
        td.init_process_group("gloo", rank=dist.rank, world_size=dist.world, timeout=BARRIER_TIMEOUT)
        import atexit

        # a group left to the interpreter's teardown can abort the process ("terminate called ...")
        atexit.register(_close)
        return None
    if td.get_backend() == "gloo":
        return None
    global _GLOO
    if _GLOO is None:  # a job that already runs NCCL gets a CPU group beside it
        _GLOO = td.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)
    return _GLOO


_GLOO = None


def _close() -> None:
    import torch.distributed as td

    if td.is_initialized():
        td.destroy_process_group()


def barrier(dist: Dist | None = None) -> None:
    """Wait until every rank of the job gets here (nothing to do for a single process)."""
    dist = dist or env_dist()
    if dist.world <= 1:
        return
    import torch.distributed as td

    td.barrier(group=_group(dist))


def total(counts: list[int], dist: Dist | None = None) -> list[int]:
    """``counts`` summed over every rank of the job (for example files done and failed), on every rank."""
    dist = dist or env_dist()
    if dist.world <= 1:
        return [int(c) for c in counts]
    import torch
    import torch.distributed as td

    t = torch.tensor([int(c) for c in counts], dtype=torch.int64)
    td.all_reduce(t, group=_group(dist))
    return [int(c) for c in t.tolist()]
