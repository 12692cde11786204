"""Clips in and out with PyAV: recognise a clip by its bytes, read its frames with their exact
timestamps, and write the aged frames with the same timestamps and rotation and every audio
stream copied packet for packet (through the H.264 writer of photo videos, ``agetool.video``).

PyAV rather than a pipe of raw frames to an ffmpeg program: a pipe carries no timestamps (a
variable-frame-rate clip would come back at a constant rate), no rotation, and no way to copy the
audio packets in the same pass; PyAV gives each frame's pts, the display matrix and the packets of
the other streams in one process, with no child process to end on a stop signal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from agetool.errors import InputError, UsageError, arg, detail
from agetool.options import DEFAULT_CRF
from agetool.video import H264Writer

#: what a clip output may be called
CLIP_SUFFIXES = (".mp4", ".mov", ".mkv")
#: brands of ISO media files that hold still images, not clips
_IMAGE_BRANDS = {b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis", b"heim", b"heis"}


def is_clip(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a video (MP4 / MOV, Matroska / WebM or AVI), judged by its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    if len(head) < 12:
        return False
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska, WebM
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return True
    if head[4:8] == b"ftyp":
        return head[8:12] not in _IMAGE_BRANDS
    return head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip")  # QuickTime without ftyp


@dataclass
class ClipInfo:
    """What a clip holds, read once before any work."""

    path: Path
    width: int  # as stored (before rotation)
    height: int
    rotation: int  # display rotation in degrees (0, 90, 180, 270), counter-clockwise
    frames: int  # video packets (frames) in the file
    time_base: Fraction
    rate: Fraction  # average frame rate (the encoder's nominal rate; timestamps are kept exactly)
    start: float  # seconds of the first frame
    end: float  # seconds of the last frame
    audio: list[str] = field(default_factory=list)  # codec of each audio stream
    max_pixels: int | None = None  # every decoded frame is checked against this (None: no check)
    repaired: int = 0  # frames whose timestamps did not increase, given the next free ones
    broken: str | None = None  # why the frames ended early (a packet that could not be decoded)
    listed: int = 0  # frames the container's index lists (0: it lists none)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as shown, after rotation."""
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)


def _open(path: Path):
    import av

    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        raise InputError(f"{path}: not a readable video ({detail(e, 120)})") from None


def probe(path: str | os.PathLike, max_pixels: int | None = None) -> ClipInfo:
    """The clip's size, rotation, frame count, timing and audio streams (one pass over its packets).
    ``max_pixels``: a clip whose frames are larger is refused before any frame is decoded, and
    ``read_frames`` checks every decoded frame against it."""
    path = Path(path)
    with _open(path) as box:
        if not box.streams.video:
            raise InputError(f"{path}: no video stream")
        vs = box.streams.video[0]
        _check_size(path, vs.codec_context.width, vs.codec_context.height, max_pixels)
        _limit_decoder(vs, max_pixels)
        audio = [a.codec_context.name for a in box.streams.audio]
        rotation = 0
        count, first, last = 0, None, None
        try:
            for frame in box.decode(vs):  # the first frame only: rotation and stored size
                rotation = int(round(getattr(frame, "rotation", 0) or 0)) % 360
                break
            box.seek(0)
            for packet in box.demux(vs):
                if packet.size == 0:
                    continue
                count += 1
                if packet.pts is not None:
                    first = packet.pts if first is None else min(first, packet.pts)
                    last = packet.pts if last is None else max(last, packet.pts)
        except Exception as e:  # noqa: BLE001 - PyAV raises several kinds for damaged files
            raise _damaged(path, e, max_pixels) from None
        if count == 0:
            raise InputError(f"{path}: the video stream has no frames")
        tb = vs.time_base or Fraction(1, 90000)
        rate = vs.average_rate or vs.guessed_rate or Fraction(30)
        width, height = vs.codec_context.width, vs.codec_context.height
        listed = int(vs.frames or 0)  # the index's count: more than the packets read is a file cut short
    if rotation % 90:
        rotation = 0  # a skew the player would ignore too
    if width < 1 or height < 1:
        raise InputError(f"{path}: the video stream has no frame size")
    return ClipInfo(path, width, height, rotation, count, tb, Fraction(rate),
                    float((first or 0) * tb), float((last or 0) * tb), audio, max_pixels, listed=listed)


def _check_size(path: Path, width: int, height: int, max_pixels: int | None, index: int | None = None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        where = "its frames are" if index is None else f"frame {index} is"
        raise InputError(f"{path}: {where} {width}x{height}, {width * height:,} pixels, over the limit of "
                         f"{max_pixels:,} a frame", hint=f"scale the clip down, or raise {arg('max_pixels')} "
                         "(up to the clip limit) if it is genuine")


def _limit_decoder(stream, max_pixels: int | None) -> None:
    """The decoder allocates no frame over ``max_pixels`` (a clip that grows mid-stream fails there)."""
    if max_pixels is not None:
        stream.codec_context.options = {**stream.codec_context.options, "max_pixels": str(max_pixels)}


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """A stored frame as it is shown (``rotation`` degrees counter-clockwise)."""
    return np.ascontiguousarray(np.rot90(image, rotation // 90)) if rotation else image


def stored(image: np.ndarray, rotation: int) -> np.ndarray:
    """The inverse of ``upright``."""
    return np.ascontiguousarray(np.rot90(image, -(rotation // 90))) if rotation else image


def read_frames(info: ClipInfo):
    """(upright RGB uint8 frame, pts) for every frame, in order, one at a time. Every frame has the
    clip's size (and at most ``info.max_pixels``): the first that does not stops the reading with an
    ``InputError``; a packet that can't be decoded after the first frame ends the frames (``info.broken``
    says why: a file cut short, a damaged packet, a frame over the limit). Timestamps always increase: a frame whose timestamp repeats or goes back gets the
    next one after its predecessor's (``info.repaired`` counts them), so the aged clip keeps the order
    in which the frames are shown."""
    with _open(info.path) as box:
        vs = box.streams.video[0]
        vs.thread_type = "AUTO"
        _limit_decoder(vs, info.max_pixels)
        pts = None
        step = max(1, int(round(1 / (float(info.rate) * float(info.time_base))))) if info.rate else 1
        index = 0
        try:
            for frame in box.decode(vs):
                if (frame.width, frame.height) != (info.width, info.height):
                    _check_size(info.path, frame.width, frame.height, info.max_pixels, index)
                    raise InputError(f"{info.path}: frame {index} is {frame.width}x{frame.height}, but the clip "
                                     f"starts at {info.width}x{info.height}; a clip that changes size is not aged",
                                     hint="re-encode it at one size first")
                if frame.pts is None or (pts is not None and frame.pts <= pts):
                    if frame.pts is not None:
                        info.repaired += 1
                    pts = 0 if pts is None else pts + step
                else:
                    pts = frame.pts
                yield upright(frame.to_ndarray(format="rgb24"), info.rotation), pts
                index += 1
        except Exception as e:  # noqa: BLE001 - a damaged packet mid-clip
            import av

            if not isinstance(e, av.FFmpegError):
                raise
            size = vs.codec_context.width, vs.codec_context.height  # the stream's size where it failed
            if size != (info.width, info.height):
                _check_size(info.path, *size, info.max_pixels, index)  # grown past the limit: named as such
            if index == 0:
                raise _damaged(info.path, e, info.max_pixels) from None
            info.broken = detail(e, 160)  # the frames so far stand; age_clip says the clip ended early


def _damaged(path: Path, e: BaseException, max_pixels: int | None) -> InputError:
    """A decoder's failure as one line (with a limit, a frame over it fails the same way)."""
    what = "damaged video" if max_pixels is None else f"damaged video, or a frame over the limit of {max_pixels:,} pixels"
    return InputError(f"{path}: {what} ({detail(e, 120)})",
                      hint=None if max_pixels is None else f"raise {arg('max_pixels')} if the clip is genuine")


def check_output(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.suffix.lower() not in CLIP_SUFFIXES:
        raise UsageError(f"{arg('out', str(out))}: a clip is written as {', '.join(CLIP_SUFFIXES)}")
    return out


class ClipWriter(H264Writer):
    """The aged clip: H.264 (``agetool.video.H264Writer``) with the source's timestamps, frame rate and
    rotation, the source's audio streams copied unchanged. Frames are written upright, as read."""

    def __init__(self, out: str | os.PathLike, info: ClipInfo, crf: int = DEFAULT_CRF, preset: str = "medium",
                 marking=None):
        super().__init__(check_output(out), info.rate, crf, marking, preset=preset, time_base=info.time_base,
                         rotation=info.rotation, size=(info.width, info.height),
                         audio_from=info.path if info.audio else None, audio_codecs=info.audio)
        self.info = info

    def write(self, image: np.ndarray, pts: int) -> None:
        """One upright RGB uint8 frame of the source's size, at the source frame's ``pts``."""
        super().write(stored(image, self.info.rotation), pts)
