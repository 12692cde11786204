"""The clip runner: frames in, aged frames out, one batch of frames at a time.

Per frame: faces are followed (``tracks``), their landmarks smoothed over time (One-Euro), the crop
cut from the smoothed landmarks, parsed only when the face's look changed (labels held per track
otherwise), and the paste-back mask eased between parses. Per batch: each new person's model and
age estimate are decided over their frames in the batch (up to eight) and then held; the crops of all frames are
encoded together and decoded with the person's latent (one noise draw per run, as for photos), a
crop identical to the previous frame's reusing that frame's work. A frame without a face is passed
through as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from agetool.clip.media import ClipInfo, read_frames
from agetool.clip.tracks import MIN_MATCH, GAP, Track, fast_align, link, match, thumbnail
from agetool.options import DEFAULT_NOISE, DEFAULT_SEED

#: frames between full detections (faces are followed by their landmarks in between)
DETECT_EVERY = 5
#: a face is parsed again when its crop's thumbnail correlates less than this with the parsed one ...
PARSE_MATCH = 0.95
#: ... or after this many frames
PARSE_EVERY = 30
#: side of the small crop whose thumbnail checks that a followed face is still there
CHECK_SIZE = 64


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
class _Face:
    track: Track
    alignment: object  # AlignedFace (paste-back)
    network_input: np.ndarray
    mask: np.ndarray  # paste-back weights [256, 256]
    key: bytes
    same_as: "_Face | None" = None
    features: object = None
    tiles: dict = field(default_factory=dict)  # latent bytes -> [S, S, 3] (256 px, or upscaled)


@dataclass(eq=False)
class _Frame:
    index: int
    pts: int
    time: float
    image: np.ndarray
    faces: list[_Face]


class ClipRunner:
    """Ages one clip with a pipeline's models. Iterate it for ``ClipFrame``s."""

    def __init__(self, pipe, info: ClipInfo, specs: Sequence, *, mask: bool = True, parse: bool = True,
                 faces: str = "all", min_face: int = 0, seed: int = DEFAULT_SEED, noise: float = DEFAULT_NOISE,
                 detect_every: int = DETECT_EVERY, batch: int | None = None, upscale: int = 1):
        self.pipe, self.models, self.info = pipe, pipe.models, info
        self.specs = list(specs)
        self.mask, self.parse = mask, parse or mask
        self.faces, self.min_face, self.seed, self.noise = faces, min_face, seed, noise
        self.detect_every = detect_every
        self.batch = batch or 8
        self.upscale = upscale  # 2 or 4: each new tile upscaled once, shown at the face's size in each frame
        self.tracks: list[Track] = []
        self._ended: list[Track] = []  # tracks that ended lately: a face of the same person picks one up
        self._identity_model = None
        self._ids = 0
        self._last_detect = -10**9
        self._need_estimate = pipe.model == "auto" or any(getattr(s, "kind", None) == "relative" for s in self.specs)

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

    def _step(self, index: int, time: float, image: np.ndarray) -> list[_Face]:
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
        return [self._crop(index, time, image, t) for t in self.tracks]

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

    def _estimate(self, image: np.ndarray, t: Track) -> None:
        """One more age and gender estimate of a person whose model is not decided yet."""
        from agetool.face.gender import face_box

        classifier = self.models.classifier if self.pipe.model == "auto" else self.models.classifier_if_available()
        if classifier is not None:
            with self.models.timer("classify"):
                t.estimates.append(classifier.estimate_at(image, face_box(t.landmarks)))

    def _crop(self, index: int, time: float, image: np.ndarray, t: Track) -> _Face:
        from agetool.clip.tracks import frame_of
        from agetool.face.paste import paste_mask

        timer = self.models.timer
        if self._need_estimate and t.model is None:  # every frame until the batch decides
            self._estimate(image, t)
        with timer("align"):
            _, scale = frame_of(t.landmarks)
            smoothed = t.smooth(t.landmarks, time, scale)
            al = fast_align(image, smoothed, 256)
        crop = al.image
        if self.parse:
            look = thumbnail(crop)
            if t.labels is None or index - t.parsed_at >= PARSE_EVERY or match(look, t.parsed) < PARSE_MATCH:
                parser = self.models.parser
                with timer("parse"):
                    t.labels = parser.parse(crop)
                t.parsed, t.parsed_at = look, index
                t.target_mask = paste_mask(t.labels, 256)
        elif t.target_mask is None:
            t.target_mask = paste_mask(None, 256)
        with timer("paste"):
            weights = t.mask(t.target_mask).copy()
        network_input = crop
        if self.mask:
            from agetool.face.mask import mask_background

            network_input = mask_background(crop, t.labels)
        return _Face(t, al, network_input, weights, network_input.tobytes())

    # ---------------------------------------------------------------- per batch
    def _decide(self, t: Track) -> None:
        from agetool.results import AgeEstimate

        if t.estimates:
            male = sum(p if g == "male" else 1 - p for g, p, _ in t.estimates) / len(t.estimates)
            gender, p = ("male", male) if male >= 0.5 else ("female", 1 - male)
            age = float(np.median([a for _, _, a in t.estimates]))
            t.estimate = AgeEstimate(age, gender, p)
        if t.estimate is None and any(getattr(s, "kind", None) == "relative" for s in self.specs):
            from agetool.errors import EstimateError, arg

            raise EstimateError(f"{arg('ages')}: a relative age needs each face's estimated age, and the age "
                                "classifier (genderage) is not at hand",
                                hint=f"give ages in years, pass {arg('age_model')} FILE, or run "
                                     "`agetool weights download genderage`")
        if self.pipe.model == "auto":
            t.model = t.estimate.gender
        else:
            t.model = self.pipe.model
        if t.estimate is not None:
            how = f": {t.model} model" if self.pipe.model == "auto" else ""
            self.pipe._report(f"{self.info.path.name} person {t.id}: ~{t.estimate.age:.0f} years, "
                              f"{t.estimate.gender} (p = {t.estimate.gender_probability:.2f}){how}")

    def _latent(self, t: Track, k: int, frame: _Frame):
        """w [1, 256] of age ``k`` for this track at this frame."""
        from agetool.ages import blend, target_latents, year_weights

        spec = self.specs[k]
        if not isinstance(spec, Progressive):
            if k not in t.latents:
                w6 = self.models.anchors(t.model, self.noise, self.seed)
                est = t.estimate.age if t.estimate is not None else None
                t.latents[k] = target_latents(w6, [spec], self.pipe.anchor_ages, est)
            return t.latents[k]
        span = self.info.end - self.info.start
        frac = 0.0 if span <= 0 else min(1.0, max(0.0, (frame.time - self.info.start) / span))
        lower, alpha = year_weights([spec.start + (spec.stop - spec.start) * frac], self.pipe.anchor_ages)
        return blend(self.models.anchors(t.model, self.noise, self.seed), lower, alpha)

    def _render(self, frames: list[_Frame]) -> None:
        import torch

        from agetool.images import to_tensor, to_uint8

        timer = self.models.timer
        faces = [f for fr in frames for f in fr.faces]
        for f in faces:
            if f.track.model is None:
                self._decide(f.track)
        todo: dict[str, list[_Face]] = {}
        for f in faces:
            if f.same_as is None:
                todo.setdefault(f.track.model, []).append(f)
        for model, group in todo.items():
            engine = self.models.engine(model)
            with timer("encode"):
                for start in range(0, len(group), self.batch):
                    part = group[start:start + self.batch]
                    feats = engine.encode(to_tensor(np.stack([f.network_input for f in part])))
                    for f, x in zip(part, feats):
                        f.features = x[None]
        jobs: dict[str, list] = {}
        for fr in frames:
            for f in fr.faces:
                if f.same_as is not None:
                    f.features = f.same_as.features
                for k in range(len(self.specs)):
                    w = self._latent(f.track, k, fr)
                    key = w.detach().cpu().numpy().tobytes()
                    if f.same_as is not None and key in f.same_as.tiles:
                        continue  # the earlier frame's tile (``_paste`` takes it from there)
                    if key not in f.tiles:
                        f.tiles[key] = None
                        jobs.setdefault(f.track.model, []).append((f, key, w))
        for model, group in jobs.items():
            engine = self.models.engine(model)
            with timer("decode"), torch.inference_mode():
                for (f, key, _), out in zip(group, _decode(engine, [(f.features, w) for f, _, w in group])):
                    f.tiles[key] = to_uint8(out[None])[0]
        new = [(f, key) for group in jobs.values() for f, key, _ in group]
        if self.upscale > 1 and new:
            for (f, key), tile in zip(new, self.pipe.upscale(np.stack([f.tiles[k] for f, k in new]), self.upscale)):
                f.tiles[key] = tile

    def _paste(self, fr: _Frame) -> ClipFrame:
        from agetool.face.paste import paste_back
        from agetool.upscale import fit_paste

        images = []
        with self.models.timer("paste"):
            for k in range(len(self.specs)):
                canvas = fr.image
                for f in fr.faces:
                    key = self._latent(f.track, k, fr).detach().cpu().numpy().tobytes()
                    owner = f.same_as if f.same_as is not None and key in f.same_as.tiles else f
                    tile, mask = fit_paste(owner.tiles[key], f.alignment, f.mask)
                    canvas = paste_back(canvas, tile, f.alignment, mask=mask)
                images.append(canvas)
        return ClipFrame(fr.index, fr.pts, fr.time, images, len(fr.faces), [f.track.id for f in fr.faces])

    # ---------------------------------------------------------------- the run
    def __iter__(self) -> Iterator[ClipFrame]:
        models = self.models
        models.preload(parser=self.parse, model=None if self.pipe.model == "auto" else self.pipe.model)
        last: dict[int, _Face] = {}
        pending: list[_Frame] = []
        frames = read_frames(self.info)
        index = 0
        while True:
            with models.timer("read"):
                item = next(frames, None)
            if item is not None:
                image, pts = item
                time = float(pts * self.info.time_base)
                faces = self._step(index, time, image)
                for f in faces:
                    prev = last.get(f.track.id)
                    if prev is not None and prev.key == f.key:
                        f.same_as = prev.same_as or prev
                    last[f.track.id] = f
                live = {t.id for t in self.tracks}
                for tid in [tid for tid in last if tid not in live]:
                    del last[tid]
                pending.append(_Frame(index, pts, time, image, faces))
                index += 1
            if pending and (item is None or len(pending) >= self.batch):
                self._render(pending)
                for fr in pending:  # kept after the batch: the last crop of each track (and what it reuses)
                    yield self._paste(fr)
                pending = []
            if item is None:
                return


def _decode(engine, jobs: list) -> Iterator:
    """Decode (features [1, C, h, w], w [1, 256]) pairs: one frame per worker on CPUs, batches on GPUs."""
    import torch

    from agetool.engine import frame_pool

    decoder = engine.decoder
    if not jobs:
        return
    if decoder.per_sample and engine.device.type == "cpu":
        pool = frame_pool()
        if pool is None:
            for feats, w in jobs:
                yield decoder(feats, w)[0].cpu()
            return
        yield from (out[0].cpu() for out in pool.imap(lambda job: decoder(*job), jobs, 2 * pool.workers))
        return
    for start in range(0, len(jobs), engine.chunk):
        part = jobs[start:start + engine.chunk]
        yield from decoder(torch.cat([f for f, _ in part]), torch.cat([w for _, w in part])).cpu()
