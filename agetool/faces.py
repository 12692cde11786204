"""Face preparation: detect -> align -> parse -> mask, filling one ``agetool.results.Face`` record per face.
``AgingPipeline`` and ``agetool dataset from-photos`` prepare faces with the same code.
"""

from __future__ import annotations


import numpy as np

from agetool.errors import NoFaceError, UsageError, arg
from agetool.models import Models
from agetool.options import FaceOptions
from agetool.results import Face

GEN_SIZE = 256
def check_faces(faces):
    """``faces`` as the face stages take it: ``"all"``, ``"largest"``, or an
    ``agetool.identity.FaceReference`` made from a reference (``"ref:PHOTO"``, a photo path / array /
    PIL image, or an ``Embedding``; its form checked by ``agetool.options.check_faces``)."""
    from agetool.identity import FaceReference
    from agetool.options import check_faces as check_form

    return FaceReference.of(check_form(faces))


def prepare_faces(models: Models, image: np.ndarray, *, aligned: bool = False, mask: bool = True,
                  parse: bool | None = None, faces: str = "all", min_face: int = 0, name: str = "image") -> list[Face]:
    """A photo [H, W, 3] -> its faces, aligned (256 px) and, with ``mask``, background painted gray.

    Faces are numbered left to right in the photo. ``aligned=True`` takes the photo as an aligned
    crop (resized to 256 px with a warning if it isn't one). ``parse`` (default: ``mask``) runs the
    face parser even without masking (paste-back needs the labels).
    """
    timer = models.timer
    parse = mask if parse is None else parse
    if aligned:
        crop = image
        if image.shape[:2] != (GEN_SIZE, GEN_SIZE):
            from agetool.images import resize

            h, w = image.shape[:2]
            models.loading.say(f"warning: {name}: {w}x{h} is not a {GEN_SIZE}x{GEN_SIZE} aligned crop"
                   f"{'' if w == h else ' (not square)'}; resizing it to {GEN_SIZE}x{GEN_SIZE}")
            with timer("align"):
                crop = resize(image, GEN_SIZE)
        return [_finish(models, 0, crop, None, None, mask, parse)]
    from agetool.face.align import align_face

    found = find_faces(models, image, faces=faces, min_face=min_face, name=name)
    crops = []
    for i, det in enumerate(found):
        with timer("align"):
            al = align_face(image, det.landmarks, size=GEN_SIZE)
        crops.append(_finish(models, i, al.image, det, al, mask, parse))
    return crops


def find_faces(models: Models, image: np.ndarray, *, faces: str = "all", min_face: int = 0,
               name: str = "image") -> list:
    """Detected faces after ``min_face`` and ``faces``, numbered left to right; ``NoFaceError`` if none."""
    detector = models.detector
    before = dict(detector.timings)
    found = detector.detect(image)  # largest first
    for stage, secs in detector.timings.items():  # "detect" and "landmarks"
        models.timer.add(stage, secs - before.get(stage, 0.0))
    skipped = 0
    if min_face > 0:
        kept = [f for f in found if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= min_face]
        skipped = len(found) - len(kept)
        if skipped and kept:
            models.loading.say(f"warning: {name}: skipped {skipped} face(s) smaller than {min_face} px")
        found = kept
    if not found:
        if skipped:
            raise NoFaceError(f"{name}: no face at least {min_face} px ({skipped} smaller one(s) skipped)",
                              hint=f"lower {arg('min_face')}")
        other = "fan" if detector.name.startswith("dlib") else "dlib"
        fan_needs = ""
        if other == "fan":
            from agetool.weights.places import fan_files_present

            if not fan_files_present():  # it would need its files first: say how to give them
                fan_needs = " (its files: `agetool weights download fan-2d s3fd`, or import them)"
        raise NoFaceError(f"no face found in {name}",
                          hint=f"try a larger, frontal photo, {arg('landmarks', other)}{fan_needs}, or "
                               f"{arg('aligned')} for a crop")
    if faces == "largest":
        found = found[:1]
    elif faces != "all":  # a reference: only the faces of that person
        with models.timer("identity"):
            found = check_faces(faces).match(image, found, name=name)
    return sorted(found, key=lambda f: (f.box[0] + f.box[2]) / 2)


def _finish(models: Models, index: int, crop: np.ndarray, detection, alignment, mask: bool,
            parse: bool) -> Face:
    face = Face(index, crop, crop, detection=detection, alignment=alignment)
    if mask or parse:
        parser = models.parser
        with models.timer("parse"):
            face.parsing = parser.parse(crop)
    if mask:
        from agetool.face.mask import mask_background

        face.network_input = mask_background(crop, face.parsing)
    return face


def check_encoded(photo, options) -> None:
    """Face options (``FaceOptions``) come with a photo to find faces in; an encoded photo has its faces already."""
    shaping = {"aligned": options.aligned, "mask": options.mask, "faces": options.faces,
               "min_face": options.min_face}
    changed = [name for name, value in shaping.items() if value != getattr(FaceOptions(), name)]
    if changed:
        raise UsageError(f"{', '.join(arg(n) for n in changed)}: the photo is already encoded, its faces found "
                         "and prepared", hint="pass these options to encode(), or pass the photo itself")
    if options.paste_back and any(f.alignment is None or f.parsing is None
                                  for f in photo.faces):
        raise UsageError(f"{arg('paste_back')}: this encoded photo has no parsed faces to blend",
                         hint=f"encode it with {arg('paste_back', True)}")
