"""Streamed H.264 MP4 writer: frames go to ffmpeg as they are produced, never all in memory."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from agetool import validate
from agetool.errors import OutputError, UsageError, arg
from agetool.images import atomic_path, ensure_parent

#: limits of a video run: beyond them a run is a mistake (hours of frames), refused up front
MAX_FPS = 240.0
MAX_STEPS = 10_000
MAX_HOLD = 600.0  # seconds
MAX_FRAMES = 200_000  # about 1 h 50 min at 30 fps


def frame_total(steps: int, fps: float, hold: float = 0.0, transitions: int = 5) -> int:
    """Frames in the MP4 of a traversal with ``steps`` frames per transition and ``hold`` seconds
    on its first and last frame. Refuses (``UsageError``) values that are not finite, out of range,
    or that add up to more than ``MAX_FRAMES`` frames, stating the estimate."""
    steps = validate.integer("steps", steps, 1, MAX_STEPS)
    fps = validate.finite("fps", fps, 0.0, MAX_FPS, low_open=True)
    hold = validate.finite("hold", hold, 0.0, MAX_HOLD)
    total = steps * transitions + 1 + 2 * int(round(hold * fps))
    if total > MAX_FRAMES:
        minutes = total / fps / 60
        raise UsageError(f"{arg('steps', steps)}, {arg('fps', fps)} and {arg('hold', hold)} make {total:,} frames "
                         f"({minutes:,.0f} min of video); the limit is {MAX_FRAMES:,} frames")
    return total


@contextmanager
def _signals_deferred():
    """Hold back SIGINT, SIGTERM and SIGHUP (delivered when the block ends) where the platform can."""
    import signal

    mask = getattr(signal, "pthread_sigmask", None)
    stops = {getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)}
    if mask is None:
        yield
        return
    old = mask(signal.SIG_BLOCK, stops)
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, old)


class _Abort(BaseException):
    """Thrown into the ffmpeg writer to stop it without finishing the file."""


class VideoWriter:
    """H.264 (libx264), yuv420p, +faststart, CRF quality. Writes to a temporary name and renames on
    ``close()``; ``abort()`` (or an exception inside ``with``) removes the partial file.

    Frames are RGB uint8 [H, W, 3]; every frame must have the size of the first, with even sides.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 30.0, crf: int = 18):
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise UsageError(f"{self.path}: video output must end in .mp4")
        crf = validate.integer("crf", crf, 0, 51)
        fps = validate.finite("fps", fps, 0.0, MAX_FPS, low_open=True)
        ensure_parent(self.path)
        self.fps, self.crf = fps, crf
        self._tmp: Path | None = None
        self._gen = None
        self._proc = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def _open(self, width: int, height: int) -> None:
        import imageio_ffmpeg

        if width % 2 or height % 2:
            raise OutputError(f"video frames must have even sides, got {width}x{height}")
        with _signals_deferred():  # a stop signal arriving now would leave ffmpeg running unseen
            self._tmp = atomic_path(self.path)
            self._size = (width, height)
            self._gen = imageio_ffmpeg.write_frames(
                str(self._tmp), (width, height), fps=self.fps, codec="libx264", pix_fmt_in="rgb24",
                pix_fmt_out="yuv420p", quality=None, macro_block_size=2,
                output_params=["-crf", str(self.crf), "-preset", "medium", "-movflags", "+faststart"],
                ffmpeg_log_level="error",
            )
            self._gen.send(None)
            # the ffmpeg process, so that abort() can end it before the partial file is removed
            frame = getattr(self._gen, "gi_frame", None)
            self._proc = frame.f_locals.get("p") if frame is not None else None

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 frame [H, W, 3]."""
        h, w = frame.shape[:2]
        if self._gen is None:
            self._open(w, h)
        elif (w, h) != self._size:
            raise OutputError(f"frame {self.frames} is {w}x{h}, expected {self._size[0]}x{self._size[1]}")
        try:
            self._gen.send(np.ascontiguousarray(frame, dtype=np.uint8))
        except (OSError, RuntimeError) as e:
            self.abort()
            raise OutputError(f"ffmpeg failed while writing {self.path}: {str(e).splitlines()[0][:160]}") from None
        self.frames += 1

    def close(self) -> Path:
        """Finish encoding and move the file into place."""
        if self._gen is None:
            raise OutputError(f"{self.path}: no frames to write")
        try:
            self._gen.close()
        except (OSError, RuntimeError) as e:
            self.abort()
            raise OutputError(f"ffmpeg failed to finish {self.path}: {str(e).splitlines()[0][:160]}") from None
        self._gen = self._proc = None
        os.replace(self._tmp, self.path)
        self._tmp = None
        return self.path

    def abort(self) -> None:
        """Kill ffmpeg (no waiting for it to finish the file) and remove the partial file."""
        proc, self._proc = self._proc, None
        if proc is not None and hasattr(proc, "poll"):
            if proc.poll() is None:  # ffmpeg is killed before it could finish (and rewrite) the file
                proc.kill()
            try:
                proc.wait(timeout=10)
            except Exception:  # noqa: BLE001 - best effort: the file is removed below anyway
                pass
        if self._gen is not None:
            gen, self._gen = self._gen, None
            try:  # an exception that is no Exception makes imageio-ffmpeg kill the process at once
                gen.throw(_Abort())
            except _Abort:
                pass
            except BaseException:  # noqa: BLE001 - ffmpeg already failed; cleanup only
                pass
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_video_frames(path: str | os.PathLike) -> tuple[int, tuple[int, int]]:
    """(frame count, (width, height)) of a video, decoded with ffmpeg (used by checks and tests)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    n = sum(1 for _ in reader)
    return n, tuple(meta["size"])
