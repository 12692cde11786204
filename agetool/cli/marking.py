"""What the outputs say about themselves, on the command line: ``--commercial-safe``, ``--sign`` /
``--sign-key`` (C2PA Content Credentials) and ``--label`` (a visible mark). Every output is marked
as AI-made, with its run record, whatever the flags (``agetool.provenance``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

from agetool.cli.options import _opt, _with_params

PANEL = "Provenance options"

MARKING = [
    _opt("commercial_safe", bool, False, "--commercial-safe", "Refuse, before any work, every model whose "
         "registry licence is non-commercial (the LATS generators and face parser are CC BY-NC-SA 4.0): give "
         "models of your own with --weights, --parser-weights (or --no-mask), --age-model and --landmarks fan.",
         PANEL),
    _opt("sign", Optional[Path], None, "--sign", "Sign every output with C2PA Content Credentials: the "
         "certificate chain (PEM, the signer's certificate first). Offline, no timestamp authority. Needs "
         "--sign-key and pip install \"agetool\\[c2pa]\".", PANEL, dir_okay=False, metavar="CHAIN.pem"),
    _opt("sign_key", Optional[Path], None, "--sign-key", "The private key (PEM) of --sign's certificate.", PANEL,
         dir_okay=False, metavar="KEY.pem"),
    _opt("label", bool, False, "--label", "Write a small visible \"AI-aged\" mark in a corner of paste-back "
         "photos, their videos and clips.", PANEL),
]


@dataclass(frozen=True)
class Marks:
    """The provenance flags, checked: ``signing`` is an ``agetool.credentials.Signing`` or None."""

    commercial_safe: bool = False
    signing: object = None
    label: bool = False

    def check_models(self, build, face_kwargs: dict, *, clip: bool = False) -> None:
        """With ``--commercial-safe``, refuse (exit 2) every non-commercial registry model this run
        would use, naming each with its licence; before any work."""
        if not self.commercial_safe:
            return
        from agetool.errors import UsageError
        from agetool.needs import pipeline_files
        from agetool.models import registry_model

        opts = build.options
        model = opts.get("model", "auto")  # a generator file (--weights) needs no registry file
        models = SimpleNamespace(landmarks=opts.get("landmarks", "auto"), parser_weights=opts.get("parser_weights"),
                                 classifier_weights=opts.get("classifier_weights"),
                                 upscale_weights=opts.get("upscale_weights"))
        mask = face_kwargs.get("mask", True)
        parser = mask or face_kwargs.get("paste_back", False) or clip or (face_kwargs.get("candidates") or 1) > 1
        groups = pipeline_files(models, model, parser=parser, classifier=True,
                                upscale=bool(face_kwargs.get("upscale")))
        names = list(dict.fromkeys(n for group in groups for n in group))
        refused = [m for m in map(registry_model, names) if m.non_commercial]
        if refused:
            listed = ", ".join(f"{m.name} ({m.license})" for m in refused)
            raise UsageError(f"--commercial-safe: these models are licensed for non-commercial use only: {listed}",
                             hint="give models of your own: --weights FILE, --parser-weights FILE (or --no-mask), "
                                  "--age-model FILE, --landmarks fan")

    def apply(self, result):
        """``result`` (an ``AgingResult``) to be written signed and labelled as asked."""
        result.signing = self.signing
        result.label = self.label
        return result


def _marks(chosen: dict) -> Marks:
    from agetool.errors import UsageError

    sign, key = chosen.get("sign"), chosen.get("sign_key")
    if (sign is None) != (key is None):
        raise UsageError("--sign and --sign-key go together: the certificate chain and its private key")
    signing = None
    if sign is not None:
        from agetool.credentials import Signing

        signing = Signing.load(sign, key)  # a bad certificate or key: one line, exit 2, before any work
    return Marks(bool(chosen.get("commercial_safe")), signing, bool(chosen.get("label")))


def marking_options(fn):
    """Adds the provenance flags; the command gets ``marks`` (a ``Marks``), checked when it starts."""
    return _with_params(fn, MARKING, "marks", _marks)
