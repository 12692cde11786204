"""``agetool inspect FILE``: what an image or video says about itself (AI marking, run record,
licences, Content Credentials)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agetool.cli import console

#: how the IPTC digital source types read
MEANING = {"trainedAlgorithmicMedia": "made wholly by a generative model",
           "compositeWithTrainedAlgorithmicMedia": "generated content combined with the original pixels"}


def inspect(
    file: Annotated[Path, typer.Argument(help="An image (PNG, JPEG, WebP) or a video (MP4, MOV).", show_default=False)],
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> int:
    """What a file says about itself: whether it is marked as AI-made (IPTC digital source type),
    the run record agetool wrote into it (version, models with their sha256 and licence, seed,
    noise, ages), its usage terms, and its C2PA Content Credentials (with agetool[c2pa]).
    A file that carries none of them is said to, and that is not an error.

    Examples:

      agetool inspect me_ages.png

      agetool inspect clip_age60.mp4 --json
    """
    import json

    from agetool.provenance import describe

    found = describe(file)
    if json_out:
        console.out.print(json.dumps(found, sort_keys=True), markup=False, highlight=False, soft_wrap=True)
        return 0
    say = lambda text: console.out.print(text, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    say(f"{file}")
    if not found["marked"]:
        say("  AI marking: none (no IPTC digital source type, no agetool run record)")
    else:
        dst = found["digital_source_type"]
        say(f"  AI marking: {dst} ({MEANING.get(dst, 'as the file says')})" if dst
            else "  AI marking: none for this file's pixels (the input as it was, beside generated files)")
    record = found["record"]
    if record is not None:
        say(f"  made by: agetool {record['version']} ({record['medium']}), seed {record['seed']}, noise {record['noise']}")
        for m in record["models"]:
            say(f"  model: {m['name']}  licence: {m['license']}  sha256: {m['sha256'] or 'unknown'}")
        if record["ages"]:
            say(f"  ages asked: {', '.join(record['ages'])}")
        for i, face in enumerate(record["faces"]):
            est = "no estimate" if face["estimated_age"] is None else f"estimated {face['estimated_age']:g}"
            became = ", ".join(f"{a['asked']} -> {a['years']:g}" for a in face["ages"] if a["years"] is not None)
            seed = f"; draw of seed {face['seed']}" if face.get("seed") is not None else ""
            say(f"  face {i}: {est}; {became or 'no ages'}{seed}")
        say(f"  source sha256: {record['source_sha256'] or 'unknown'}")
    elif found["marked"]:
        say("  run record: none")
    if found["usage_terms"]:
        say(f"  usage terms: {found['usage_terms']}")
    cc = found["content_credentials"]
    if cc is None:
        say("  content credentials: not checked (pip install \"agetool[c2pa]\")")
    elif not cc["present"]:
        say(f"  content credentials: none{' (C2PA does not cover this format)' if cc.get('unsupported') else ''}")
    elif cc.get("error"):
        say(f"  content credentials: unreadable ({cc['error']})")
    else:
        failures = ", ".join(cc["failures"]) or "none"
        say(f"  content credentials: signed by {cc['signer']} (issuer {cc['issuer']}); state {cc['state']}; "
            f"failures: {failures}")
        for action in cc["actions"]:
            kind = action["digital_source_type"]
            say(f"    action: {action['action']}" + (f" ({kind.rsplit('/', 1)[-1]})" if kind else ""))
    return 0
