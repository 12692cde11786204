"""The one H.264 writer (PyAV, libx264) of photo videos and clips: frames are encoded as they are
produced, never all in memory, in this process (no child process to end on a stop signal).

The same frames give the same bytes on every run and every machine: frames reach the encoder as YUV
converted here (the encoder's own RGB conversion made runs differ), x264's instruction set is capped
where its AVX-512 code reads undefined memory, and its number of threads is fixed (its default
follows the machine's CPU count, and x264's output follows its number of threads).
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np

from agetool import validate
from agetool.errors import InputError, OutputError, UsageError, arg, detail
from agetool.files import Finishing, ensure_parent, temp_sibling
from agetool.options import DEFAULT_CRF, DEFAULT_FPS, MAX_CRF, MAX_FPS, MIN_FPS

#: x264's threads: a fixed number, as its output depends on it (x264's own default is 1.5 per CPU)
X264_THREADS = 4
#: containers whose index (moov) is moved to the front when the file is finished (players and browsers
#: can start before the whole file has arrived)
_ISO_SUFFIXES = (".mp4", ".mov", ".m4v")


@contextmanager
def signals_deferred():
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
    """x264 options that keep its output a function of its input (read once): a fixed number of
    threads, and on this CPU the instruction set of ``x264_cpu_options``.

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
        flags = set()
    return {"threads": str(X264_THREADS), **x264_cpu_options(flags)}


def x264_cpu_options(flags: set[str]) -> dict:
    """The instruction-set options of ``x264_options`` for a CPU with these /proc/cpuinfo flags."""
    if _X264_AVX512 <= flags and _X264_AVX2 <= flags:
        return {"x264-params": "asm=AVX2,SSE2Fast,Cache64"}
    return {}


def pixel_format(width: int, height: int) -> str:
    """The encoder's pixel format: YUV 4:2:0 (what every player takes) when both sides are even, else
    4:4:4 (H.264's High 4:4:4 profile), which keeps an odd size exactly where 4:2:0 can't hold it."""
    return "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"


#: RGB to BT.601 limited-range Y, Cb, Cr (rows), as the encoder's own converter computes them
_BT601 = np.array([[0.256788, 0.504129, 0.097906], [-0.148223, -0.290993, 0.439216],
                   [0.439216, -0.367788, -0.071427]], np.float32)


def yuv_frame(image: np.ndarray):
    """An RGB uint8 frame as the encoder's input, converted here in one conversion of our own (the
    same bytes on every run): YUV 4:2:0 (BT.601, limited range, as the encoder's own converter does)
    when both sides are even, each chroma sample the colour of its 2x2 block, else YUV 4:4:4 with the
    same coefficients."""
    import av

    h, w = image.shape[:2]
    if h % 2 or w % 2:
        planes = np.tensordot(_BT601, image.astype(np.float32), axes=([1], [2]))
        planes += np.array([16, 128, 128], np.float32)[:, None, None]
        return av.VideoFrame.from_ndarray(np.clip(np.rint(planes), 0, 255).astype(np.uint8), format="yuv444p")
    import cv2

    yuv = cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420)  # OpenCV's fixed point; its chroma is one pixel of four
    # the chroma of each block's mean (OpenCV's picked pixel aliased: 1.3 dB less and 18 % larger files)
    blocks = cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    yuv[h:] = cv2.cvtColor(cv2.resize(blocks, (w, h), interpolation=cv2.INTER_NEAREST), cv2.COLOR_RGB2YUV_I420)[h:]
    return av.VideoFrame.from_ndarray(yuv, format="yuv420p")


def no_space(e: BaseException, path: Path) -> OutputError | None:
    """The error to give when writing failed for want of space (a full disk, a quota, a file-size limit)."""
    import errno

    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        reason = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is used up",
                  errno.EFBIG: "the file is larger than this process may write"}[e.errno]
        return OutputError(f"writing {path} failed: {reason}", hint="free some space, or write it elsewhere")
    return None


def _reason(e: BaseException) -> str:
    """Why writing failed, in the system's words (not naming the temporary file), else the error's first line."""
    return getattr(e, "strerror", None) or detail(e, 160)


class H264Writer(Finishing):
    """H.264 (libx264, CRF) at ``rate`` frames a second, frames timed by the pts given to ``write``
    (in ``time_base``, default one frame; without a pts, frame n is shown at n frames), shown turned
    by ``rotation`` degrees, with every audio stream of the file ``audio_from`` copied packet for
    packet. Frames are YUV 4:2:0 when both sides are even, else 4:4:4 (``pixel_format``); MP4 / MOV
    files have their index at the front. Writes a temporary sibling, marks it with ``marking``
    (``agetool.provenance``: an MP4's XMP box and Content Credentials when it is finished, a
    Matroska file's tags when it starts) and renames it on ``close()``; ``abort()`` (or an
    exception inside ``with``) removes it. Failures are one ``OutputError`` line and leave no file.
    ``size``: (width, height) every frame must have (default: the first frame's)."""

    #: frames with an odd side are refused rather than written in 4:4:4 (which not every player takes)
    even_only = False

    def __init__(self, path: str | os.PathLike, rate, crf: int = DEFAULT_CRF, marking=None, *,
                 preset: str = "medium", time_base: Fraction | None = None, rotation: int = 0,
                 size: tuple[int, int] | None = None, audio_from: str | os.PathLike | None = None,
                 audio_codecs: tuple[str, ...] | list[str] = ()):
        self.path = Path(path)
        self.rate = Fraction(rate).limit_denominator()  # a rational: 29.97 stays 2997/100
        self.time_base = Fraction(time_base) if time_base else 1 / self.rate
        self.crf = validate.integer("crf", crf, 0, MAX_CRF)
        self.preset, self.rotation, self.size = preset, rotation, size
        self.audio_from, self.audio_codecs = audio_from, list(audio_codecs)
        self.marking = marking  # agetool.provenance.Marking: what the file says about itself
        ensure_parent(self.path)
        self._tmp: Path | None = None
        self._box = self._src = self._video = None
        self._audio: dict = {}
        self._packets = self._pending = None
        self._finished = False
        self.frames = 0

    def _start(self, width: int, height: int) -> None:
        import av

        if self.even_only and (width % 2 or height % 2):
            raise OutputError(f"video frames must have even sides, got {width}x{height}")
        with signals_deferred():  # a stop signal now would leave a temporary file no one removes
            self._tmp = temp_sibling(self.path)
        iso = self.path.suffix.lower() in _ISO_SUFFIXES
        try:
            self._box = av.open(str(self._tmp), "w", options={"movflags": "+faststart"} if iso else {})
            if self.path.suffix.lower() == ".mkv":
                from agetool.provenance import matroska_tags

                self._box.metadata.update(matroska_tags(self.marking))
            vs = self._box.add_stream("libx264", rate=self.rate)
            vs.width, vs.height, vs.pix_fmt = width, height, pixel_format(width, height)
            vs.time_base = vs.codec_context.time_base = self.time_base
            vs.options = {"crf": str(self.crf), "preset": self.preset, **x264_options()}
            if self.rotation:
                vs.set_display_rotation(self.rotation)
            self._video = vs
            if self.audio_from is not None:
                self._add_audio()
            self._box.start_encoding()
        except (av.FFmpegError, OSError) as e:
            self.abort()
            raise no_space(e, self.path) or OutputError(f"can't write {self.path}: {_reason(e)}") from None
        except BaseException:
            self.abort()
            raise
        self.size = (width, height)

    def _add_audio(self) -> None:
        import av

        try:
            self._src = av.open(str(self.audio_from))
        except (av.FFmpegError, OSError) as e:
            raise InputError(f"{self.audio_from}: not a readable video ({detail(e, 120)})") from None
        try:
            for a in self._src.streams.audio:
                self._audio[a.index] = self._box.add_stream_from_template(a)
        except ValueError as e:
            raise OutputError(f"{self.path}: the audio of {self.audio_from} ({', '.join(self.audio_codecs)}) can't "
                              f"be copied into {self.path.suffix} ({e})", hint=f"write .mkv with {arg('out')}") from None
        if self._audio:
            self._packets = self._src.demux(*self._src.streams.audio)

    def _mux_audio(self, until: float | None) -> None:
        """Copy audio packets up to ``until`` seconds (all of them for None), in file order."""
        while self._packets is not None:
            packet = self._pending or next(self._packets, None)
            self._pending = None
            if packet is None:
                self._packets = None
                return
            if packet.dts is None and packet.size == 0:
                continue
            if until is not None and packet.pts is not None and float(packet.pts * packet.time_base) > until:
                self._pending = packet
                return
            packet.stream = self._audio[packet.stream.index]
            self._box.mux(packet)

    def write(self, image: np.ndarray, pts: int | None = None) -> None:
        """Append one RGB uint8 frame [H, W, 3], shown at ``pts`` (in ``time_base``; default: the next frame)."""
        import av

        h, w = image.shape[:2]
        if self.size is not None and (w, h) != tuple(self.size):
            raise OutputError(f"frame {self.frames} is {w}x{h}, expected {self.size[0]}x{self.size[1]}")
        if self._finished:
            raise OutputError(f"{self.path}: the video is already finished")
        if self._box is None:
            self._start(w, h)
        frame = yuv_frame(np.ascontiguousarray(image, dtype=np.uint8))
        frame.pts = self.frames if pts is None else int(pts)
        frame.time_base = self.time_base
        try:
            self._box.mux(self._video.encode(frame))
            self._mux_audio(float(frame.pts * self.time_base) + 0.5)
        except (av.FFmpegError, OSError) as e:
            self.abort()
            raise no_space(e, self.path) or OutputError(f"writing {self.path} failed: {_reason(e)}") from None
        self.frames += 1

    def finish(self) -> None:
        """Flush the encoder and close the temporary file (its memory is freed); ``close()`` then
        moves it into place, ``abort()`` removes it."""
        import av

        if self._finished:
            return
        if self._box is None:
            raise OutputError(f"{self.path}: no frames to write")
        try:
            self._box.mux(self._video.encode(None))
            self._mux_audio(None)
            self._box.close()
        except (av.FFmpegError, OSError) as e:
            self.abort()
            full = no_space(e, self.path)
            if full is not None:
                raise full from None
            hint = (f"the audio ({', '.join(self.audio_codecs)}) may not fit {self.path.suffix}: try "
                    f"{arg('out')} NAME.mkv") if self._audio and self.path.suffix.lower() != ".mkv" else None
            raise OutputError(f"finishing {self.path} failed: {_reason(e)}", hint=hint) from None
        self._box = self._video = None
        self._close_source()
        self._finished = True

    def close(self) -> Path:
        """Finish the file, mark it and move it into place; returns its path."""
        self.finish()
        from agetool.provenance import mark_video

        try:
            mark_video(self._tmp, self.marking, self.path.name)
        except BaseException:
            self.abort()
            raise
        os.replace(self._tmp, self.path)
        self._tmp = None
        return self.path

    def _close_source(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = self._packets = self._pending = None

    def abort(self) -> None:
        """Stop without a file: the temporary file is removed (before the encoder is closed, so that an
        MP4's index is not moved to the front of a file no one keeps)."""
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        box, self._box = self._box, None
        if box is not None:
            try:
                box.close()
            except Exception:  # noqa: BLE001 - the file is gone already
                pass
        if tmp is not None:
            tmp.unlink(missing_ok=True)  # what closing may have written under the name again
        self._close_source()


class VideoWriter(H264Writer):
    """A photo's aging video: an MP4 at ``fps`` frames a second, YUV 4:2:0 (every frame's sides even),
    CRF quality; see ``H264Writer``."""

    even_only = True

    def __init__(self, path: str | os.PathLike, fps: float = DEFAULT_FPS, crf: int = DEFAULT_CRF, marking=None):
        path = Path(path)
        if path.suffix.lower() != ".mp4":
            raise UsageError(f"{path}: video output must end in .mp4")
        self.fps = validate.finite("fps", fps, MIN_FPS, MAX_FPS)
        super().__init__(path, self.fps, crf, marking)


def read_video_frames(path: str | os.PathLike, decode: bool = True) -> tuple[int, tuple[int, int]]:
    """(frame count, (width, height)) of a video's first video stream, read with PyAV: every frame
    decoded, or with ``decode=False`` its packets counted (one a frame)."""
    import av

    with av.open(str(path)) as box:
        vs = box.streams.video[0]
        size = (vs.codec_context.width, vs.codec_context.height)
        if decode:
            return sum(1 for _ in box.decode(vs)), size
        return sum(1 for packet in box.demux(vs) if packet.size), size
