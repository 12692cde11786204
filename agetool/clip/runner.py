"""The clip runner: frames in, aged frames out, one batch of frames at a time.

The runner follows faces and streams frames; the render core (``agetool.render.Renderer``) ages
them with the same code as photos. Per frame: faces are followed (``tracks``), their landmarks
smoothed over time (One-Euro), the crop cut from the smoothed landmarks, parsed only when the
face's look changed (labels held per track otherwise, and carried along with the crop where it only
moved: ``Track.carry_labels``), and the paste-back weights eased between parses; each face is an ``agetool.results.Face`` with its ``track``. Per batch: each new person's
estimate and model are decided over their frames in the batch (up to eight) and then held; the
crops of all frames are encoded together and decoded with the person's latents (one noise draw,
held for the whole clip: the run's seed, or with ``candidates`` N the most faithful of N scored
on the person's first crops, as for photos). A crop that hardly differs from the person's last
encoded one (``REUSE_LEVELS``) reuses its features and, at the same ages, its tiles. Frames are read
ahead in a background thread while the networks run (``overlap``). A frame without a face is passed
through as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from agetool.clip.media import ClipInfo, read_frames
from agetool.clip.tracks import MIN_MATCH, GAP, Track, fast_align, link, match, thumbnail
from agetool.results import Face

#: frames between full detections (faces are followed by their landmarks in between)
DETECT_EVERY = 5
#: a face is parsed again when its crop's thumbnail correlates less than this with the parsed one ...
PARSE_MATCH = 0.95
#: ... or after this many frames
PARSE_EVERY = 30
#: side of the small crop whose thumbnail checks that a followed face is still there
CHECK_SIZE = 64
#: a crop whose blocks' mean colours all lie within this many levels (0-255) of the person's last
#: encoded crop (``tracks.change``) reuses that crop's features, and its aged tiles where the ages
#: are the same: a still face is encoded and decoded once. Resampling noise and H.264 move a block
#: by 1-3 levels; a blink or a word by tens. A negative value reuses nothing.
REUSE_LEVELS = 3.0
#: crops of a new person (from their first batch of frames) that score each noise draw (``candidates``)
DRAW_FRAMES = 3


@dataclass
class Progressive:
    """Ages in years from ``start`` at the clip's first frame to ``stop`` at its last."""

    start: float
    stop: float
    entry: str = "progressive"


@dataclass
class ClipFrame:
    """One frame of an aged clip: the source frame's number, timestamp and the aged images (upright
    RGB uint8 [H, W, 3], one per age asked for)."""

    index: int
    pts: int
    time: float  # seconds
    images: list[np.ndarray]
    faces: int  # faces aged in this frame
    people: list[int] = field(default_factory=list)  # the track number of each, left to right

    @property
    def image(self) -> np.ndarray:
        return self.images[0]


@dataclass(eq=False)
class _Frame:
    index: int
    pts: int
    time: float
    image: np.ndarray
    faces: list[Face]
    same: list  # per face: the earlier frame's Face with the very same crop (its work is reused), or None


class ClipRunner:
    """Ages one clip with a render core (``agetool.render.Renderer``) and its models. Iterate it
    for ``ClipFrame``s. ``request``: an ``agetool.options.AgeRequest`` (faces, mask, seed, noise,
    upscaling); ``specs``: its targets, or one ``Progressive``."""

    def __init__(self, core, info: ClipInfo, request, specs: Sequence, *, parse: bool = True,
                 detect_every: int = DETECT_EVERY, batch: int | None = None):
        self.core, self.models, self.info = core, core.models, info
        self.specs = list(specs)
        options, render = request.face, request.render
        self.mask, self.parse = options.mask, parse or options.mask
        from agetool.identity import FaceReference

        self.faces = FaceReference.of(options.faces)  # a reference person: only the tracks of that person's faces
        self.min_face, self.seed, self.noise = options.min_face, render.seed, render.noise
        self.render = render  # with ``candidates`` N: each person's draw chosen over their first frames
        self.detect_every = detect_every
        self.batch = batch or 8
        self.upscale = render.upscale  # 2 or 4: each new tile upscaled once, shown at the face's size in each frame
        self.progressive = any(isinstance(s, Progressive) for s in self.specs)
        self.relative = any(getattr(s, "kind", None) == "relative" for s in self.specs)
        self.tracks: list[Track] = []
        self._ended: list[Track] = []  # tracks that ended lately: a face of the same person picks one up
        self._identity_model = None
        self._ids = 0
        self._last_detect = -10**9
        self._need_estimate = core.model == "auto" or self.relative

    # ---------------------------------------------------------------- per frame
    def _detect(self, image: np.ndarray) -> list:
        detector = self.models.detector
        before = dict(detector.timings)
        found = detector.detect(image)
        for stage, secs in detector.timings.items():
            self.models.timer.add(stage, secs - before.get(stage, 0.0))
        if self.min_face > 0:
            found = [f for f in found if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= self.min_face]
        return found  # largest first

    def _follow(self, image: np.ndarray, track: Track) -> np.ndarray:
        detector = self.models.detector
        before = detector.timings.get("landmarks", 0.0)
        lm = detector.landmarks_in(image, track.predicted_box())
        self.models.timer.add("landmarks", detector.timings.get("landmarks", 0.0) - before)
        return np.asarray(lm, np.float64)

    def _step(self, index: int, time: float, image: np.ndarray) -> list[Face]:
        """Follow, detect and link the faces of one frame; the crops to age."""
        timer = self.models.timer
        followed, lost = {}, False
        for t in self.tracks:
            lm = self._follow(image, t)
            with timer("track"):
                ok = t.reference is not None and match(thumbnail(fast_align(image, lm, CHECK_SIZE).image),
                                                        t.reference) >= MIN_MATCH
            followed[t.id] = (lm, ok)
            lost = lost or not ok
        if lost or not self.tracks or index - self._last_detect >= self.detect_every:
            self._last_detect = index
            found = self._detect(image)
            pairs, left, new = link(self.tracks, found)
            for t, det in pairs:
                self._seen(t, image, det)
            for t in left:
                lm, ok = followed[t.id]
                t.missed += 1
                if ok and t.missed <= GAP:  # a missed detection: bridged by the landmarks
                    t.landmarks = lm
                else:
                    self.tracks.remove(t)
                    t.ended = time
                    self._ended.append(t)
            if self.faces == "largest":
                new = new[:1] if not self.tracks else []
            elif not isinstance(self.faces, str) and new:  # a FaceReference: only that person's faces
                new = self._of_reference(image, new)
            new = self._pick_up(image, time, new)
            for det in new:
                t = Track.start(self._ids, det)
                self._ids += 1
                self._seen(t, image, det)
                self.tracks.append(t)
        else:
            for t in self.tracks:
                t.landmarks = followed[t.id][0]
        self.tracks.sort(key=lambda t: t.box()[0] + t.box()[2])  # left to right, as photos number faces
        return [self._crop(index, time, image, t, place) for place, t in enumerate(self.tracks)]

    def _of_reference(self, image: np.ndarray, found: list) -> list:
        """The new detections of the reference person: each face is embedded once, when its track
        would start (tracks then follow it without embedding again); frames without them pass through."""
        from agetool.errors import NoMatchError

        with self.models.timer("identity"):
            try:
                return self.faces.match(image, found)
            except NoMatchError:
                return []

    def _pick_up(self, image: np.ndarray, time: float, found: list) -> list:
        """Give new detections of a person whose track ended lately (same identity embedding) their
        old track back; returns the detections that start new tracks."""
        from agetool.clip.tracks import REID_SECONDS

        self._ended = [t for t in self._ended if time - t.ended <= REID_SECONDS and t.patch is not None]
        if not found or not self._ended:
            return found
        identity = self._identity()
        with self.models.timer("identity"):
            for t in self._ended:
                if t.embedding is None:
                    t.embedding = identity.embed_faces(t.patch[0], [t.patch[1]])[0]
            embeddings = [getattr(d, "embedding", None) for d in found]
            missing = [d for d, e in zip(found, embeddings) if e is None or e.model != identity.name]
            made = iter(identity.embed_faces(image, missing)) if missing else iter(())
            embeddings = [e if d not in missing else next(made) for d, e in zip(found, embeddings)]
        left = []
        for det, e in zip(found, embeddings):
            scores = [(identity.similarity(t.embedding, e), t) for t in self._ended]
            best = identity.best([v for v, _ in scores])
            track = next((t for v, t in scores if v == best), None)
            if track is not None and identity.is_match(best, None):
                self._ended.remove(track)
                track.restart(det)
                self._seen(track, image, det)
                self.tracks.append(track)
            else:
                left.append(det)
        return left

    def _identity(self):
        """The identity model of ``faces=ref:...``, else dlib's descriptor (offline), made once."""
        if self._identity_model is None:
            if not isinstance(self.faces, str):
                self._identity_model = self.faces.identity
            else:
                from agetool.identity import FaceIdentity

                with self.models.timer("load identity"):
                    self._identity_model = FaceIdentity.from_pretrained("dlib", argument="faces")
        return self._identity_model

    def _seen(self, t: Track, image: np.ndarray, det) -> None:
        from agetool.clip.tracks import box_offset

        t.landmarks = np.asarray(det.landmarks, np.float64)
        t.box_offset = box_offset(det.box, det.landmarks)
        t.missed = 0
        with self.models.timer("track"):
            t.reference = thumbnail(fast_align(image, t.landmarks, CHECK_SIZE).image)
            t.keep_patch(image, det)

    def _crop(self, index: int, time: float, image: np.ndarray, t: Track, place: int) -> Face:
        from agetool.clip.tracks import frame_of
        from agetool.face.detect import DetectedFace
        from agetool.face.paste import paste_mask

        timer = self.models.timer
        face = Face(place, None, detection=DetectedFace(1.0, t.predicted_box(), t.landmarks), track=t,
                    estimate=t.estimate, model=t.model)
        if self._need_estimate and t.model is None:  # one more look every frame until the batch decides
            classifier = self.core.classifier(True if self.relative else "auto")
            if classifier is not None:
                t.estimates.append(self.core.look(image, face, classifier))
        with timer("align"):
            _, scale = frame_of(t.landmarks)
            smoothed = t.smooth(t.landmarks, time, scale)
            face.alignment = fast_align(image, smoothed, 256)
        face.aligned = face.alignment.image
        if self.parse:
            look = thumbnail(face.aligned)
            due = t.labels is None or index - t.parsed_at >= PARSE_EVERY
            if not due and match(look, t.parsed) < PARSE_MATCH:
                with timer("track"):
                    due = not t.carry_labels(face.aligned, face.alignment, look, PARSE_MATCH)
            if due:
                parser = self.models.parser
                with timer("parse"):
                    t.labels = parser.parse(face.aligned)
                t.parsed, t.parsed_at = look, index
                t.parsed_crop = (face.aligned, face.alignment, t.labels, t.landmarks.copy())
                t.target_mask = paste_mask(t.labels, 256)
        elif t.target_mask is None:
            t.target_mask = paste_mask(None, 256)
        face.parsing = t.labels
        with timer("paste"):
            face.blend = t.mask(t.target_mask).copy()  # eased towards the held labels' weights
        face.network_input = face.aligned
        if self.mask:
            from agetool.face.mask import mask_background

            face.network_input = mask_background(face.aligned, t.labels)
        return face

    # ---------------------------------------------------------------- per batch
    def _decide(self, t: Track) -> None:
        t.estimate = self.core.combine(t.estimates)
        t.model = self.core.decide(f"{self.info.path.name} person {t.id}", t.estimate, relative=self.relative)

    def _latents(self, face: Face, frame: _Frame):
        """w [K, 256] of the face at each age asked for, at this frame."""
        t = face.track
        if not self.progressive:
            if t.latents is None:  # held for the person
                t.latents = self.core.latents(face, self.specs, self.noise, t.seed)
            return t.latents
        spec = self.specs[0]
        span = self.info.end - self.info.start
        frac = 0.0 if span <= 0 else min(1.0, max(0.0, (frame.time - self.info.start) / span))
        return self.core.year_latents(face, [spec.start + (spec.stop - spec.start) * frac], self.noise, t.seed)

    def _choose_draws(self, faces: list[Face]) -> None:
        """The noise seed of each person new in this batch: the run's seed, or with ``candidates`` the
        most faithful draw, scored on up to ``DRAW_FRAMES`` of their crops in the batch (first to
        last) at the clip's ages (or, aging progressively, the first and last age and the class
        anchors between), then held for the whole clip."""
        people: dict[int, list[Face]] = {}
        for f in faces:
            if f.track.seed is None:
                people.setdefault(f.track.id, []).append(f)
        if not people:
            return
        from dataclasses import replace

        from agetool.ages import span_targets

        if self.progressive:
            targets = span_targets(self.specs[0].start, self.specs[0].stop, self.core.anchor_ages)
        else:
            targets = self.specs
        scoring = replace(self.render, targets=tuple(targets))
        for crops in people.values():
            picks = [crops[round(i * (len(crops) - 1) / max(1, DRAW_FRAMES - 1))]
                     for i in range(min(DRAW_FRAMES, len(crops)))]
            t = crops[0].track
            t.seed = self.core.draw_seed(f"{self.info.path.name} person {t.id}", list(dict.fromkeys(picks)), scoring)

    def _render(self, frames: list[_Frame]) -> None:
        faces = [f for fr in frames for f in fr.faces]
        for f in faces:
            if f.track.model is None:
                self._decide(f.track)
            f.estimate, f.model = f.track.estimate, f.track.model
        self.core.encode([f for fr in frames for f, same in zip(fr.faces, fr.same) if same is None], self.batch,
                         fast=True)
        self._choose_draws([f for fr in frames for f, same in zip(fr.faces, fr.same) if same is None])
        jobs, reused = [], []
        for fr in frames:
            for f, same in zip(fr.faces, fr.same):
                if same is not None:
                    f.features = same.features
                    if not self.progressive:  # the same crop at the same ages: the earlier frame's tiles
                        reused.append((f, same))
                        continue
                jobs.append((f, self._latents(f, fr)))
        new = self.core.decode(jobs)
        if self.upscale > 1 and new:
            counts = [len(t) for t in new]
            flat = self.core.upscale(np.concatenate(new), self.upscale)
            new = np.split(flat, np.cumsum(counts)[:-1])
        for (f, _), tiles in zip(jobs, new):
            f.images = tiles
        for f, same in reused:
            f.images = same.images

    def _paste(self, fr: _Frame) -> ClipFrame:
        images = [self.core.paste(fr.image, fr.faces, [f.images[k] for f in fr.faces]) for k in range(len(self.specs))]
        return ClipFrame(fr.index, fr.pts, fr.time, images, len(fr.faces), [f.track.id for f in fr.faces])

    # ---------------------------------------------------------------- the run
    def __iter__(self) -> Iterator[ClipFrame]:
        from agetool.clip.overlap import Ahead, queue_size
        from agetool.clip.tracks import blocks, change

        models = self.models
        models.preload(parser=self.parse, model=None if self.core.model == "auto" else self.core.model)
        last: dict[int, tuple[Face, np.ndarray]] = {}  # per track: its last encoded crop and its blocks
        pending: list[_Frame] = []
        size = queue_size(self.info.width * self.info.height * 3, self.batch)
        index = 0
        with Ahead(read_frames(self.info), size, "agetool-read", models.timer, "read") as frames:
            while True:
                item = next(frames, None)
                if item is not None:
                    image, pts = item
                    time = float(pts * self.info.time_base)
                    faces = self._step(index, time, image)
                    same = []
                    for f in faces:
                        look = blocks(f.network_input)
                        prev = last.get(f.track.id)
                        near = prev is not None and change(look, prev[1]) <= REUSE_LEVELS
                        same.append(prev[0] if near else None)
                        if not near:
                            last[f.track.id] = (f, look)
                    live = {t.id for t in self.tracks}
                    for tid in [tid for tid in last if tid not in live]:
                        del last[tid]
                    pending.append(_Frame(index, pts, time, image, faces, same))
                    index += 1
                if pending and (item is None or len(pending) >= self.batch):
                    self._render(pending)
                    for fr in pending:
                        yield self._paste(fr)
                    pending = []
                if item is None:
                    return
