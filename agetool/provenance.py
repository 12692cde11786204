"""What every output says about itself: that it is AI-made (IPTC digital source type), how it was
made (the run record) and under which licences, as XMP inside the file.

- PNG: an ``iTXt`` chunk with the keyword ``XML:com.adobe.xmp``, right after ``IHDR``;
- JPEG: an APP1 segment ``http://ns.adobe.com/xap/1.0/``, right after the JFIF header;
- WebP: the ``XMP `` chunk (written by Pillow);
- MP4 / MOV: a top-level ``uuid`` box (the XMP UUID) after the movie's boxes, so the sample
  offsets stay valid and the file plays as it did.

The bytes are a function of the run (no clock, no random identifiers): the same run gives the same
file. Content Credentials (C2PA, signed) are ``agetool.credentials``'s; they wrap these bytes.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from agetool.errors import InputError, OutputError

#: IPTC NewsCodes digital source types (the vocabulary's terms; the property holds the full URL)
SOURCE_TYPES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
GENERATED = "trainedAlgorithmicMedia"  # made wholly by a trained model (aged face tiles)
COMPOSITE = "compositeWithTrainedAlgorithmicMedia"  # generated faces in the user's own pixels
#: agetool's own XMP namespace (the run record)
NS = "http://ns.agetool.org/run/1.0/"
IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XMP_RIGHTS = "http://ns.adobe.com/xap/1.0/rights/"
XMP_BASIC = "http://ns.adobe.com/xap/1.0/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
#: the ``uuid`` box type of XMP in ISO media files (BE7ACFCB-97A9-42E8-9C71-999491E3AFAC)
XMP_UUID = bytes.fromhex("BE7ACFCB97A942E89C71999491E3AFAC")
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
MAX_XMP = 1 << 20  # what inspect reads of a packet; a record is a few kB


@dataclass(frozen=True)
class ModelUse:
    """A model that shaped the output: its registry name (or ``own file``), sha256 and licence."""

    name: str
    sha256: str | None
    license: str
    non_commercial: bool = False


@dataclass(frozen=True)
class FaceRecord:
    """One face: its estimated age and what each asked age became, in years."""

    estimated_age: float | None
    years: tuple[float, ...] = ()
    seed: int | None = None  # the noise draw kept for this face when several were scored (else the run's)


@dataclass(frozen=True)
class Record:
    """How an output was made. Never a path: ``source_sha256`` names the input by its content."""

    version: str
    models: tuple[ModelUse, ...] = ()
    seed: int | None = None
    noise: float | None = None
    ages: tuple[str, ...] = ()  # as asked: 30, 30-39, +20
    faces: tuple[FaceRecord, ...] = ()
    source_sha256: str | None = None
    medium: str = "photo"  # photo | video | clip

    @property
    def usage_terms(self) -> str:
        """One sentence naming every model's licence (what ``xmpRights:UsageTerms`` holds)."""
        if not self.models:
            return "Made with agetool."
        parts = [f"{m.name} ({m.license})" for m in self.models]
        text = "Made with agetool from models under these licences: " + "; ".join(parts) + "."
        if any(m.non_commercial for m in self.models):
            text += " Non-commercial use only, as those licences require."
        return text

    def to_dict(self) -> dict:
        return {"version": self.version, "medium": self.medium, "seed": self.seed, "noise": self.noise,
                "ages": list(self.ages), "source_sha256": self.source_sha256,
                "models": [{"name": m.name, "sha256": m.sha256, "license": m.license,
                            "non_commercial": m.non_commercial} for m in self.models],
                "faces": [face_dict(f.estimated_age, self.ages, f.years, f.seed) for f in self.faces]}


def face_dict(estimated_age, asked, years, seed=None) -> dict:
    """One face of a record as a dict: its estimated age, and each age asked with what it became
    (pairs, not two parallel lists: readers need not line them up); ``seed`` where its own."""
    out = {"estimated_age": estimated_age, "ages": [{"asked": a, "years": y} for a, y in zip(asked, years)]}
    if seed is not None:
        out["seed"] = seed
    return out


@dataclass(frozen=True)
class Marking:
    """What one output file says about itself: its digital source type (None: the user's own pixels,
    shown beside generated ones: the input tile), the run record, and how it is signed (an
    ``agetool.credentials.Signing``, None: not signed; ``parent``: the input, its ingredient)."""

    source_type: str | None = COMPOSITE
    record: Record | None = None
    signing: object = field(default=None, compare=False)
    parent: str | None = field(default=None, compare=False)

    @property
    def source_url(self) -> str | None:
        """The digital source type as the full IPTC NewsCodes URL (what C2PA actions hold)."""
        return None if self.source_type is None else SOURCE_TYPES + self.source_type

    @property
    def generated(self) -> bool:
        """Whether the pixels are wholly generated (a creation, not an edit of the input)."""
        return self.source_type == GENERATED

    def as_type(self, source_type: str | None) -> "Marking":
        return replace(self, source_type=source_type)

    def xmp(self) -> bytes:
        return xmp_packet(self.source_type, self.record)

    def embed(self, data: bytes, fmt: str) -> bytes:
        """An encoded image (``fmt``: PNG, JPEG, WEBP ...) marked (and signed) as ``mark_bytes`` does:
        what ``agetool.images.encode_image`` calls."""
        return mark_bytes(data, fmt, self)


def _number(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _seq(tag: str, items: list[str]) -> str:
    if not items:
        return ""
    lis = "".join(f"<rdf:li>{escape(i)}</rdf:li>" for i in items)
    return f"<agetool:{tag}><rdf:Seq>{lis}</rdf:Seq></agetool:{tag}>"


def _resources(tag: str, rows: list[dict]) -> str:
    if not rows:
        return ""
    lis = "".join("<rdf:li rdf:parseType=\"Resource\">" + "".join(
        f"<agetool:{k}>{escape(v)}</agetool:{k}>" for k, v in row.items() if v is not None) + "</rdf:li>"
        for row in rows)
    return f"<agetool:{tag}><rdf:Seq>{lis}</rdf:Seq></agetool:{tag}>"


@functools.lru_cache(maxsize=64)  # every tile of a photo has one of three packets
def xmp_packet(source_type: str | None, record: Record | None) -> bytes:
    """The XMP packet (UTF-8, no padding) of a marking: deterministic for the same values."""
    from agetool import __version__

    attrs = [f"xmp:CreatorTool={quoteattr('agetool ' + (record.version if record else __version__))}"]
    if source_type is not None:
        attrs.append(f"Iptc4xmpExt:DigitalSourceType={quoteattr(SOURCE_TYPES + source_type)}")
    body = ""
    if record is not None:
        attrs.append(f"agetool:Version={quoteattr(record.version)}")
        attrs.append(f"agetool:Medium={quoteattr(record.medium)}")
        for name, value in (("Seed", record.seed), ("Noise", record.noise), ("SourceSHA256", record.source_sha256)):
            if value is not None:
                attrs.append(f"agetool:{name}={quoteattr(_number(value))}")
        terms = escape(record.usage_terms)
        body = (f"<xmpRights:UsageTerms><rdf:Alt><rdf:li xml:lang=\"x-default\">{terms}</rdf:li></rdf:Alt>"
                f"</xmpRights:UsageTerms>"
                + _resources("Models", [{"Name": m.name, "SHA256": m.sha256, "License": m.license,
                                         "NonCommercial": "True" if m.non_commercial else "False"}
                                        for m in record.models])
                + _seq("AgesAsked", list(record.ages))
                + _resources("Faces", [{"EstimatedAge": None if f.estimated_age is None else _number(float(f.estimated_age)),
                                        "AgesYears": ", ".join(_number(float(y)) for y in f.years),
                                        "Seed": None if f.seed is None else str(f.seed)}
                                       for f in record.faces]))
    text = ("<?xpacket begin=\"\ufeff\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>"
            "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"" + RDF + "\">"
            "<rdf:Description rdf:about=\"\" xmlns:xmp=\"" + XMP_BASIC + "\" xmlns:Iptc4xmpExt=\"" + IPTC_EXT
            + "\" xmlns:xmpRights=\"" + XMP_RIGHTS + "\" xmlns:agetool=\"" + NS + "\" " + " ".join(attrs) + ">"
            + body + "</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end=\"r\"?>")
    return text.encode("utf-8")


# ---------------------------------------------------------------- writing into files
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def embed_png(data: bytes, xmp: bytes) -> bytes:
    """``data`` (a PNG) with an uncompressed ``iTXt`` XMP chunk after ``IHDR``."""
    if data[:8] != _PNG or data[12:16] != b"IHDR":
        raise OutputError("not a PNG stream to mark")
    end = 8 + 12 + struct.unpack(">I", data[8:12])[0]
    chunk = _png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp)
    return data[:end] + chunk + data[end:]


def embed_jpeg(data: bytes, xmp: bytes) -> bytes:
    """``data`` (a JPEG) with an APP1 XMP segment after SOI and any APP0 (JFIF) segment."""
    if data[:2] != b"\xff\xd8":
        raise OutputError("not a JPEG stream to mark")
    payload = _JPEG_XMP + xmp
    if len(payload) + 2 > 0xFFFF:
        raise OutputError("the XMP record is too large for one JPEG segment")
    pos = 2
    if data[2:4] == b"\xff\xe0":  # JFIF stays first, as readers expect
        pos = 4 + struct.unpack(">H", data[4:6])[0]
    return data[:pos] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[pos:]


def mark_bytes(data: bytes, fmt: str, marking: Marking | None) -> bytes:
    """An encoded image (``fmt``: PNG, JPEG) with ``marking``'s XMP, signed when it asks for it.
    Other formats come back as they are (WebP is marked by its encoder, BMP holds no metadata)."""
    if marking is None:
        return data
    if fmt == "PNG":
        data = embed_png(data, marking.xmp())
    elif fmt == "JPEG":
        data = embed_jpeg(data, marking.xmp())
    if marking.signing is not None and fmt in ("PNG", "JPEG", "WEBP"):
        from agetool.credentials import sign_bytes

        data = sign_bytes(data, "image/" + fmt.lower(), marking)
    return data


def uuid_box(xmp: bytes) -> bytes:
    """An ISO media ``uuid`` box holding ``xmp``."""
    return struct.pack(">I", 8 + 16 + len(xmp)) + b"uuid" + XMP_UUID + xmp


def mark_video(path: str | os.PathLike, marking: Marking | None, title: str | None = None) -> None:
    """Mark a finished MP4 / MOV file in place (its temporary name, before the rename): the XMP box is
    appended at the top level, after the boxes that hold and index the frames. Matroska files are
    marked by their writer (tags), as the container has no XMP box. ``title``: the file's final
    name, for its Content Credentials."""
    if marking is None:
        return
    path = Path(path)
    if path.suffix.lower() in (".mp4", ".mov", ".m4v"):
        with open(path, "ab") as f:
            f.write(uuid_box(marking.xmp()))
    if marking.signing is not None and path.suffix.lower() in (".mp4", ".mov", ".m4v"):
        from agetool.credentials import sign_file, signable
        from agetool.files import replacing

        if not signable(marking):
            return
        with replacing(path, errors=False) as signed:  # the signed copy replaces the file
            sign_file(path, signed, marking, title or path.name)


def source_sha256(image) -> str | None:
    """The sha256 of an input: a file's bytes, or an array's pixels; None for anything else."""
    import numpy as np

    if isinstance(image, (str, os.PathLike)):
        digest = hashlib.sha256()
        try:
            with open(image, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            return None
        return digest.hexdigest()
    if isinstance(image, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
    return None


def matroska_tags(marking: Marking | None) -> dict[str, str]:
    """The marking as Matroska tags (the container has no XMP box): the digital source type, the
    usage terms and the record (JSON)."""
    if marking is None:
        return {}
    import json

    tags = {}
    if marking.source_type is not None:
        tags["DIGITAL_SOURCE_TYPE"] = SOURCE_TYPES + marking.source_type
    if marking.record is not None:
        tags["USAGE_TERMS"] = marking.record.usage_terms
        tags["AGETOOL_RECORD"] = json.dumps(marking.record.to_dict(), sort_keys=True, separators=(",", ":"))
    return tags


# ---------------------------------------------------------------- reading back
def _png_xmp(data: bytes) -> bytes | None:
    pos = 8
    while pos + 12 <= len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"iTXt" and body.startswith(b"XML:com.adobe.xmp\x00"):
            rest = body[len(b"XML:com.adobe.xmp\x00"):]
            compressed = rest[:1] == b"\x01"
            rest = rest[2:]
            rest = rest[rest.index(b"\x00") + 1:]  # language tag
            rest = rest[rest.index(b"\x00") + 1:]  # translated keyword
            return zlib.decompressobj().decompress(rest, MAX_XMP) if compressed else rest
        if kind == b"IEND":
            break
        pos += 12 + n
    return None


def _jpeg_xmp(data: bytes) -> bytes | None:
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no metadata after this
            break
        n = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        body = data[pos + 4:pos + 2 + n]
        if marker == 0xE1 and body.startswith(_JPEG_XMP):
            return body[len(_JPEG_XMP):]
        pos += 2 + n
    return None


def _boxes(f, end: int):
    """(type, start of body, body size) of the top-level boxes of an ISO media file."""
    pos = 0
    while pos + 8 <= end:
        f.seek(pos)
        head = f.read(16)
        size, kind = struct.unpack(">I4s", head[:8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", head[8:16])[0], 16
        elif size == 0:
            size = end - pos
        if size < header:
            return
        yield kind, pos + header, size - header
        pos += size


def _mp4_xmp(path: Path) -> bytes | None:
    with open(path, "rb") as f:
        end = f.seek(0, 2)
        for kind, start, size in _boxes(f, end):
            if kind == b"uuid" and size >= 16:
                f.seek(start)
                if f.read(16) == XMP_UUID:
                    return f.read(min(size - 16, MAX_XMP))
    return None


def read_xmp(path: str | os.PathLike) -> bytes | None:
    """The XMP packet a file carries (PNG, JPEG, WebP, MP4 / MOV), None when it has none."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head[4:8] == b"ftyp" or head[4:8] in (b"moov", b"mdat", b"free", b"wide", b"uuid"):
        return _mp4_xmp(path)
    if path.stat().st_size > 512 << 20:
        return None
    data = path.read_bytes()
    if data[:8] == _PNG:
        return _png_xmp(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_xmp(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        pos = 12
        while pos + 8 <= len(data):
            kind, n = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
            if kind == b"XMP ":
                return data[pos + 8:pos + 8 + n]
            pos += 8 + n + (n & 1)
    return None


def parse_xmp(xmp: bytes) -> dict:
    """The marking found in an XMP packet: ``digital_source_type`` (the IPTC term or URL, None when
    absent), ``usage_terms``, ``creator_tool`` and ``record`` (agetool's, as ``Record.to_dict``
    gives; None when the packet holds none)."""
    import xml.etree.ElementTree as ET

    if b"<!DOCTYPE" in xmp or b"<!ENTITY" in xmp:
        raise InputError("the file's XMP declares a document type; it is not read")
    try:
        root = ET.fromstring(xmp.decode("utf-8", "replace").lstrip("\ufeff"))
    except ET.ParseError as e:
        raise InputError(f"the file's XMP is not well-formed ({e})") from None
    out: dict = {"digital_source_type": None, "usage_terms": None, "creator_tool": None, "record": None}
    A = f"{{{NS}}}"
    for desc in root.iter(f"{{{RDF}}}Description"):
        dst = desc.get(f"{{{IPTC_EXT}}}DigitalSourceType") or _text(desc.find(f"{{{IPTC_EXT}}}DigitalSourceType"))
        out["digital_source_type"] = out["digital_source_type"] or dst
        out["creator_tool"] = out["creator_tool"] or desc.get(f"{{{XMP_BASIC}}}CreatorTool")
        terms = desc.find(f"{{{XMP_RIGHTS}}}UsageTerms")
        if terms is not None:
            out["usage_terms"] = next((li.text for li in terms.iter(f"{{{RDF}}}li")), None)
        if desc.get(A + "Version") is None:
            continue

        def number(text, kind=float):
            try:
                return None if text is None else kind(text)
            except ValueError:
                return None

        models = [{"name": _text(li.find(A + "Name")), "sha256": _text(li.find(A + "SHA256")),
                   "license": _text(li.find(A + "License")),
                   "non_commercial": _text(li.find(A + "NonCommercial")) == "True"}
                  for li in _items(desc.find(A + "Models"))]
        asked = [li.text or "" for li in _items(desc.find(A + "AgesAsked"))]
        faces = [face_dict(number(_text(li.find(A + "EstimatedAge"))), asked,
                           [number(y) for y in (_text(li.find(A + "AgesYears")) or "").split(", ") if y],
                           number(_text(li.find(A + "Seed")), int))
                 for li in _items(desc.find(A + "Faces"))]
        out["record"] = {"version": desc.get(A + "Version"), "medium": desc.get(A + "Medium"),
                         "seed": number(desc.get(A + "Seed"), int), "noise": number(desc.get(A + "Noise")),
                         "ages": asked,
                         "source_sha256": desc.get(A + "SourceSHA256"), "models": models, "faces": faces}
    return out


def _text(node) -> str | None:
    return None if node is None else node.text


def _items(node) -> list:
    return [] if node is None else list(node.iter(f"{{{RDF}}}li"))


def describe(path: str | os.PathLike) -> dict:
    """What a file says about itself, for ``agetool inspect``: ``file``, ``marked`` (whether it
    carries XMP with a digital source type or an agetool record), ``digital_source_type`` (the IPTC
    term, without its URL), ``usage_terms``, ``record``, and ``content_credentials``
    (``agetool.credentials.read_credentials``: None when the C2PA library is not installed)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file", hint="check the path")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    try:
        xmp = read_xmp(path)
    except OSError as e:
        raise InputError(f"{path}: can't read it ({e.strerror})") from None
    found = parse_xmp(xmp) if xmp else _matroska_marking(path)
    dst = found["digital_source_type"]
    if dst and dst.startswith(SOURCE_TYPES):
        dst = dst[len(SOURCE_TYPES):]
    from agetool.credentials import read_credentials

    credentials = read_credentials(path)
    return {"file": str(path), "marked": bool(dst or found["record"]), "digital_source_type": dst,
            "usage_terms": found["usage_terms"], "creator_tool": found["creator_tool"], "record": found["record"],
            "content_credentials": credentials}


def _matroska_marking(path: Path) -> dict:
    """``parse_xmp``'s answer from a Matroska file's tags (``matroska_tags``); empty for other files."""
    import json

    out = {"digital_source_type": None, "usage_terms": None, "creator_tool": None, "record": None}
    with open(path, "rb") as f:
        if f.read(4) != b"\x1a\x45\xdf\xa3":
            return out
    import av

    try:
        with av.open(str(path)) as box:
            tags = {k.upper(): v for k, v in box.metadata.items()}
    except (av.FFmpegError, OSError):
        return out
    out["digital_source_type"] = tags.get("DIGITAL_SOURCE_TYPE")
    out["usage_terms"] = tags.get("USAGE_TERMS")
    try:
        record = json.loads(tags["AGETOOL_RECORD"]) if "AGETOOL_RECORD" in tags else None
    except ValueError:
        record = None
    out["record"] = record if isinstance(record, dict) and "version" in record else None
    return out
