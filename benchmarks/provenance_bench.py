"""What marking outputs costs: images (encode with and without the XMP, the insertion alone, the
run record), clips (writing frames against marking the finished file and hashing the source), the
visible label per frame, and signing (with c2pa-python installed).

    python -m benchmarks.provenance_bench
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _record():
    from agetool import __version__
    from agetool.models import registry_model
    from agetool.provenance import FaceRecord, Record

    models = tuple(registry_model(n) for n in ("lats-male", "dlib-landmarks68", "deeplab-parser", "genderage"))
    return Record(__version__, models, 0, 0.2, ("5", "20", "+20", "60"), (FaceRecord(34.2, (5.0, 20.0, 54.2, 60.0)),),
                  "0" * 64)


def images(repeat: int) -> list[tuple]:
    from agetool.images import encode_image
    from agetool.provenance import COMPOSITE, Marking, embed_jpeg, embed_png

    marking = Marking(COMPOSITE, _record())
    rng = np.random.default_rng(0)
    rows = []
    for what, shape, name in (("tile 256 px", (256, 256, 3), "t.png"), ("grid 7 x 256 px", (256, 1792, 3), "g.png"),
                              ("grid 7 x 256 px", (256, 1792, 3), "g.jpg"), ("photo 1920x1080", (1080, 1920, 3), "p.png"),
                              ("photo 1920x1080", (1080, 1920, 3), "p.jpg")):
        image = np.ascontiguousarray(np.clip(rng.normal(128, 40, shape), 0, 255).astype(np.uint8))
        plain = _ms(lambda: encode_image(image, name), repeat)
        marked = _ms(lambda: encode_image(image, name, marking), repeat)
        data = encode_image(image, name)
        xmp = marking.xmp()
        embed = embed_png if name.endswith(".png") else embed_jpeg
        insert = _ms(lambda: embed(data, xmp), repeat * 5)
        rows.append((f"{what} {Path(name).suffix[1:].upper()}", f"{plain:.2f}", f"{marked:.2f}", f"{insert:.3f}",
                     f"{len(xmp):,}"))
    return rows


def per_photo(repeat: int) -> list[tuple]:
    """What a photo's outputs share: its run record (registry look-ups, the photo's sha256) and the
    XMP packet (made once, then reused by every file of the photo)."""
    from agetool.provenance import COMPOSITE, source_sha256, xmp_packet

    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo.jpg"
        photo.write_bytes(np.random.default_rng(2).integers(0, 256, 5_000_000, dtype=np.uint8).tobytes())
        record_ms = _ms(_record, repeat)
        hash_ms = _ms(lambda: source_sha256(photo), repeat)
    record = _record()
    packet_ms = _ms(lambda: (xmp_packet.cache_clear(), xmp_packet(COMPOSITE, record)), repeat * 5)
    return [("run record: four registry models (licence, sha256)", f"{record_ms:.2f}"),
            ("sha256 of a 5 MB photo", f"{hash_ms:.2f}"), ("XMP packet, made once per photo and kind", f"{packet_ms:.3f}")]


def clip(frames: int, size: tuple[int, int]) -> list[tuple]:
    from agetool.clip.media import ClipInfo, ClipWriter
    from agetool.images import disclose
    from agetool.provenance import COMPOSITE, Marking, mark_video, source_sha256
    from fractions import Fraction

    w, h = size
    rng = np.random.default_rng(1)
    base = np.clip(rng.normal(128, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        info = ClipInfo(Path(tmp) / "src.mp4", w, h, 0, frames, Fraction(1, 30), Fraction(30), 0.0, frames / 30)
        out = Path(tmp) / "out.mp4"
        t0 = time.perf_counter()
        with ClipWriter(out, info) as writer:
            for i in range(frames):
                writer.write(np.roll(base, 4 * i, axis=1), i)
        write_s = time.perf_counter() - t0
        marking = Marking(COMPOSITE, _record())
        t0 = time.perf_counter()
        mark_video(out, marking)
        mark_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        source_sha256(out)  # what hashing a source clip of this size costs
        hash_s = time.perf_counter() - t0
        label_ms = _ms(lambda: disclose(base), 20)
        mb = out.stat().st_size / 1e6
    return [(f"{frames} frames {w}x{h} ({mb:.1f} MB)", f"{write_s:.2f}", f"{mark_s * 1000:.2f}",
             f"{hash_s * 1000:.2f}", f"{100 * (mark_s + hash_s) / write_s:.3f} %", f"{label_ms:.2f}")]


def signing(repeat: int) -> list[tuple]:
    try:
        import c2pa  # noqa: F401
    except ImportError:
        return [("signing", "-", "c2pa-python not installed")]
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from agetool.credentials import Signing, sign_bytes
    from agetool.images import encode_image
    from agetool.provenance import COMPOSITE, Marking

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    with tempfile.TemporaryDirectory() as tmp:
        pem = serialization.Encoding.PEM
        (Path(tmp) / "c.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
        (Path(tmp) / "k.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
        signer = Signing.load(Path(tmp) / "c.pem", Path(tmp) / "k.pem")
    marking = Marking(COMPOSITE, _record(), signer)
    data = encode_image(np.full((256, 1792, 3), 100, np.uint8), "g.png", Marking(COMPOSITE, _record()))
    ms = _ms(lambda: sign_bytes(data, "image/png", marking), repeat)
    return [("sign a 7 x 256 px grid PNG (ES256, no ingredient)", f"{ms:.1f}", "optional (--sign)")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--frames", type=int, default=90)
    args = ap.parse_args()
    print("| image | encode ms | encode + marking ms | XMP insertion ms | XMP bytes |")
    print("|---|---:|---:|---:|---:|")
    for row in images(args.repeat):
        print("| " + " | ".join(row) + " |")
    print()
    print("| once per photo | ms |")
    print("|---|---:|")
    for row in per_photo(args.repeat):
        print("| " + " | ".join(row) + " |")
    print()
    print("| clip | writing s | marking ms | source sha256 ms | marking share | label ms/frame |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in ((640, 360), (1280, 720)):
        for row in clip(args.frames, size):
            print("| " + " | ".join(row) + " |")
    print()
    print("| signing | ms | note |")
    print("|---|---:|---|")
    for row in signing(3):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
