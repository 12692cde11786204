"""Streamed H.264 MP4 writer: frames go to ffmpeg as they are produced, never all in memory."""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from agetool import validate
from agetool.errors import OutputError, UsageError, detail
from agetool.files import Finishing, ensure_parent, temp_sibling
from agetool.options import DEFAULT_CRF, DEFAULT_FPS, MAX_CRF, MAX_FPS, MIN_FPS

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


#: what x264 requires of a CPU before it uses its AVX-512 code (Linux /proc/cpuinfo names)
_X264_AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
#: what every CPU with those has, and what x264's "AVX2" level (with FMA3, BMI1/2, LZCNT) assumes
_X264_AVX2 = {"avx2", "fma", "bmi1", "bmi2", "abm"}


@functools.cache
def x264_options() -> dict:
    """x264 options that keep its output a function of its input on this CPU (read once).

    x264's AVX-512 routines read memory that holds no defined value for some frame sizes (150x100,
    for one), so the bytes of a clip depended on what the process had allocated before: two runs of
    the same command could give different files. Where x264 would pick them, its instruction set is
    capped at AVX2 (measured here: the same size then gives the same bytes whatever the heap holds;
    sizes the AVX-512 code handles well give the very same bytes either way). Elsewhere x264 decides.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return {}
    return x264_cpu_options(flags)


def x264_cpu_options(flags: set[str]) -> dict:
    """The options of ``x264_options`` for a CPU with these /proc/cpuinfo flags."""
    if _X264_AVX512 <= flags and _X264_AVX2 <= flags:
        return {"x264-params": "asm=AVX2,SSE2Fast,Cache64"}
    return {}


class VideoWriter(Finishing):
    """H.264 (libx264), yuv420p, +faststart, CRF quality. Writes to a temporary name and renames on
    ``close()``, marked with ``marking`` (``agetool.provenance``) first; ``abort()`` (or an exception
    inside ``with``) removes the partial file. A failure
    of the encoder is one ``OutputError`` line quoting ffmpeg's last message, and leaves no file.

    Frames are RGB uint8 [H, W, 3]; every frame must have the size of the first, with even sides.
    """

    def __init__(self, path: str | os.PathLike, fps: float = DEFAULT_FPS, crf: int = DEFAULT_CRF, marking=None):
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise UsageError(f"{self.path}: video output must end in .mp4")
        crf = validate.integer("crf", crf, 0, MAX_CRF)
        fps = validate.finite("fps", fps, MIN_FPS, MAX_FPS)
        ensure_parent(self.path)
        self.fps, self.crf = fps, crf
        self.marking = marking  # agetool.provenance.Marking: what the file says about itself
        self._tmp: Path | None = None
        self._proc = None
        self._log = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def _command(self, width: int, height: int) -> list[str]:
        from fractions import Fraction

        import imageio_ffmpeg

        rate = Fraction(self.fps).limit_denominator()  # a rational: 29.97 stays 29.97
        return [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo",
                "-s", f"{width}x{height}", "-pix_fmt", "rgb24", "-r", str(rate), "-i", "-", "-an",
                "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", str(self.crf), "-preset", "medium",
                *(arg for key, value in x264_options().items() for arg in (f"-{key}", value)),
                "-movflags", "+faststart", "-v", "error", "-f", "mp4", str(self._tmp)]

    def _open(self, width: int, height: int) -> None:
        import subprocess
        import tempfile

        if width % 2 or height % 2:
            raise OutputError(f"video frames must have even sides, got {width}x{height}")
        with _signals_deferred():  # a stop signal arriving now would leave ffmpeg running unseen
            self._tmp = temp_sibling(self.path)
            self._size = (width, height)
            self._log = tempfile.TemporaryFile()  # ffmpeg's messages: quoted in one line on failure
            try:  # its own session: a Ctrl-C at the terminal reaches this process only, which ends ffmpeg
                self._proc = subprocess.Popen(self._command(width, height), stdin=subprocess.PIPE,
                                              stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)
            except (OSError, RuntimeError) as e:  # RuntimeError: imageio-ffmpeg found no ffmpeg program
                self.abort()
                reason = getattr(e, "strerror", None) or detail(e)
                raise OutputError(f"can't start ffmpeg to write {self.path}: {reason}") from None

    def _failure(self) -> str:
        """ffmpeg's last message (without its ``[component @ address]`` prefix), or its exit status."""
        import re

        text = ""
        if self._log is not None:
            self._log.seek(0)
            lines = [line.strip() for line in self._log.read().decode("utf-8", "replace").splitlines()]
            lines = [re.sub(r"^(\[[^]]*\]\s*)+", "", line) for line in lines if line]
            lines = [line for line in lines if line and not line.startswith("Last message repeated")]
            text = lines[0] if lines else ""
        if not text and self._proc is not None and self._proc.returncode not in (None, 0):
            text = f"exit status {self._proc.returncode}"
        return (text or "no message")[:160]

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 frame [H, W, 3]."""
        h, w = frame.shape[:2]
        if self._proc is None:
            self._open(w, h)
        elif (w, h) != self._size:
            raise OutputError(f"frame {self.frames} is {w}x{h}, expected {self._size[0]}x{self._size[1]}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).data)
        except (OSError, ValueError):
            self._proc.wait()
            raise self._failed("failed while writing") from None
        self.frames += 1

    def _failed(self, what: str) -> OutputError:
        message = self._failure()
        self.abort()
        return OutputError(f"ffmpeg {what} {self.path}: {message}")

    def close(self) -> Path:
        """Finish encoding and move the file into place."""
        if self._proc is None:
            raise OutputError(f"{self.path}: no frames to write")
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        if self._proc.wait() != 0 or self._tmp.stat().st_size == 0:
            raise self._failed("failed to finish")
        self._proc = None
        self._log.close()
        self._log = None
        from agetool.provenance import mark_video

        try:
            mark_video(self._tmp, self.marking, self.path.name)
        except BaseException:
            self.abort()
            raise
        os.replace(self._tmp, self.path)
        self._tmp = None
        return self.path

    def abort(self) -> None:
        """Kill ffmpeg (no waiting for it to finish the file) and remove the partial file."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:  # ffmpeg is killed before it could finish (and rewrite) the file
                proc.kill()
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=10)
            except Exception:  # noqa: BLE001 - best effort: the file is removed below anyway
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


def read_video_frames(path: str | os.PathLike) -> tuple[int, tuple[int, int]]:
    """(frame count, (width, height)) of a video, decoded with ffmpeg (used by checks and tests)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    n = sum(1 for _ in reader)
    return n, tuple(meta["size"])
