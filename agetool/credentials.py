"""C2PA Content Credentials: every output signed with a manifest that says how it was made.

A manifest holds the ``c2pa.actions`` assertion (an edit of the opened input for files that show
the user's pixels, a creation for generated face tiles, each with its IPTC digital source type),
the input as an ingredient, and the run record (``org.agetool.run``). Signing works offline: no
timestamp authority is asked, so the signature is as old as the certificate says it may be.

Needs the ``c2pa-python`` package (``pip install "agetool[c2pa]"``), which bundles its native
library, and ``cryptography`` to check the certificate and key before any work.
"""

from __future__ import annotations

import datetime
import io
import os
from dataclasses import dataclass
from pathlib import Path

from agetool.errors import OutputError, UsageError, arg

#: the run record's assertion label
RUN_ASSERTION = "org.agetool.run"
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
        ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime"}
#: the C2PA name of each key type's signature algorithm
_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}, "verify": {"remote_manifest_fetch": False,
                                                                      "ocsp_fetch": False}}


def _c2pa(what: str = "sign"):
    try:
        import c2pa
    except ImportError:
        raise UsageError(f"{arg(what)} needs the c2pa-python package",
                         hint='pip install "agetool[c2pa]"') from None
    return c2pa


def _settings_context(c2pa):
    return c2pa.Context(c2pa.Settings.from_dict(_SETTINGS))


@dataclass(frozen=True)
class Signing:
    """A certificate chain (PEM, the signer's certificate first) and its private key, checked."""

    chain: bytes
    key: bytes
    alg: str  # es256 | es384 | es512 | ps256 | ed25519
    subject: str

    @classmethod
    def load(cls, chain: str | os.PathLike, key: str | os.PathLike, *, now: datetime.datetime | None = None) -> "Signing":
        """Read and check ``chain`` and ``key`` (``UsageError`` naming the argument: missing,
        unreadable, not PEM, expired or not yet valid, or a key that is not the certificate's)."""
        c2pa = _c2pa("sign")
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        chain_bytes = _read("sign", chain)
        key_bytes = _read("sign_key", key)
        try:
            certs = x509.load_pem_x509_certificates(chain_bytes)
        except ValueError:
            raise UsageError(f"{arg('sign', chain)}: not a PEM certificate chain") from None
        try:
            private = serialization.load_pem_private_key(key_bytes, password=None)
        except TypeError:
            raise UsageError(f"{arg('sign_key', key)}: the key is encrypted; give an unencrypted PEM key") from None
        except (ValueError, Exception) as e:  # noqa: BLE001 - cryptography raises several kinds for bad keys
            raise UsageError(f"{arg('sign_key', key)}: not a PEM private key ({str(e).splitlines()[0][:80]})") from None
        leaf = certs[0]
        now = now or datetime.datetime.now(datetime.timezone.utc)
        if now > leaf.not_valid_after_utc:
            raise UsageError(f"{arg('sign', chain)}: the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}",
                             hint="renew it")
        if now < leaf.not_valid_before_utc:
            raise UsageError(f"{arg('sign', chain)}: the certificate is valid only from "
                             f"{leaf.not_valid_before_utc:%Y-%m-%d}")
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        if (private.public_key().public_bytes(serialization.Encoding.DER, pub)
                != leaf.public_key().public_bytes(serialization.Encoding.DER, pub)):
            raise UsageError(f"{arg('sign_key', key)}: the key is not the one of the certificate in {chain}")
        if isinstance(private, ec.EllipticCurvePrivateKey):
            alg = {256: "es256", 384: "es384", 521: "es512"}.get(private.curve.key_size)
        elif isinstance(private, ed25519.Ed25519PrivateKey):
            alg = "ed25519"
        elif isinstance(private, rsa.RSAPrivateKey):
            alg = "ps256"
        else:
            alg = None
        if alg is None:
            raise UsageError(f"{arg('sign_key', key)}: a {type(private).__name__} key can't sign C2PA manifests",
                             hint="use an EC P-256 (ES256), P-384, Ed25519 or RSA key")
        signing = cls(chain_bytes, key_bytes, alg, leaf.subject.rfc4514_string())
        try:  # what the C2PA library itself refuses (a chain it can't use), refused here before any work
            signing._signer(c2pa).close()
        except c2pa.C2paError as e:
            raise UsageError(f"{arg('sign', chain)}: the C2PA library refuses this certificate and key "
                             f"({str(e).splitlines()[0][:120]})") from None
        return signing

    def _signer(self, c2pa):
        info = c2pa.C2paSignerInfo(self.alg.encode(), self.chain, self.key, None)  # None: no timestamp authority
        return c2pa.Signer.from_info(info)


def _read(name: str, path: str | os.PathLike) -> bytes:
    path = Path(path)
    try:
        if not path.is_file():
            raise UsageError(f"{arg(name, path)}: no such file")
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{arg(name, path)}: can't read it ({e.strerror})") from None
    if not data.strip():
        raise UsageError(f"{arg(name, path)}: empty file")
    return data


def manifest(marking, title: str, mime: str, parent: bool = True) -> dict:
    """The manifest definition of one output (``marking``: an ``agetool.provenance.Marking``;
    ``parent``: whether the input is its parent ingredient, else the file is a creation)."""
    from agetool import __version__

    agent = {"name": "agetool", "version": __version__}
    source = marking.source_url
    if marking.generated or not parent:
        actions = [{"action": "c2pa.created", "softwareAgent": agent,
                    **({"digitalSourceType": source} if source is not None else {})}]
    else:
        actions = [{"action": "c2pa.opened", "softwareAgent": agent,
                    "parameters": {"ingredientIds": ["parent"]}}]
        if source is not None:
            actions.append({"action": "c2pa.edited", "digitalSourceType": source, "softwareAgent": agent,
                            "description": "faces aged by a generative model"})
        else:
            actions.append({"action": "c2pa.cropped", "softwareAgent": agent})
    assertions = [{"label": "c2pa.actions", "data": {"actions": actions}}]
    if marking.record is not None:
        assertions.append({"label": RUN_ASSERTION, "data": marking.record.to_dict()})
    return {"claim_generator_info": [agent], "title": title, "format": mime, "assertions": assertions}


def _parent_kind(marking) -> str | None:
    """The media type of the marking's input file where the C2PA library can read it as an ingredient."""
    parent = marking.parent
    return None if parent is None or not Path(parent).is_file() else MIME.get(Path(parent).suffix.lower())


def signable(marking) -> bool:
    """Whether a file of ``marking`` has something true to sign: generated or edited pixels, or the
    user's own pixels (an input crop) opened from an input file it can name. An input crop whose
    photo is no file here (an array, a URI, an upload gone) is left unsigned: a manifest must say how
    it was made, and agetool did not make it."""
    return marking.source_url is not None or _parent_kind(marking) is not None


def _builder(c2pa, marking, title: str, mime: str):
    parent = marking.parent
    kind = _parent_kind(marking)
    # inputs the C2PA library reads are the ingredient; others are named by the record's sha256 only
    builder = c2pa.Builder(manifest(marking, title, mime, parent=kind is not None), _settings_context(c2pa))
    if kind is not None:
        relationship = "inputTo" if marking.generated else "parentOf"
        with open(parent, "rb") as f:
            builder.add_ingredient({"title": Path(parent).name, "relationship": relationship, "label": "parent"},
                                   kind, f)
    return builder


def sign_bytes(data: bytes, mime: str, marking, title: str = "image") -> bytes:
    """``data`` (an encoded image) with an embedded C2PA manifest signed by ``marking.signing``
    (as it is where there is nothing to sign: ``signable``)."""
    if not signable(marking):
        return data
    c2pa = _c2pa()
    out = io.BytesIO()
    try:
        with _builder(c2pa, marking, title, mime) as builder, marking.signing._signer(c2pa) as signer:
            builder.sign(signer, mime, io.BytesIO(data), out)
    except c2pa.C2paError as e:
        raise OutputError(f"signing the {mime} output failed: {str(e).splitlines()[0][:160]}") from None
    return out.getvalue()


def sign_file(path: str | os.PathLike, dest: str | os.PathLike, marking, title: str) -> None:
    """The file ``path`` signed into ``dest`` (``title``: the output's final name)."""
    c2pa = _c2pa()
    path = Path(path)
    mime = MIME.get(path.suffix.lower())
    if mime is None:
        return
    try:
        with open(path, "rb") as src, open(dest, "w+b") as dst, \
                _builder(c2pa, marking, title, mime) as builder, marking.signing._signer(c2pa) as signer:
            builder.sign(signer, mime, src, dst)
    except c2pa.C2paError as e:
        raise OutputError(f"signing {title} failed: {str(e).splitlines()[0][:160]}") from None


def read_credentials(path: str | os.PathLike) -> dict | None:
    """The Content Credentials of a file: ``None`` when the C2PA library is not installed, else a
    dict: ``present`` (whether it carries a manifest), and when it does ``state`` (Valid, Invalid,
    Trusted ...), ``signer``, ``actions`` (name and digital source type), ``failures`` (validation
    codes that failed, such as ``signingCredential.untrusted``) and ``run`` (the run record)."""
    try:
        import c2pa
    except ImportError:
        return None
    path = Path(path)
    mime = MIME.get(path.suffix.lower())
    if mime is None:
        return {"present": False, "unsupported": True}
    try:
        with open(path, "rb") as f, c2pa.Reader(mime, f, None,
                                                  _settings_context(c2pa)) as reader:
            active = reader.get_active_manifest() or {}
            state = reader.get_validation_state()
            results = reader.get_validation_results() or {}
    except c2pa.C2paError as e:
        text = str(e)
        if "ManifestNotFound" in type(e).__name__ or "not found" in text.lower() or "JumbfNotFound" in text:
            return {"present": False}
        return {"present": True, "state": "Unreadable", "error": text.splitlines()[0][:160] if text else type(e).__name__}
    actions, run = [], None
    for a in active.get("assertions", []):
        if a.get("label", "").startswith("c2pa.actions"):
            actions += [{"action": x.get("action"), "digital_source_type": x.get("digitalSourceType")}
                        for x in a.get("data", {}).get("actions", [])]
        elif a.get("label") == RUN_ASSERTION:
            run = a.get("data")
    failures = [f.get("code") for f in results.get("activeManifest", {}).get("failure", [])]
    info = active.get("signature_info", {})
    return {"present": True, "state": state, "signer": info.get("common_name") or info.get("issuer"),
            "issuer": info.get("issuer"), "actions": actions, "failures": failures, "run": run,
            "ingredients": [i.get("title") for i in active.get("ingredients", [])]}
