"""Inference engine: encode a face once, decode any number of latents in bounded chunks."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from agetool.device import physical_cores
from agetool.ages import all_class_codes, traversal_latents, transition_alphas
from agetool.nn.generator import Generator


class AgingEngine:
    """Runs a loaded generator on one device and dtype.

    ``chunk`` bounds how many frames are decoded at once, so memory does not grow with the number
    of frames. Latents are always computed in float32; decoding runs in ``dtype``. Decoding uses a
    ``PreparedDecoder``: a snapshot of the decoder weights taken on first use, so the generator
    must not be modified afterwards (build a new engine instead).
    """

    def __init__(self, generator: Generator, device: torch.device, dtype: torch.dtype = torch.float32,
                 chunk: int = 8):
        self.generator = generator.eval().to(device)
        self.device = device
        self.dtype = dtype
        self.chunk = max(1, int(chunk))
        self._decoder = None

    @property
    def decoder(self):
        """The prepared decoder (weights scaled, combined and cast once per engine)."""
        if self._decoder is None:
            from agetool.nn.prepared import PreparedDecoder

            self._decoder = PreparedDecoder(self.generator.decoder, self.device, self.dtype)
        return self._decoder

    def _autocast(self, batched: bool = False):
        # CPUs encode a photo's faces in float32 (autocast's casts make bfloat16 slower there, for one
        # image per face); a clip's batches of crops in the engine's dtype, as its decoder runs
        if self.dtype == torch.float32 or self.device.type == "cpu" and not batched:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor, batched: bool = False) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> identity features [B, 256, H/4, W/4] (float32). ``batched``: a
        clip's crops, encoded in the engine's dtype on CPUs too (bfloat16 where the CPU computes it
        natively and the dtype is ``auto``); photos are encoded in float32 there."""
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        with self._autocast(batched):
            return self.generator.encode(x).float().contiguous()

    @torch.inference_mode()
    def latents(self, codes: torch.Tensor) -> torch.Tensor:
        """class codes [K, 300] -> w [K, 256] (float32)"""
        return self.generator.latent(codes.to(self.device).float())

    def anchor_latents(self, noise: float, seed: int) -> torch.Tensor:
        """The six class latents [6, 256] with seeded code noise."""
        return self.latents(all_class_codes(noise=noise, seed=seed))

    @torch.inference_mode()
    def decode_pairs(self, jobs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[torch.Tensor]:
        """(features [C, h, w], latents [n, 256]) jobs -> one frame [3, 4h, 4w] (float32, CPU) per
        latent of each job, in order, computed ahead a bounded number of frames.

        CPUs share the frames out to one worker thread per core (each frame on its own); GPUs decode
        batches of up to ``chunk`` frames, across jobs (the faces of a photo, the crops of a clip).
        """
        rows = [(features, w[i:i + 1]) for features, w in jobs for i in range(w.shape[0])]
        decoder = self.decoder
        if decoder.per_sample and self.device.type == "cpu":
            def one(row):
                return decoder(row[0].to(self.device)[None], row[1])[0].cpu()

            pool = frame_pool()
            if pool is None:
                yield from map(one, rows)
            else:
                yield from pool.imap(one, rows, max(self.chunk, 2 * pool.workers))
            return
        for start in range(0, len(rows), self.chunk):
            part = rows[start:start + self.chunk]
            if all(f is part[0][0] for f, _ in part):  # one face's frames: its features broadcast
                feats = part[0][0].to(self.device)[None]
            else:
                feats = torch.stack([f.to(self.device) for f, _ in part])
            yield from decoder(feats, torch.cat([w for _, w in part])).cpu()

    def decode_stream(self, features: torch.Tensor, w: torch.Tensor) -> Iterator[torch.Tensor]:
        """One face's features [C, h, w] and latents [N, 256] -> chunks [n, 3, 4h, 4w] of up to
        ``chunk`` frames (float32, CPU)."""
        done: list[torch.Tensor] = []
        for frame in self.decode_pairs([(features, w)]):
            done.append(frame)
            if len(done) == self.chunk:
                yield torch.stack(done)
                done = []
        if done:
            yield torch.stack(done)

    def decode(self, features: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """[C, h, w], [N, 256] -> [N, 3, 4h, 4w]"""
        return torch.stack(list(self.decode_pairs([(features, w)])))

    def traversal(self, anchors: torch.Tensor, steps: int) -> torch.Tensor:
        """Anchor latents [6, 256] -> video latents [5 * steps + 1, 256], youngest to oldest."""
        return traversal_latents(anchors, transition_alphas(steps).to(anchors.device))


class FramePool:
    """Worker threads that each compute whole frames with one intra-op thread.

    On CPUs this beats splitting every op across the cores: there is no barrier per op (a thread
    that the system pre-empts delays only its own frame instead of stalling all cores at each of
    the ~200 ops of a frame), and each core keeps its own frame's activations in its caches.
    """

    def __init__(self, workers: int):
        self.workers = workers
        main_threads = torch.get_num_threads()
        ready = threading.Barrier(workers + 1, timeout=60)

        def start() -> None:
            torch.get_num_threads()  # this thread's first call settles its OpenMP setting from the process's ...
            torch.set_num_threads(1)  # ... which is then this thread's own; the main thread's is restored below
            ready.wait()

        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="agetool-frames", initializer=start)
        for _ in range(workers):  # each submit starts a thread while none is idle
            self._pool.submit(lambda: None)
        try:
            ready.wait()
        finally:
            torch.set_num_threads(main_threads)

    def imap(self, fn: Callable, items: Iterable, ahead: int) -> Iterator:
        """fn over items, in order, with at most ``ahead`` calls queued or running."""
        pending: deque = deque()
        items = iter(items)
        try:
            for item in items:
                pending.append(self._pool.submit(fn, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # the consumer stopped early (an error, Ctrl-C): drop what has not started
            for future in pending:
                future.cancel()


_FRAME_POOLS: dict[int, FramePool] = {}
_FRAME_POOL_LOCK = threading.Lock()


def frame_pool() -> FramePool | None:
    """The process's frame workers, one per physical core the intra-op setting allows; None for one."""
    workers = min(physical_cores(), torch.get_num_threads())
    if workers < 2:
        return None
    with _FRAME_POOL_LOCK:
        if workers not in _FRAME_POOLS:
            _FRAME_POOLS[workers] = FramePool(workers)
        return _FRAME_POOLS[workers]


#: decoder activations alive at once per frame, in 64-channel maps of the output size (measured peak
#: of the batched schedule at the upsampling blocks, with margin)
FRAME_MAPS = 5
#: per-sample modulated weights of one frame on the CPU (float32, all twelve convs)
CPU_FRAME_WEIGHTS = 24 * 2**20


def default_chunk(device, dtype=None, size: int = 256) -> int:
    """Frames decoded at once, from the frame size, the dtype and the memory available.

    GPUs decode a chunk as one batch: up to half the free memory, at most 128 frames. CPUs run the
    frames of a chunk one by one (the chunk only bounds buffered outputs), so a few suffice; an
    eighth of the available memory bounds it on small machines.
    """
    import torch

    itemsize = torch.empty((), dtype=dtype or torch.float32).element_size()
    per_frame = FRAME_MAPS * 64 * (size + 2) ** 2 * itemsize
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(1, min(128, free // 2 // per_frame)))
    per_frame += CPU_FRAME_WEIGHTS + 3 * size * size * 4
    cap = 16 if kind == "mps" else 8
    return int(max(1, min(cap, available_memory() // 8 // per_frame)))


def available_memory() -> int:
    """Bytes of RAM available to new allocations (MemAvailable on Linux; 4 GiB where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 4 * 2**30
